"""How batches reach the network (alexnet_triton/input_pipeline.py): from a prepared store, the GPU pipeline
(uint8 images and draws, crops made by the Triton kernel on the `device` fixture: compiled on a GPU, through the
interpreter on a CPU) hands the network what the CPU pipeline does."""

import pytest
import torch
from helpers import relative_error
from image_tree import write_tree
from torch.utils.data import default_collate

from alexnet_triton import input_pipeline, prepare, store


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    write_tree(root / "images", awkward=False)
    prepare.prepare(str(root / "images"), str(root / "store"), side=20, workers=0)
    out = str(root / "store")
    return store.StoreDataset(out, "train"), store.StoreDataset(out, "val"), store.statistics(out, standardize=True)


def batch(view, count: int):
    return default_collate([view[i] for i in range(count)])


@pytest.mark.parametrize("channels_last", [False, True])
def test_gpu_pipeline_trains_on_the_crops_the_cpu_pipeline_makes(splits, channels_last, device):
    train, val, stats = splits
    cpu = input_pipeline.CpuPipeline(train, val, 17, stats, seed=3)
    gpu = input_pipeline.GpuPipeline(train, val, 17, stats, seed=3)
    for epoch in (0, 1):
        cpu.training.set_epoch(epoch)
        gpu.training.set_epoch(epoch)
        expected, expected_labels = cpu.training_batch(batch(cpu.training, 10), device, channels_last)
        images, labels = gpu.training_batch(batch(gpu.training, 10), device, channels_last)
        assert images.device == labels.device == device
        assert torch.equal(labels, expected_labels)
        assert images.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert relative_error(images, expected) < 1e-6


@pytest.mark.parametrize("ten_crop", [False, True])
def test_gpu_pipeline_evaluates_the_crops_the_cpu_pipeline_makes(splits, ten_crop, device):
    train, val, stats = splits
    cpu = input_pipeline.CpuPipeline(train, val, 17, stats, seed=0, ten_crop=ten_crop)
    gpu = input_pipeline.GpuPipeline(train, val, 17, stats, seed=0, ten_crop=ten_crop)
    expected, expected_labels = cpu.evaluation_batch(batch(cpu.evaluation, 4), device, False)
    images, labels = gpu.evaluation_batch(batch(gpu.evaluation, 4), device, False)
    assert images.device == labels.device == device
    assert images.shape == expected.shape == ((4, 10, 3, 17, 17) if ten_crop else (4, 3, 17, 17))
    assert torch.equal(labels, expected_labels)
    assert relative_error(images, expected) < 1e-6


def test_choice_of_pipeline(splits):
    train, val, stats = splits
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert isinstance(input_pipeline.choose(train, val, 17, stats, 0, cuda), input_pipeline.GpuPipeline)
    assert isinstance(input_pipeline.choose(train, val, 17, stats, 0, cpu), input_pipeline.CpuPipeline)
    assert isinstance(input_pipeline.choose(train, val, 17, stats, 0, cuda, augment="cpu"), input_pipeline.CpuPipeline)
    images = [(torch.zeros(3, 20, 20), 0)]
    with pytest.raises(ValueError, match="--augment gpu needs a prepared store"):
        input_pipeline.choose(images, images, 17, stats, 0, cuda, augment="gpu")
