"""Evaluation (alexnet_triton/evaluation.py): the loss and errors of held-out crops; the --evaluate mode runs
through the command line in tests/test_train.py."""

import pytest
import torch
from alexnet_triton.kernels import _common
from torch.utils.data import SequentialSampler

from alexnet_triton import augmentation, data, evaluation
from alexnet_triton.model import AlexNet
from alexnet_triton.runtime import Runtime


def test_ten_crop_evaluation_averages_the_softmax_over_the_crops():
    stats = {"mean": torch.tensor([100.0, 120.0, 110.0]), "scale": 1 / torch.tensor([60.0, 50.0, 70.0])}
    weight = torch.randn(3, 7)  # logits a few units apart: no probability near 0

    class Linear(torch.nn.Module):  # stands in for the network: 7 classes' logits from the crop's mean colour
        def forward(self, x):
            return x.mean(dim=(2, 3)) @ weight

    # Three images whose colour changes across the picture, so that each crop has its own logits.
    images = [255 * torch.rand(3, 10, 12) * torch.linspace(0.2, 1, 12) for _ in range(3)]
    crops = [augmentation.ten_crops(image, 8, stats) for image in images]
    probabilities = [Linear()(image_crops).softmax(-1).mean(0) for image_crops in crops]
    # Labels by the averaged softmax's ranking: the first image's class is its top one, the second's its fifth
    # (a top-5 hit, a top-1 miss), the third's its sixth (a miss of both).
    ranks = (0, 4, 5)
    labels = [int(p.argsort(descending=True)[rank]) for p, rank in zip(probabilities, ranks, strict=True)]
    loader = torch.utils.data.DataLoader(list(zip(crops, labels, strict=True)), batch_size=3)
    args = type("Args", (), {"amp": "none", "channels_last": False})()
    runtime = Runtime(0, 1, torch.device("cpu"))
    metrics = evaluation.evaluate(Linear(), loader, args, runtime, ten_crop=True)
    expected_loss = -sum(p[label].log() for p, label in zip(probabilities, labels, strict=True)) / 3
    assert metrics["val_loss"] == pytest.approx(expected_loss.item(), rel=1e-5)
    assert metrics["val_top1_error"] == pytest.approx(2 / 3, abs=1e-12)
    assert metrics["val_top5_error"] == pytest.approx(1 / 3, abs=1e-12)


class PerImage(torch.nn.Module):
    """Stands in for the network in eval mode: each image's logits from its own pixels alone, row by row;
    records the batch size of every forward pass."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.weight = torch.randn(3 * 4 * 4, classes) / 2  # logits a few units apart
        self.sizes = []

    def forward(self, x):
        self.sizes.append(len(x))
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return (pooled[:, :, None] * self.weight).sum(1)


def expected_metrics(model, samples, ten_crop: bool) -> dict:
    """The loss and errors written out, one image at a time."""
    loss = top1 = top5 = 0.0
    with torch.no_grad():
        for images, label in samples:
            probabilities = model(images if ten_crop else images[None]).softmax(-1).mean(0)
            ranked = probabilities.argsort(descending=True).tolist()
            loss -= probabilities[label].clamp_min(1e-12).log().item()  # as evaluate clamps
            top1 += ranked[0] == label
            top5 += label in ranked[:5]
    return {"val_loss": loss / len(samples), "val_top1_error": 1 - top1 / len(samples),
            "val_top5_error": 1 - top5 / len(samples)}  # fmt: skip


@pytest.mark.parametrize("ten_crop", [False, True])
def test_the_last_partial_batch_is_padded_to_full_size_and_counts_only_its_images(ten_crop):
    images, batch = 11, 4  # batches of 4, 4 and 3
    shape = (10, 3, 8, 8) if ten_crop else (3, 8, 8)
    samples = [(torch.randn(shape) * 2, int(torch.randint(0, 7, ()))) for _ in range(images)]
    args = type("Args", (), {"amp": "none", "channels_last": False})()
    runtime = Runtime(0, 1, torch.device("cpu"))
    model = PerImage()

    def metrics(batch_size):
        model.sizes.clear()
        loader = torch.utils.data.DataLoader(samples, batch_size=batch_size)
        return evaluation.evaluate(model, loader, args, runtime, ten_crop=ten_crop)

    crops = 10 if ten_crop else 1
    batched = metrics(batch)
    assert model.sizes == [batch * crops] * 3, "every forward pass at the full batch, the last one padded"
    one_by_one = metrics(1)
    assert model.sizes == [crops] * images
    expected = expected_metrics(model, samples, ten_crop)
    for got in (batched, one_by_one):
        assert got["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-6)
        assert got["val_top1_error"] == pytest.approx(expected["val_top1_error"], abs=1e-12)
        assert got["val_top5_error"] == pytest.approx(expected["val_top5_error"], abs=1e-12)
    assert 0 < expected["val_top5_error"] < 1 or 0 < expected["val_top1_error"] < 1, "a test that can fail"


def test_alexnet_evaluated_in_padded_batches_equals_its_evaluation_image_by_image(monkeypatch):
    monkeypatch.setattr(_common, "INTERPRET", False)  # the reference math: the padding is tested, not the kernels
    base = data.ShapesDataset("val", 13, 67, seed=1)
    crops = augmentation.EvaluationCrops(base, 67, data.estimate_statistics(base, standardize=True))
    model = AlexNet(10, image_size=67, init="kaiming").to(memory_format=torch.channels_last)
    sizes = []
    model.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    args = type("Args", (), {"amp": "none", "channels_last": True})()
    runtime = Runtime(0, 1, torch.device("cpu"))

    def metrics(batch_size):
        sizes.clear()
        loader = data.make_loader(crops, SequentialSampler(crops), batch_size, 0, torch.device("cpu"), seed=0)
        return evaluation.evaluate(model, loader, args, runtime, ten_crop=False)

    batched = metrics(5)  # 5, 5 and 3 padded to 5
    assert sizes == [5, 5, 5]
    one_by_one = metrics(1)
    assert sizes == [1] * 13
    assert batched["val_loss"] == pytest.approx(one_by_one["val_loss"], rel=1e-5)
    assert batched["val_top1_error"] == one_by_one["val_top1_error"]
    assert batched["val_top5_error"] == one_by_one["val_top5_error"]
