"""Figure 1 of the paper (section 3.1) on the built-in dataset: how much sooner a four-layer convolutional
net reaches 25% training error with ReLUs than with tanh units.

The paper trained on CIFAR-10 and found the ReLU net six times faster; nothing is downloaded here, so the
nets train on the built-in shapes (data.ShapesDataset) at 32x32, CIFAR-10's size. Both nets have the
same layers, the same initial weights, the same data order and the same learning rate; only the
activation differs: ReLU through the fused op (at.nn.Conv2dReLU, one kernel with the convolution), tanh
through plain PyTorch after an nn.Conv2d. As in the paper, no regularization of any kind: no weight
decay, no dropout, no augmentation (each image's centre crop, every epoch).

The training error of an epoch is that of its batches as they were trained on (what cuda-convnet, which
drew the paper's figure, reports). The epoch at which a net reaches the threshold is interpolated
linearly between the last epoch above it and the first at or below it, counting epoch 0 as chance
(90% error for ten classes), so that ratios are not rounded to whole epochs.
"""

import json
import math
import os
import time
from dataclasses import asdict, dataclass

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from alexnet_triton import augmentation, data  # noqa: E402
from alexnet_triton import nn as fused  # noqa: E402

THRESHOLD = 0.25  # the dashed line of figure 1
PAPER_RATIO = 6.0  # "six times faster than an equivalent network with tanh neurons"
ACTIVATIONS = ("relu", "tanh")
IMAGE_SIZE = 32  # CIFAR-10's


@dataclass
class Settings:
    """The experiment's size. The defaults take about 5 minutes of one CPU core (0.57 s an epoch of 500
    images, measured), 26 minutes on this project's 2-core machine shared with other jobs (see README)."""

    epochs: int = 15
    seeds: int = 3
    train_size: int = 2500
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9


class FourLayerNet(nn.Module):
    """Three 5x5 convolutions (32, 32, 64 channels), each followed by its activation and a 3x3 stride-2
    max-pool, then a fully-connected layer to the classes. state_dict keys do not depend on the
    activation, so the ReLU net can start from the tanh net's weights."""

    def __init__(self, activation: str, classes: int = 10, image_size: int = IMAGE_SIZE):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        convolution = fused.Conv2dReLU if activation == "relu" else nn.Conv2d  # ReLU fused into the conv
        self.conv1 = convolution(3, 32, 5, padding=2)
        self.conv2 = convolution(32, 32, 5, padding=2)
        self.conv3 = convolution(32, 64, 5, padding=2)
        self.pool = fused.MaxPool2d(3, 2)
        size = image_size
        for _ in range(3):
            size = (size - 3) // 2 + 1
        self.fc = nn.Linear(64 * size * size, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for conv in (self.conv1, self.conv2, self.conv3):
            x = conv(x) if self.activation == "relu" else torch.tanh(conv(x))
            x = self.pool(x)
        return self.fc(x.flatten(1))


def training_images(train_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 3, 32, 32) standardized centre crops, labels (N,)) of the built-in training set."""
    dataset = data.ShapesDataset("train", train_size, IMAGE_SIZE, seed=seed)
    images = dataset.images.float()
    stats = augmentation.rgb_statistics(images, standardize=True)
    return augmentation.eval_transform(images, IMAGE_SIZE, stats), dataset.labels


def train_curve(activation: str, images, labels, settings: Settings, seed: int, device: torch.device) -> list[float]:
    """The training error of each epoch of one net; the same seed gives both activations the same initial
    weights and the same batches."""
    torch.manual_seed(seed)
    initial = FourLayerNet("tanh").state_dict()
    model = FourLayerNet(activation)
    model.load_state_dict(initial)
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum)
    order = torch.Generator().manual_seed(seed)
    curve = []
    for _ in range(settings.epochs):
        wrong = 0
        for batch in torch.randperm(len(labels), generator=order).split(settings.batch_size):
            x, y = images[batch].to(device), labels[batch].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the {activation} net's loss became {loss.item()}; try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            wrong += (logits.argmax(1) != y).sum().item()
        curve.append(wrong / len(labels))
    return curve


def epochs_to_threshold(curve: list[float], threshold: float = THRESHOLD, classes: int = 10) -> float:
    """The (fractional) epoch at which the curve first reaches threshold, or inf if it never does;
    linear between epochs, from chance at epoch 0."""
    previous = 1 - 1 / classes
    for epoch, error in enumerate(curve, start=1):
        if error <= threshold:
            return epoch - 1 + (previous - threshold) / (previous - error) if previous > error else float(epoch)
        previous = error
    return math.inf


def summarize(curves: dict[str, list[list[float]]], epochs: int) -> dict:
    """Epochs to the threshold per activation and seed, their means, and the ratio tanh / ReLU. When some
    tanh run never reaches it, its epoch count is at least the run's length, and so the ratio is a lower
    bound."""
    reached = {name: [epochs_to_threshold(curve) for curve in runs] for name, runs in curves.items()}
    listed = {name: [None if math.isinf(e) else e for e in runs] for name, runs in reached.items()}  # JSON: no inf
    if any(math.isinf(e) for e in reached["relu"]):
        return {"epochs_to_threshold": listed, "ratio": None, "ratio_is_lower_bound": False}
    bounded = [min(e, float(epochs)) for e in reached["tanh"]]
    mean = {"relu": sum(reached["relu"]) / len(reached["relu"]), "tanh": sum(bounded) / len(bounded)}
    return {
        "epochs_to_threshold": listed,
        "mean_epochs_to_threshold": mean,
        "ratio": mean["tanh"] / mean["relu"],
        "ratio_is_lower_bound": any(math.isinf(e) for e in reached["tanh"]),
    }


def verdict(summary: dict) -> str:
    """One plain sentence: the ratio measured here against the paper's."""
    ratio = summary["ratio"]
    if ratio is None:
        return f"ReLU did not reach {THRESHOLD:.0%} training error in every run: no ratio (paper: {PAPER_RATIO:g}x)"
    measured = f"{'at least ' if summary['ratio_is_lower_bound'] else ''}{ratio:.1f}x"
    mean = summary["mean_epochs_to_threshold"]
    reached = f"ReLU reached {THRESHOLD:.0%} training error in {mean['relu']:.2f} epochs, tanh in {mean['tanh']:.2f}"
    if summary["ratio_is_lower_bound"]:
        reached += " (or never, in some runs)"
    if abs(ratio - PAPER_RATIO) / PAPER_RATIO <= 0.25 and not summary["ratio_is_lower_bound"]:
        return f"{reached}: ReLU was {measured} faster, close to the paper's {PAPER_RATIO:g}x on CIFAR-10"
    return (
        f"{reached}: ReLU was {measured} faster here, which DIFFERS from the paper's {PAPER_RATIO:g}x on CIFAR-10 "
        "(another dataset, net and learning rate)"
    )


