"""PNG figures of a run: the training curves, the learned conv1 filters tower by tower (the
paper's figure 3), and a trained network's top-5 predictions and nearest neighbours (figure 4; what they
show is computed in figures.py)."""

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


# ---------------------------------------------------------------------------------------------
# Figure 4 (section 6.1): what the trained network says about held-out images
# ---------------------------------------------------------------------------------------------


def _show(ax, image: torch.Tensor, title: str, colour: str = "black") -> None:
    """image: (3, H, W) in [0, 255]."""
    ax.imshow(image.clamp(0, 255).byte().permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_title(title, fontsize=8, color=colour)
    ax.axis("off")


def top5_predictions(
    images: torch.Tensor, probabilities: torch.Tensor, labels: torch.Tensor, classes: list[str], path: str
) -> None:
    """Each image (N, 3, H, W) in [0, 255] above its top-5 classes as bars, the true class's bar red when it
    is among them and its name under the image (figure 4, left)."""
    columns = 4
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(2 * rows, columns, figsize=(2.6 * columns, 4.4 * rows), squeeze=False,
                                gridspec_kw={"height_ratios": [1.3, 1] * rows})  # fmt: skip
    top = probabilities.topk(min(5, probabilities.shape[1]), dim=1)
    for index in range(rows * columns):
        row, column = divmod(index, columns)
        image_ax, bars_ax = axes[2 * row, column], axes[2 * row + 1, column]
        if index >= len(images):
            image_ax.axis("off")
            bars_ax.axis("off")
            continue
        label = int(labels[index])
        _show(image_ax, images[index], classes[label])
        picked = top.indices[index].tolist()
        colours = ["tab:red" if c == label else "tab:blue" for c in picked]
        bars_ax.barh(range(len(picked)), top.values[index].tolist(), color=colours)
        bars_ax.set_yticks(range(len(picked)), [classes[c] for c in picked], fontsize=7)
        bars_ax.invert_yaxis()  # the most probable on top
        bars_ax.set_xlim(0, 1)
        bars_ax.tick_params(axis="x", labelsize=6)
    figure.suptitle("top-5 predictions (red: the true class)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def nearest_neighbours(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    neighbours: torch.Tensor,
    neighbour_labels: torch.Tensor,
    classes: list[str],
    path: str,
) -> None:
    """A row per query image (Q, 3, H, W): the query, then its neighbours (Q, K, 3, H, W) nearest first,
    each titled with its class, green where it is the query's (figure 4, right)."""
    count, k = neighbours.shape[:2]
    figure, axes = plt.subplots(count, k + 1, figsize=(1.3 * (k + 1), 1.45 * count), squeeze=False)
    for row in range(count):
        label = int(query_labels[row])
        _show(axes[row, 0], queries[row], f"held-out: {classes[label]}")
        for column in range(k):
            found = int(neighbour_labels[row, column])
            _show(axes[row, column + 1], neighbours[row, column], classes[found],
                  "tab:green" if found == label else "tab:red")  # fmt: skip
    figure.suptitle("held-out images and the training images nearest in fc7 features", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
