"""Evaluation (alexnet_triton/evaluation.py): the loss and errors of held-out crops; the --evaluate mode runs
through the command line in tests/test_train.py."""

import pytest
import torch

from alexnet_triton import augmentation, evaluation
from alexnet_triton.runtime import Runtime


def test_ten_crop_evaluation_averages_the_softmax_over_the_crops():
    image = torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12)
    stats = {"mean": torch.tensor([1.0, 2.0, 3.0]), "scale": torch.tensor([1.0, 0.5, 2.0])}
    crops = augmentation.ten_crops(image, 8, stats)

    class Linear(torch.nn.Module):  # stands in for the network: logits from the crop's mean colour
        def forward(self, x):
            return x.mean(dim=(2, 3)) @ torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]]) / 50

    dataset = [(crops, 1), (crops.flip(0), 0)]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    args = type("Args", (), {"amp": "none", "channels_last": False})()
    runtime = Runtime(0, 1, torch.device("cpu"))
    metrics = evaluation.evaluate(Linear(), loader, args, runtime, ten_crop=True)
    probabilities = Linear()(crops).softmax(-1).mean(0)
    expected_loss = -(probabilities[1].log() + probabilities[0].log()) / 2
    assert metrics["val_loss"] == pytest.approx(expected_loss.item(), rel=1e-5)
