"""What the network sees (alexnet_triton/augmentation.py): the paper's augmentation and test-time crops on the
CPU, and the same crops made on the device by one Triton kernel from uint8 images and the same draws (on the
`device` fixture: compiled on a GPU, through Triton's interpreter on a CPU, where the kernel has no other way to
run). The CPU references stay on the CPU; the device's crops come back to be compared."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from alexnet_triton.kernels import augment
from alexnet_triton.kernels import expected as expected_answers
from helpers import assert_within_a_grey_level, relative_error
from torch.utils.data import default_collate

from alexnet_triton import augmentation, data


class ArraySplit:
    """Stands in for a store split: uint8 (N, S, S, 3) images and their labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> torch.Tensor:
        return self.images[index]


class FloatView(torch.utils.data.Dataset):
    """The same images as the CPU path reads them: (3, S, S) float in [0, 255]."""

    def __init__(self, split: ArraySplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.split.image(index).permute(2, 0, 1).float(), int(self.split.labels[index])


def random_split(count: int, side: int) -> ArraySplit:
    return ArraySplit(torch.randint(0, 256, (count, side, side, 3), dtype=torch.uint8), torch.arange(count) % 3)


def random_stats(standardize: bool) -> dict:
    images = torch.randint(0, 256, (4, 3, 9, 9)).float()
    return augmentation.rgb_statistics(images, standardize=standardize)


def test_pca_statistics_and_lighting_shift():
    # Pixels with a known RGB covariance (in [0, 1] units) around a known mean.
    generator = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[0.20, 0.00, 0.00], [0.15, 0.05, 0.00], [0.10, 0.02, 0.03]])
    pixels = torch.randn(200_000, 3, generator=generator) @ mixing.T
    images = (pixels * 255 + torch.tensor([120.0, 110.0, 100.0])).T.reshape(3, 200, 1000)[None]
    stats = augmentation.rgb_statistics(images)
    torch.testing.assert_close(stats["mean"], torch.tensor([120.0, 110.0, 100.0]), atol=0.5, rtol=0)
    covariance = stats["eigenvectors"] @ torch.diag(stats["eigenvalues"]) @ stats["eigenvectors"].T
    torch.testing.assert_close(covariance, mixing @ mixing.T, atol=2e-4, rtol=0)

    # The shift eigvecs @ (alpha * eigvals), alpha ~ N(0, 0.1): its covariance is V diag(0.01 l^2) V^T.
    shifts = torch.stack(
        [
            augmentation.pca_shift(0.1 * torch.randn(3, generator=torch.Generator().manual_seed(i)), stats) / 255
            for i in range(20_000)
        ]
    )
    expected = stats["eigenvectors"] @ torch.diag(0.01 * stats["eigenvalues"] ** 2) @ stats["eigenvectors"].T
    torch.testing.assert_close(torch.cov(shifts.T), expected, atol=3e-6, rtol=0.05)
    assert shifts.mean(0).abs().max() < 3 * 0.1 * stats["eigenvalues"].max() / 20_000**0.5


def test_ten_crops_follow_torchvisions_order():
    image = torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12)
    stats = {"mean": torch.tensor([1.0, 2.0, 3.0]), "scale": torch.tensor([1.0, 0.5, 2.0])}
    crops = augmentation.ten_crops(image, 8, stats)
    assert crops.shape == (10, 3, 8, 8)
    corner = (image[:, :8, :8] - stats["mean"][:, None, None]) * stats["scale"][:, None, None]
    assert torch.equal(crops[0], corner), "the first crop is the top-left corner"
    # Crops 5-9 are the corners and center of the flipped image: the flip of the top-right is its top-left.
    assert torch.equal(crops[5], crops[1].flip(-1)) and torch.equal(crops[9], crops[4].flip(-1))


def test_evaluation_crops_are_the_center_crop_or_the_ten_crops():
    base = data.ShapesDataset("val", 3, 67, seed=1)
    stats = data.estimate_statistics(base)
    center, label = augmentation.EvaluationCrops(base, 67, stats)[2]
    assert center.shape == (3, 67, 67) and label == int(base.labels[2])
    torch.testing.assert_close(center, augmentation.eval_transform(base[2][0], 67, stats), rtol=0, atol=0)
    crops, _ = augmentation.EvaluationCrops(base, 67, stats, ten_crop=True)[2]
    assert crops.shape == (10, 3, 67, 67)
    assert torch.equal(crops[4], center), "the fifth of the ten crops is the center"


def test_augmentation_depends_only_on_seed_epoch_and_index():
    base = data.ShapesDataset("train", 4, 67, seed=0)
    stats = data.estimate_statistics(base)
    view = augmentation.TrainingCrops(base, 67, stats, seed=5)
    view.set_epoch(2)
    sample = view[3][0]
    assert sample.shape == (3, 67, 67)
    assert torch.equal(view[3][0], sample)
    view.set_epoch(3)
    assert not torch.equal(view[3][0], sample)


