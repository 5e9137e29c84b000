"""PNG figures of a run: the training curves, and the learned conv1 filters tower by tower (the
paper's figure 3)."""

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402


def training_curves(history: list[dict], path: str) -> None:
    """Loss and top-1 / top-5 error per epoch, from the rows of metrics.jsonl."""
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, error_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_axes.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    error_axes.plot(epochs, [row["train_top1_error"] for row in history], marker="o", label="train top-1")
    error_axes.plot(epochs, [row["val_top1_error"] for row in history], marker="o", label="validation top-1")
    error_axes.plot(epochs, [row["val_top5_error"] for row in history], marker="o", label="validation top-5")
    error_axes.set(xlabel="epoch", ylabel="error rate", title="Error", ylim=(0, 1))
    for axes in (loss_axes, error_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def conv1_filters(model: torch.nn.Module, path: str) -> None:
    """Each tower's conv1 kernels as a grid of RGB images, each scaled to its own range (figure 3)."""
    towers = [tower.conv1.weight.detach().float().cpu() for tower in model.towers]
    figure, axes = plt.subplots(len(towers), 1, figsize=(8, 3.2 * len(towers)), squeeze=False)
    for index, (weights, ax) in enumerate(zip(towers, axes[:, 0], strict=True)):
        low = weights.amin(dim=(1, 2, 3), keepdim=True)
        high = weights.amax(dim=(1, 2, 3), keepdim=True)
        grid = torchvision.utils.make_grid((weights - low) / (high - low + 1e-12), nrow=16, padding=1, pad_value=1)
        ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"conv1 kernels, tower {index}")
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
