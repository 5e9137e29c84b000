"""Where images come from (alexnet_triton/data.py): the built-in dataset, ImageFolder trees, the loaders
and the sampler that resumes an epoch part-way."""

import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from alexnet_triton import augmentation, data


def test_builtin_dataset_is_deterministic_and_balanced():
    first, again = data.ShapesDataset("val", 40, 67, seed=3), data.ShapesDataset("val", 40, 67, seed=3)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert first.images.shape == (40, 3, data.resize_size(67), data.resize_size(67))
    assert torch.bincount(first.labels).tolist() == [4] * 10
    train = data.ShapesDataset("train", 40, 67, seed=3)
    assert not torch.equal(train.images, first.images), "held-out images must be new ones"


def test_skip_first_continues_the_epochs_order_where_it_stopped():
    dataset = list(range(23))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=4)
    sampler.set_epoch(7)
    whole = list(sampler)
    rest = data.SkipFirst(sampler, 5)
    assert list(rest) == whole[5:] and len(rest) == len(whole) - 5


def test_loader_batches_do_not_depend_on_the_global_generator():
    # The global generator seeds dropout; a loader that drew from it would shift those seeds after a resume.
    base = data.ShapesDataset("train", 6, 67, seed=0)
    dataset = augmentation.TrainingCrops(base, 67, data.estimate_statistics(base), seed=0)

    def first_batch():
        sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=2)
        loader = data.make_loader(dataset, sampler, batch_size=4, workers=None, device=torch.device("cpu"), seed=2)
        return next(iter(loader))

    torch.manual_seed(1)
    before = torch.get_rng_state()
    images, labels = first_batch()
    assert torch.equal(torch.get_rng_state(), before), "loading may not draw from the global generator"
    torch.manual_seed(99)
    again_images, again_labels = first_batch()
    assert images.shape == (4, 3, 67, 67)
    assert torch.equal(images, again_images) and torch.equal(labels, again_labels)


def test_steps_per_epoch_counts_whole_batches_of_each_process_share():
    assert data.steps_per_epoch(128, 32) == 4
    assert data.steps_per_epoch(130, 32) == 4, "the last partial batch is dropped"
    assert data.steps_per_epoch(32, 32) == 1
    # Two processes: a DistributedSampler gives each ceil(101 / 2) = 51 images, 3 batches of 16.
    assert data.steps_per_epoch(101, 16, world_size=2) == 3
    for images, batch, world in [(23, 4, 1), (101, 16, 2), (64, 16, 2), (50, 7, 3)]:
        sampler = DistributedSampler(list(range(images)), num_replicas=world, rank=world - 1, shuffle=False)
        assert data.steps_per_epoch(images, batch, world) == len(sampler) // batch


def test_a_training_set_smaller_than_one_batch_is_refused_with_the_sizes_and_a_way_out():
    with pytest.raises(ValueError, match=r"20 images, fewer than one batch of --batch-size 32.*batch-size 20 or less"):
        data.steps_per_epoch(20, 32)
    with pytest.raises(ValueError, match=r"40 images \(20 per process for 2 processes\).*--batch-size 20 or less"):
        data.steps_per_epoch(40, 32, world_size=2)


def test_training_loader_gives_only_full_batches_also_when_resuming_mid_epoch():
    images, batch = 23, 4  # 5 full batches and 3 images left over
    dataset = list(range(images))
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=1)
    sampler.set_epoch(2)

    def batches(which):
        loader = data.make_loader(dataset, which, batch, workers=0, device=torch.device("cpu"), seed=0, drop_last=True)
        found = [b.tolist() for b in loader]
        assert len(found) == len(loader), "len(loader), which progress bars show, counts the batches given"
        return found

    whole = batches(sampler)
    steps = data.steps_per_epoch(images, batch)
    assert len(whole) == steps == 5 and all(len(b) == batch for b in whole)
    assert [i for b in whole for i in b] == list(sampler)[: steps * batch], "the epoch's own order, its tail left out"
    for done in range(steps + 1):  # a resume after `done` steps: the rest of the same epoch, full batches only
        assert batches(data.SkipFirst(sampler, done * batch)) == whole[done:]
    # Evaluation keeps the partial batch (and pads it).
    evaluation = data.make_loader(dataset, sampler, batch, workers=0, device=torch.device("cpu"), seed=0)
    assert [len(b) for b in evaluation] == [4, 4, 4, 4, 4, 3]


def test_even_batch_size_takes_as_few_batches_with_as_little_padding_as_can_be():
    assert data.even_batch_size(1000, 256) == 250
    assert data.even_batch_size(257, 256) == 129
    assert data.even_batch_size(40, 128) == 40, "fewer images than the largest batch: one batch of them all"
    assert data.even_batch_size(512, 256) == 256
    for images in range(1, 200):
        for largest in (1, 3, 16, 64):
            size = data.even_batch_size(images, largest)
            batches = math.ceil(images / size)
            assert size <= largest and batches == math.ceil(images / largest)
            assert batches * size - images < batches, "padding less than a row per batch"


@pytest.mark.parametrize("channels_last", [False, True])
def test_pad_rows_appends_zero_rows_in_the_tensors_memory_format(channels_last):
    tensor = torch.rand(3, 2, 5, 4) + 1
    if channels_last:
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    padded = data.pad_rows(tensor, 7)
    assert padded.shape == (7, 2, 5, 4) and padded.dtype == tensor.dtype
    assert torch.equal(padded[:3], tensor) and not padded[3:].any()
    assert padded.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert data.pad_rows(tensor, 3) is tensor and data.pad_rows(tensor, 2) is tensor
    labels = data.pad_rows(torch.tensor([4, 5]), 4)
    assert labels.tolist() == [4, 5, 0, 0]


def test_pad_rows_keeps_the_strides_of_ten_crop_batches():
    """Ten crops reach the network as 5-D views of channels_last crops; a padded last batch must have the full
    batches' strides, or a CUDA graph captured for them would not replay it."""

    def ten_crops(count):
        return torch.rand(count * 10, 3, 6, 6).contiguous(memory_format=torch.channels_last).unflatten(0, (count, 10))

    partial = ten_crops(2) + 1
    padded = data.pad_rows(partial, 5)
    assert padded.shape == (5, 10, 3, 6, 6) and padded.stride() == ten_crops(5).stride()
    assert torch.equal(padded[:2], partial) and not padded[2:].any()