@pytest.mark.parametrize("standardize", [False, True])
def test_training_crops_on_the_device_equal_the_cpu_crops_for_the_same_draws(standardize, device):
    split, stats = random_split(12, 15), random_stats(standardize)
    cpu = augmentation.TrainingCrops(FloatView(split), 11, stats, seed=7)
    draws = augmentation.TrainingDraws(split, 11, stats, seed=7, resize=15)
    for epoch in (0, 3):
        cpu.set_epoch(epoch)
        draws.set_epoch(epoch)
        expected = torch.stack([cpu[i][0] for i in range(len(split))])
        images, boxes, shift, labels = default_collate([draws[i] for i in range(len(split))])
        assert set(boxes[:, 2].tolist()) == {0, 1}, "both flipped and unflipped crops are compared"
        assert torch.equal(labels, split.labels)
        images, boxes, shift = images.to(device), boxes.to(device), shift.to(device)
        crops = augmentation.crop_on_device(images, augmentation.training_boxes(boxes), stats, 11, shift=shift)
        assert crops.shape == (12, 3, 11, 11) and crops.device == device
        assert relative_error(crops.cpu(), expected) < 1e-6


@pytest.mark.parametrize("side, size", [(15, 11), (14, 11), (9, 9)])
def test_centre_and_ten_crops_on_the_device_equal_torchvisions(side, size, device):
    split, stats = random_split(3, side), random_stats(standardize=True)
    images = torch.stack([split.image(i) for i in range(3)]).to(device)
    for ten_crop, reference in ((False, augmentation.eval_transform), (True, augmentation.ten_crops)):
        boxes = augmentation.evaluation_boxes(3, side, size, ten_crop, images.device)
        crops = augmentation.crop_on_device(images, boxes, stats, size)
        expected = torch.cat([reference(FloatView(split)[i][0], size, stats).reshape(-1, 3, size, size)
                              for i in range(3)])  # fmt: skip
        assert crops.shape == expected.shape and crops.device == device
        assert relative_error(crops.cpu(), expected) < 1e-6, f"ten_crop={ten_crop}"


def test_crops_at_the_borders_flipped_or_not(device):
    split, stats = random_split(2, 10), random_stats(standardize=False)
    images = torch.stack([split.image(i) for i in range(2)])
    boxes = torch.tensor([[0, 0, 0, 1], [1, 4, 4, 1], [1, 4, 0, 0], [0, 0, 4, 0]], dtype=torch.int32)
    shift = torch.randn(4, 3) * 5
    crops = augmentation.crop_on_device(images.to(device), boxes.to(device), stats, 6, shift=shift.to(device)).cpu()
    for crop, (sample, top, left, flip), lighting in zip(crops, boxes.tolist(), shift, strict=True):
        window = images[sample, top : top + 6, left : left + 6].permute(2, 0, 1).float()
        window = window.flip(-1) if flip else window
        expected = augmentation.normalize(window + lighting[:, None, None], stats)
        assert relative_error(crop, expected) < 1e-6


