"""What the network sees of an image: the paper's augmentation (section 4.1) and test-time crops, on the
CPU per image, or on the GPU per batch in one fused kernel.

Every random choice for a training sample is drawn from a generator seeded by (run seed, epoch, sample
index), so an epoch's data is the same whichever process or worker loads it, a run that resumes
mid-epoch sees exactly what it would have seen without the interruption, and the GPU path draws the
very numbers the CPU path draws (``draw_training_crop``).

Images are raw pixel values in [0, 255] with the per-channel means subtracted: the paper feeds "the
(centered) raw RGB values of the pixels", and its N(0, 0.01) initialisation is scaled for them (with
inputs in [0, 1] the signal fades layer by layer and nothing learns). The paper subtracts the mean
image; the per-channel mean is the usual simplification. With standardize=True the centered values are
also divided by the per-channel standard deviation, for the He initialisation, which expects
unit-variance inputs.

    CPU: dataset -> TrainingCrops / EvaluationCrops -> float crops -> loader -> device
    GPU: store -> TrainingDraws / StoredImages -> uint8 images + draws -> loader -> device -> crop_on_device
"""

import functools
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from alexnet_triton import functional
from alexnet_triton.kernels import augment as augment_kernel

PCA_ALPHA_STD = 0.1  # section 4.1: alpha ~ N(0, 0.1)


def rgb_statistics(images: torch.Tensor, standardize: bool = False) -> dict[str, torch.Tensor]:
    """Per-channel mean (in [0, 255]) and the eigenvalues / eigenvectors of the RGB covariance of
    pixel values scaled to [0, 1], of a batch of (N, 3, H, W) images in [0, 255]: what the mean
    subtraction and "fancy PCA" need. (Eigenvalues on the [0, 1] scale, as in the common
    implementations of the paper: 0.2175, 0.0188, 0.0045 for ImageNet.) "scale" multiplies the
    centered pixels: 1, or 1 / std with standardize=True."""
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double()
    mean = pixels.mean(dim=1)
    covariance = torch.cov(pixels / 255)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    scale = 1 / pixels.std(dim=1).clamp_min(1e-6) if standardize else torch.ones(3, dtype=torch.float64)
    return {
        "mean": mean.float(),
        "scale": scale.float(),
        "eigenvalues": eigenvalues.clamp_min(0).float(),
        "eigenvectors": eigenvectors.float(),
    }


def normalize(image: torch.Tensor, stats: dict) -> torch.Tensor:
    """Subtract the per-channel mean (and scale, when standardizing); image: (..., 3, H, W)."""
    return (image - stats["mean"][:, None, None]) * stats["scale"][:, None, None]


def pca_shift(alpha: torch.Tensor, stats: dict) -> torch.Tensor:
    """Section 4.1's lighting change for one image, in 0-255 units: 255 * eigvecs @ (alpha * eigvals)
    (a shift of a few grey levels: the illumination changes, the object does not)."""
    return 255 * (stats["eigenvectors"] @ (alpha * stats["eigenvalues"]))


def draw_training_crop(side: int, image_size: int, stats: dict, generator: torch.Generator):
    """The random choices for one training image: (top, left, flip, lighting shift (3,) in 0-255 units)."""
    top, left = (int(torch.randint(0, side - image_size + 1, (1,), generator=generator)) for _ in range(2))
    flip = bool(torch.rand((), generator=generator) < 0.5)
    alpha = torch.randn(3, generator=generator) * PCA_ALPHA_STD
    return top, left, flip, pca_shift(alpha, stats)


def train_transform(image: torch.Tensor, image_size: int, stats: dict, generator: torch.Generator) -> torch.Tensor:
    """Random crop, horizontal flip, PCA lighting, mean subtraction; image: (3, S, S) in [0, 255]."""
    top, left, flip, shift = draw_training_crop(image.shape[-1], image_size, stats, generator)
    image = image[:, top : top + image_size, left : left + image_size]
    if flip:
        image = image.flip(-1)
    return normalize(image + shift[:, None, None], stats)


def eval_transform(image: torch.Tensor, image_size: int, stats: dict) -> torch.Tensor:
    """The center crop, normalized."""
    return normalize(TF.center_crop(image, [image_size]), stats)


def ten_crops(image: torch.Tensor, image_size: int, stats: dict) -> torch.Tensor:
    """(10, 3, s, s): the four corners and the center, and their horizontal flips (section 4.1)."""
    return normalize(torch.stack(TF.ten_crop(image, [image_size])), stats)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, epoch, index)) % 2**63)


# ---------------------------------------------------------------------------------------------
# CPU: float crops per image
# ---------------------------------------------------------------------------------------------


class TrainingCrops(Dataset):
    """The training set seen through the paper's augmentation: a random crop, a horizontal flip, PCA
    lighting and normalisation, drawn from a generator seeded by the run's seed, the epoch and the
    sample's index. Call set_epoch before each epoch (as with DistributedSampler)."""

    def __init__(self, base: Dataset, image_size: int, stats: dict, seed: int):
        self.base, self.image_size, self.stats, self.seed = base, image_size, stats, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        generator = sample_generator(self.seed, self.epoch, index)
        return train_transform(image, self.image_size, self.stats, generator), label


class EvaluationCrops(Dataset):
    """A held-out set seen as the network is tested: the center crop, or (ten_crop=True) the ten crops
    stacked, normalized."""

    def __init__(self, base: Dataset, image_size: int, stats: dict, ten_crop: bool = False):
        self.base, self.image_size, self.stats, self.ten_crop = base, image_size, stats, ten_crop

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        view: Callable = ten_crops if self.ten_crop else eval_transform
        return view(image, self.image_size, self.stats), label


