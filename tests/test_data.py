"""The input pipeline (alexnet_triton/data.py): the built-in dataset, the paper's augmentation, the crops
a training loop reads, and the sampler that resumes an epoch part-way."""

import torch
from torch.utils.data import DistributedSampler

from alexnet_triton import data


def test_pca_statistics_and_lighting_shift():
    # Pixels with a known RGB covariance (in [0, 1] units) around a known mean.
    generator = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[0.20, 0.00, 0.00], [0.15, 0.05, 0.00], [0.10, 0.02, 0.03]])
    pixels = torch.randn(200_000, 3, generator=generator) @ mixing.T
    images = (pixels * 255 + torch.tensor([120.0, 110.0, 100.0])).T.reshape(3, 200, 1000)[None]
    stats = data.rgb_statistics(images)
    torch.testing.assert_close(stats["mean"], torch.tensor([120.0, 110.0, 100.0]), atol=0.5, rtol=0)
    covariance = stats["eigenvectors"] @ torch.diag(stats["eigenvalues"]) @ stats["eigenvectors"].T
    torch.testing.assert_close(covariance, mixing @ mixing.T, atol=2e-4, rtol=0)

    # The shift eigvecs @ (alpha * eigvals), alpha ~ N(0, 0.1): its covariance is V diag(0.01 l^2) V^T.
    flat = torch.zeros(3, 1, 1)
    shifts = torch.stack(
        [data.pca_lighting(flat, stats, torch.Generator().manual_seed(i)).flatten() / 255 for i in range(20_000)]
    )
    expected = stats["eigenvectors"] @ torch.diag(0.01 * stats["eigenvalues"] ** 2) @ stats["eigenvectors"].T
    torch.testing.assert_close(torch.cov(shifts.T), expected, atol=3e-6, rtol=0.05)
    assert shifts.mean(0).abs().max() < 3 * 0.1 * stats["eigenvalues"].max() / 20_000**0.5


def test_ten_crops_follow_torchvisions_order():
    image = torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12)
    stats = {"mean": torch.tensor([1.0, 2.0, 3.0]), "scale": torch.tensor([1.0, 0.5, 2.0])}
    crops = data.ten_crops(image, 8, stats)
    assert crops.shape == (10, 3, 8, 8)
    corner = (image[:, :8, :8] - stats["mean"][:, None, None]) * stats["scale"][:, None, None]
    assert torch.equal(crops[0], corner), "the first crop is the top-left corner"
    # Crops 5-9 are the corners and center of the flipped image: the flip of the top-right is its top-left.
    assert torch.equal(crops[5], crops[1].flip(-1)) and torch.equal(crops[9], crops[4].flip(-1))


def test_evaluation_crops_are_the_center_crop_or_the_ten_crops():
    base = data.ShapesDataset("val", 3, 67, seed=1)
    stats = data.estimate_statistics(base)
    center, label = data.EvaluationCrops(base, 67, stats)[2]
    assert center.shape == (3, 67, 67) and label == int(base.labels[2])
    torch.testing.assert_close(center, data.eval_transform(base[2][0], 67, stats), rtol=0, atol=0)
    crops, _ = data.EvaluationCrops(base, 67, stats, ten_crop=True)[2]
    assert crops.shape == (10, 3, 67, 67)
    assert torch.equal(crops[4], center), "the fifth of the ten crops is the center"


def test_builtin_dataset_is_deterministic_and_balanced():
    first, again = data.ShapesDataset("val", 40, 67, seed=3), data.ShapesDataset("val", 40, 67, seed=3)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert first.images.shape == (40, 3, data.resize_size(67), data.resize_size(67))
    assert torch.bincount(first.labels).tolist() == [4] * 10
    train = data.ShapesDataset("train", 40, 67, seed=3)
    assert not torch.equal(train.images, first.images), "held-out images must be new ones"


def test_augmentation_depends_only_on_seed_epoch_and_index():
    base = data.ShapesDataset("train", 4, 67, seed=0)
    stats = data.estimate_statistics(base)
    view = data.TrainingCrops(base, 67, stats, seed=5)
    view.set_epoch(2)
    sample = view[3][0]
    assert sample.shape == (3, 67, 67)
    assert torch.equal(view[3][0], sample)
    view.set_epoch(3)
    assert not torch.equal(view[3][0], sample)


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
    dataset = data.TrainingCrops(base, 67, data.estimate_statistics(base), seed=0)

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