@pytest.mark.parametrize("resize", [None, 10], ids=["as stored", "rescaled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_crops_come_in_the_training_dtype_and_memory_format(dtype, resize, device):
    split, stats = random_split(2, 12), random_stats(standardize=True)
    images = torch.stack([split.image(i) for i in range(2)]).to(device)
    boxes = augmentation.evaluation_boxes(2, resize or 12, 9, resize is None, images.device)  # rescaled: centre crops
    reference = augmentation.crop_on_device(images, boxes, stats, 9, resize=resize)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        crops = augmentation.crop_on_device(
            images, boxes, stats, 9, resize=resize, dtype=dtype, memory_format=memory_format
        )
        assert crops.dtype == dtype and crops.is_contiguous(memory_format=memory_format)
        assert torch.equal(crops, reference.to(dtype)), "one rounding of the fp32 value"


@pytest.mark.parametrize("source, target", [(256, 76), (40, 19), (97, 13), (15, 15), (9, 1)])
def test_the_resampling_table_is_pytorchs_antialiased_resize(source, target):
    starts, weights = augment.resampling(source, target)
    assert starts.dtype == torch.int32 and weights.dtype == torch.float32 and weights.shape[0] == target
    torch.testing.assert_close(weights.double().sum(1), torch.ones(target, dtype=torch.float64), rtol=0, atol=1e-6)
    taps = torch.arange(weights.shape[1])
    assert ((starts[:, None] + taps < source) | (weights == 0)).all(), "no weight on a pixel past the image"
    matrix = expected_answers.resampling_matrix(starts, weights, source)  # as the tuning check reads the table
    image = torch.rand(2, 3, source, source, dtype=torch.float64) * 255
    expected = torch.nn.functional.interpolate(image, size=(target, target), mode="bilinear", antialias=True)
    torch.testing.assert_close(matrix @ image @ matrix.T, expected, rtol=0, atol=1e-4)  # float32 weights
    with pytest.raises(ValueError, match=f"target must be in \\[1, {source}\\], got {source + 1}"):
        augment.resampling(source, source + 1)


class RescaledView(FloatView):
    """The images as a store's CPU path serves them rescaled: PyTorch's antialiased resize of the uint8 pixels."""

    def __init__(self, split: ArraySplit, side: int):
        super().__init__(split)
        self.side = side

    def __getitem__(self, index: int):
        pixels = self.split.image(index).permute(2, 0, 1)
        return TF.resize(pixels, [self.side], antialias=True).float(), int(self.split.labels[index])


def test_training_crops_of_rescaled_images_on_the_device_equal_the_cpu_crops(device):
    split, stats = random_split(6, 40), random_stats(standardize=True)
    cpu = augmentation.TrainingCrops(RescaledView(split, 19), 17, stats, seed=2)
    draws = augmentation.TrainingDraws(split, 17, stats, seed=2, resize=19)
    expected = torch.stack([cpu[i][0] for i in range(len(split))])
    images, boxes, shift, _ = default_collate([draws[i] for i in range(len(split))])
    assert set(boxes[:, 2].tolist()) == {0, 1} and boxes[:, :2].max() == 19 - 17, "flips, and the far corner"
    images, boxes, shift = images.to(device), boxes.to(device), shift.to(device)
    crops = augmentation.crop_on_device(images, augmentation.training_boxes(boxes), stats, 17, shift=shift, resize=19)
    assert crops.shape == (6, 3, 17, 17) and crops.device == device
    assert_within_a_grey_level(crops.cpu(), expected, stats)


def test_centre_and_ten_crops_of_rescaled_images_on_the_device_equal_torchvisions(device):
    split, stats = random_split(2, 31), random_stats(standardize=False)
    images = torch.stack([split.image(i) for i in range(2)]).to(device)
    for ten_crop, reference in ((False, augmentation.eval_transform), (True, augmentation.ten_crops)):
        boxes = augmentation.evaluation_boxes(2, 14, 11, ten_crop, images.device)
        crops = augmentation.crop_on_device(images, boxes, stats, 11, resize=14)
        expected = torch.cat([reference(RescaledView(split, 14)[i][0], 11, stats).reshape(-1, 3, 11, 11)
                              for i in range(2)])  # fmt: skip
        assert crops.shape == expected.shape
        assert_within_a_grey_level(crops.cpu(), expected, stats)


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    # What a CUDA machine (no TRITON_INTERPRET) answers for CPU tensors: a clear error, not a silent fallback.
    monkeypatch.setattr(augmentation.functional, "backend", lambda device: "torch")
    images, boxes = torch.zeros(1, 4, 4, 3, dtype=torch.uint8), torch.zeros(1, 4, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="give CUDA tensors, or set TRITON_INTERPRET=1"):
        augmentation.crop_on_device(images, boxes, random_stats(standardize=False), 2)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "images": a["images"].float()}, "images must be uint8 \\(N, S, S, 3\\)"),
        (lambda a: {**a, "images": a["images"].permute(0, 3, 1, 2)}, "images must be uint8 \\(N, S, S, 3\\)"),
        (lambda a: {**a, "images": a["images"][:, :, :9]}, "images must be square"),
        (lambda a: {**a, "image_size": 13}, "image_size must be in \\[1, 12\\]"),
        (lambda a: {**a, "resize": 13}, "resize must be in \\[1, 12\\] for 12x12 images \\(they are only shrunk\\)"),
        (lambda a: {**a, "resize": 7}, "image_size must be in \\[1, 7\\] for 7x7 images, got 8"),
        (lambda a: {**a, "boxes": a["boxes"][:, :3]}, "boxes must be \\(M, 4\\)"),
        (lambda a: {**a, "shift": torch.zeros(5, 3)}, "shift must be \\(2, 3\\)"),
        (lambda a: {**a, "dtype": torch.int32}, "dtype must be a floating dtype"),
    ],
)
def test_bad_arguments_name_the_argument(change, match):
    # Every check comes before the kernel is chosen, so CPU tensors reach them on any machine.
    valid = {
        "images": torch.zeros(2, 12, 12, 3, dtype=torch.uint8),
        "boxes": torch.zeros(2, 4, dtype=torch.int32),
        "stats": random_stats(standardize=False),
        "image_size": 8,
        "shift": torch.zeros(2, 3),
        "dtype": torch.float32,
    }
    arguments = change(valid)
    with pytest.raises(ValueError, match=match):
        augmentation.crop_on_device(
            arguments.pop("images"), arguments.pop("boxes"), arguments.pop("stats"), arguments.pop("image_size"),
            **arguments,
        )  # fmt: skip


def test_evaluation_boxes_are_made_once_per_batch_shape_and_device():
    """A copy of the boxes from the host for every evaluation batch would wait for the GPU: they are one tensor per
    batch shape and device, made at the first batch."""
    first = augmentation.evaluation_boxes(3, 12, 8, True, "cpu")
    assert augmentation.evaluation_boxes(3, 12, 8, True, torch.device("cpu")) is first
    assert augmentation.evaluation_boxes(4, 12, 8, True, "cpu") is not first
    assert first.shape == (30, 4) and first[:, 0].tolist() == [n for n in range(3) for _ in range(10)]
