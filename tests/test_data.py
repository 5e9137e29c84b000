"""Where images come from (alexnet_triton/data.py): the built-in dataset, ImageFolder trees, the loaders
and the sampler that resumes an epoch part-way."""

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