# ---------------------------------------------------------------------------------------------
# GPU: loader workers ship uint8 images and the draws; one kernel makes the crops on the device
# ---------------------------------------------------------------------------------------------


class StoredImages(Dataset):
    """(image (S, S, 3) uint8, label) of a store split (store.StoreSplit): a slice of the memory map."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.split.image(index), int(self.split.labels[index])


class TrainingDraws(StoredImages):
    """(image (S, S, 3) uint8, box (top, left, flip) int32, lighting shift (3,) float32, label): what
    TrainingCrops would draw for the same (seed, epoch, index) from the image rescaled to resize x resize
    (resize S: as stored), left for crop_on_device to apply."""

    def __init__(self, split, image_size: int, stats: dict, seed: int, resize: int):
        super().__init__(split)
        self.image_size, self.stats, self.seed, self.resize = image_size, stats, seed, resize
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        image, label = super().__getitem__(index)
        generator = sample_generator(self.seed, self.epoch, index)
        top, left, flip, shift = draw_training_crop(self.resize, self.image_size, self.stats, generator)
        return image, torch.tensor([top, left, int(flip)], dtype=torch.int32), shift, label


def training_boxes(draws: torch.Tensor) -> torch.Tensor:
    """(N, 4) boxes (sample, top, left, flip) from a batch of TrainingDraws boxes (N, 3)."""
    samples = torch.arange(len(draws), dtype=torch.int32, device=draws.device)
    return torch.cat([samples[:, None], draws.to(torch.int32)], dim=1)


def evaluation_boxes(count: int, side: int, image_size: int, ten_crop: bool, device) -> torch.Tensor:
    """(count * crops, 4) boxes for the centre crop, or the ten crops in torchvision's ten_crop order: the
    four corners and the centre, then the same five of the flipped image. Read-only: one tensor per arguments and
    device, made once (a copy from the host per batch would wait for the device)."""
    return _evaluation_boxes(count, side, image_size, ten_crop, torch.device(device))


@functools.lru_cache(maxsize=64)
def _evaluation_boxes(count: int, side: int, image_size: int, ten_crop: bool, device: torch.device) -> torch.Tensor:
    far = side - image_size
    centre = int(round(far / 2.0))  # torchvision's centre_crop rounding
    if ten_crop:
        # A crop of the flipped image at left x is the flipped crop of the original at left far - x.
        crops = [(0, 0, 0), (0, far, 0), (far, 0, 0), (far, far, 0), (centre, centre, 0),
                 (0, far, 1), (0, 0, 1), (far, far, 1), (far, 0, 1), (centre, far - centre, 1)]  # fmt: skip
    else:
        crops = [(centre, centre, 0)]
    per_sample = torch.tensor(crops, dtype=torch.int32)
    samples = torch.arange(count, dtype=torch.int32).repeat_interleave(len(crops))
    return torch.cat([samples[:, None], per_sample.repeat(count, 1)], dim=1).to(device)


def crop_on_device(
    images: torch.Tensor,
    boxes: torch.Tensor,
    stats: dict,
    image_size: int,
    *,
    shift: torch.Tensor | None = None,
    resize: int | None = None,
    dtype: torch.dtype = torch.float32,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """(M, 3, image_size, image_size) normalized crops of uint8 images (N, S, S, 3) rescaled to R x R (resize R,
    at most S; None: as they are, R = S), one per box row (sample, top, left, flip) of boxes (M, 4) in R x R
    coordinates, in one kernel on the images' device; shift (M, 3) is each crop's lighting change in 0-255
    units (none for evaluation). Equal to train_transform / eval_transform / ten_crops of the images rescaled
    as store.StoreDataset rescales them, for the same draws: to fp32 rounding, and (when rescaling) a grey level
    on the rare pixels where PyTorch's fixed-point uint8 resize rounds a half the other way."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 or images.shape[3] != 3:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be uint8 (N, S, S, 3) (height, width, RGB), got {got}")
    side = images.shape[1]
    if images.shape[2] != side:
        raise ValueError(f"images must be square, got {tuple(images.shape[1:3])}")
    resize = side if resize is None else resize
    if not 1 <= resize <= side:
        raise ValueError(f"resize must be in [1, {side}] for {side}x{side} images (they are only shrunk), got {resize}")
    if not 1 <= image_size <= resize:
        raise ValueError(f"image_size must be in [1, {resize}] for {resize}x{resize} images, got {image_size}")
    if boxes.dim() != 2 or boxes.shape[1] != augment_kernel.BOX_COLUMNS or boxes.device != images.device:
        raise ValueError(f"boxes must be (M, 4) on {images.device}, got {tuple(boxes.shape)} on {boxes.device}")
    if shift is None:
        shift = torch.zeros(len(boxes), 3, device=images.device)
    if shift.shape != (len(boxes), 3) or shift.device != images.device:
        raise ValueError(
            f"shift must be ({len(boxes)}, 3) on {images.device}, got {tuple(shift.shape)} on {shift.device}"
        )
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    if functional.backend(images.device) == "torch":
        raise RuntimeError(
            "crop_on_device runs the Triton kernel: give CUDA tensors, or set TRITON_INTERPRET=1 on a CPU"
        )
    mean, scale = (stats[key].to(images.device, torch.float32) for key in ("mean", "scale"))
    return augment_kernel.crop_normalize(
        images, boxes.to(torch.int32).contiguous(), shift.to(torch.float32).contiguous(), mean, scale,
        image_size, dtype, memory_format, resize,
    )  # fmt: skip