def plot(curves: dict[str, list[list[float]]], summary: dict, path: str) -> None:
    """Training error against epochs, each seed thin and the mean bold; ReLU solid, tanh dashed (as in
    figure 1), and the threshold."""
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for name, style, colour in (("relu", "-", "tab:blue"), ("tanh", "--", "tab:red")):
        runs = torch.tensor(curves[name])
        epochs = range(1, runs.shape[1] + 1)
        for run in runs:
            axes.plot(epochs, run, style, color=colour, alpha=0.3, linewidth=0.8)
        axes.plot(epochs, runs.mean(0), style, color=colour, linewidth=2, label=f"{name} (mean of {len(runs)} seeds)")
    axes.axhline(THRESHOLD, color="grey", linestyle=":", label=f"{THRESHOLD:.0%} training error")
    ratio = summary["ratio"]
    title = "no ratio" if ratio is None else f"ReLU {'≥' if summary['ratio_is_lower_bound'] else ''}{ratio:.1f}x faster"
    axes.set(xlabel="epochs", ylabel="training error rate", ylim=(0, 1), title=f"{title} (paper: {PAPER_RATIO:g}x)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def run(settings: Settings, out: str, device: torch.device) -> dict:
    """Train both nets over settings.seeds seeds; write relu_vs_tanh.json and relu_vs_tanh.png into out."""
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    curves: dict[str, list[list[float]]] = {name: [] for name in ACTIVATIONS}
    for seed in range(settings.seeds):
        images, labels = training_images(settings.train_size, seed)
        for activation in ACTIVATIONS:
            curve = train_curve(activation, images, labels, settings, seed, device)
            curves[activation].append(curve)
            print(f"seed {seed} {activation}: training error by epoch {' '.join(f'{e:.3f}' for e in curve)}")
    summary = summarize(curves, settings.epochs)
    result = {
        "settings": asdict(settings),
        "threshold": THRESHOLD,
        "paper_ratio": PAPER_RATIO,
        "device": str(device),
        "curves": curves,
        **summary,
        "verdict": verdict(summary),
        "wall_seconds": time.perf_counter() - start,
    }
    with open(os.path.join(out, "relu_vs_tanh.json"), "w") as file:
        json.dump(result, file, indent=1)
    plot(curves, summary, os.path.join(out, "relu_vs_tanh.png"))
    print(result["verdict"])
    print(f"wrote {out}/relu_vs_tanh.json and relu_vs_tanh.png in {result['wall_seconds']:.0f} s")
    return result
