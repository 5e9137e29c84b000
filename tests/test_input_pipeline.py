"""How batches reach the network (alexnet_triton/input_pipeline.py): from a prepared store, the GPU pipeline
(uint8 images and draws, crops made by the Triton kernel on the `device` fixture: compiled on a GPU, through the
interpreter on a CPU) hands the network what the CPU pipeline does."""

import pytest
import torch
from helpers import assert_within_a_grey_level, relative_error
from image_tree import write_tree
from torch.utils.data import default_collate

from alexnet_triton import augmentation, input_pipeline, prepare, store


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


@pytest.fixture(scope="module")
def rescaled_splits(tmp_path_factory):
    """A store of 40 x 40 images served at 19 x 19, as a run cropping 17 would be (data.load_datasets)."""
    root = tmp_path_factory.mktemp("rescaled")
    write_tree(root / "images", awkward=False, seed=1)
    prepare.prepare(str(root / "images"), str(root / "store"), side=40, workers=0)
    out = str(root / "store")
    train, val = store.StoreDataset(out, "train", resize=19), store.StoreDataset(out, "val", resize=19)
    return train, val, store.statistics(out, standardize=True)


def test_gpu_pipeline_rescales_a_store_as_the_cpu_pipeline_does(rescaled_splits, device):
    train, val, stats = rescaled_splits
    assert train[0][0].shape == (3, 19, 19)
    cpu = input_pipeline.CpuPipeline(train, val, 17, stats, seed=4, ten_crop=True)
    gpu = input_pipeline.GpuPipeline(train, val, 17, stats, seed=4, ten_crop=True)
    expected, expected_labels = cpu.training_batch(batch(cpu.training, 10), device, False)
    images, labels = gpu.training_batch(batch(gpu.training, 10), device, False)
    assert images.shape == expected.shape == (10, 3, 17, 17) and torch.equal(labels, expected_labels)
    assert_within_a_grey_level(images.cpu(), expected.cpu(), stats)
    expected, _ = cpu.evaluation_batch(batch(cpu.evaluation, 4), device, True)
    images, _ = gpu.evaluation_batch(batch(gpu.evaluation, 4), device, True)
    assert images.shape == expected.shape == (4, 10, 3, 17, 17)
    assert_within_a_grey_level(images.cpu(), expected.cpu(), stats)


def test_the_normalization_statistics_reach_the_device_once(splits, device, monkeypatch):
    # A copy from pageable host memory per batch would make the host wait for the GPU (a sync) every step.
    train, val, stats = splits
    gpu = input_pipeline.GpuPipeline(train, val, 17, stats, seed=0)
    seen = []
    crop = augmentation.crop_on_device
    monkeypatch.setattr(augmentation, "crop_on_device", lambda *a, **k: seen.append(a[2]) or crop(*a, **k))
    for _ in range(2):
        gpu.training_batch(batch(gpu.training, 4), device, False)
        gpu.evaluation_batch(batch(gpu.evaluation, 4), device, False)
    assert len(seen) == 4 and all(given is seen[0] for given in seen)
    assert all(t.device == device and t.dtype == torch.float32 for t in seen[0].values())


def test_choice_of_pipeline(splits):
    train, val, stats = splits
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert isinstance(input_pipeline.choose(train, val, 17, stats, 0, cuda), input_pipeline.GpuPipeline)
    assert isinstance(input_pipeline.choose(train, val, 17, stats, 0, cpu), input_pipeline.CpuPipeline)
    assert isinstance(input_pipeline.choose(train, val, 17, stats, 0, cuda, augment="cpu"), input_pipeline.CpuPipeline)
    images = [(torch.zeros(3, 20, 20), 0)]
    with pytest.raises(ValueError, match="--augment gpu needs a prepared store"):
        input_pipeline.choose(images, images, 17, stats, 0, cuda, augment="gpu")
