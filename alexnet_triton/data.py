"""The input pipeline: the built-in dataset, ImageFolder trees, the paper's augmentation (sections 2
and 4.1), the crops a training loop reads (TrainingCrops, EvaluationCrops) and its loaders, with the
sampler that resumes an epoch part-way (SkipFirst).

Every random choice for a training sample is drawn from a generator seeded by (run seed, epoch,
sample index), so an epoch's data is the same whichever process or worker loads it, and a run that
resumes mid-epoch sees exactly what it would have seen without the interruption.

Images are float tensors of raw pixel values in [0, 255] with the per-channel means subtracted: the
paper feeds "the (centered) raw RGB values of the pixels", and its N(0, 0.01) initialisation is
scaled for them (with inputs in [0, 1] the signal fades layer by layer and nothing learns). The paper
subtracts the mean image; the per-channel mean is the usual simplification. With standardize=True
the centered values are also divided by the per-channel standard deviation, for the He
initialisation, which expects unit-variance inputs. Sizes scale with the crop: the paper crops
227 out of 256, so an image_size of s crops s out of round(s * 256 / 227).
"""

import math
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

# ---------------------------------------------------------------------------------------------
# The paper's augmentation
# ---------------------------------------------------------------------------------------------

PCA_ALPHA_STD = 0.1  # section 4.1: alpha ~ N(0, 0.1)


def resize_size(image_size: int) -> int:
    """The side images are rescaled and center-cropped to before the random crop (256 for 227)."""
    return round(image_size * 256 / 227)


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


def pca_lighting(image: torch.Tensor, stats: dict, generator: torch.Generator) -> torch.Tensor:
    """Section 4.1: add eigvecs @ (alpha * eigvals) to every pixel, alpha ~ N(0, 0.1) per image, in
    [0, 1] units (a shift of a few grey levels: the illumination changes, the object does not)."""
    alpha = torch.randn(3, generator=generator) * PCA_ALPHA_STD
    shift = stats["eigenvectors"] @ (alpha * stats["eigenvalues"])
    return image + 255 * shift[:, None, None]


def train_transform(image: torch.Tensor, image_size: int, stats: dict, generator: torch.Generator) -> torch.Tensor:
    """Random crop, horizontal flip, PCA lighting, mean subtraction; image: (3, S, S) in [0, 255]."""
    side = image.shape[-1]
    top, left = (int(torch.randint(0, side - image_size + 1, (1,), generator=generator)) for _ in range(2))
    image = image[:, top : top + image_size, left : left + image_size]
    if torch.rand((), generator=generator) < 0.5:
        image = image.flip(-1)
    return normalize(pca_lighting(image, stats, generator), stats)


def eval_transform(image: torch.Tensor, image_size: int, stats: dict) -> torch.Tensor:
    """The center crop, normalized."""
    return normalize(TF.center_crop(image, [image_size]), stats)


def ten_crops(image: torch.Tensor, image_size: int, stats: dict) -> torch.Tensor:
    """(10, 3, s, s): the four corners and the center, and their horizontal flips (section 4.1)."""
    return normalize(torch.stack(TF.ten_crop(image, [image_size])), stats)


# ---------------------------------------------------------------------------------------------
# Datasets: each returns (image (3, S, S) float in [0, 255] at S = resize_size, label)
# ---------------------------------------------------------------------------------------------

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "stripes", "checkers", "bar", "crescent")


def _shape_mask(name: str, y: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of one shape on a grid of coordinates centered on it, in units of its radius."""
    angle = rng.uniform(0, math.pi)
    u, v = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
    r = np.hypot(x, y)
    if name == "disc":
        return r < 1
    if name == "square":
        return (abs(u) < 0.8) & (abs(v) < 0.8)
    if name == "triangle":
        return (v > -0.5) & (v < 1 - 1.7 * abs(u))
    if name == "cross":
        return ((abs(u) < 0.25) & (abs(v) < 1)) | ((abs(v) < 0.25) & (abs(u) < 1))
    if name == "ring":
        return (r < 1) & (r > 0.6)
    if name == "diamond":
        return abs(u) + abs(v) < 1
    if name == "stripes":
        return (r < 1) & (np.sin(u * 3 * math.pi) > 0)
    if name == "checkers":
        return (abs(u) < 0.9) & (abs(v) < 0.9) & ((np.floor(u * 2.2) + np.floor(v * 2.2)) % 2 == 0)
    if name == "bar":
        return (abs(u) < 1) & (abs(v) < 0.3)
    if name == "crescent":
        return (r < 1) & (np.hypot(x - 0.45 * math.cos(angle), y - 0.45 * math.sin(angle)) > 0.8)
    raise ValueError(f"unknown shape {name!r}")


def draw_shape_image(label: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """One (side, side, 3) uint8 image of shape SHAPES[label] on a textured background."""
    grid = np.arange(side, dtype=np.float32)
    y, x = np.meshgrid(grid, grid, indexing="ij")
    # Background: a colour with a gradient and pixel noise, so flat colour alone gives nothing away.
    base = rng.uniform(0, 1, 3)
    gradient = rng.uniform(-0.3, 0.3, 3)[None, None, :] * (x / side)[:, :, None]
    image = base[None, None, :] + gradient + rng.normal(0, 0.08, (side, side, 3))
    # The shape at a random position, scale and orientation.
    radius = rng.uniform(0.26, 0.42) * side
    cy, cx = rng.uniform(radius, side - radius, 2)
    mask = _shape_mask(SHAPES[label], (y - cy) / radius, (x - cx) / radius, rng)
    colour = (base + rng.uniform(0.35, 0.65, 3)) % 1.0  # far enough from the background to be seen
    image[mask] = colour
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


class ShapesDataset(Dataset):
    """The built-in dataset: images the package draws itself, deterministically from a seed.

    Ten classes of shapes (SHAPES) in random colours, positions, sizes and orientations, on textured
    backgrounds: telling them apart takes learning shape, since colour and place give nothing away. The
    train and val splits come from different seeds, so the held-out images are new ones.
    """

    def __init__(self, split: str, size: int, image_size: int, seed: int = 0):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.classes = list(SHAPES)
        self.side = resize_size(image_size)
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        labels = np.arange(size) % len(SHAPES)
        rng.shuffle(labels)
        images = np.stack([draw_shape_image(int(label), self.side, rng) for label in labels])
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
        self.labels = torch.from_numpy(labels).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float(), int(self.labels[index])


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolderDataset(Dataset):
    """An ImageFolder tree (root/<class>/<image>), each image rescaled so its shorter side is S and
    center-cropped to S x S (section 2), S = resize_size(image_size).

    An image that cannot be read is skipped with a warning naming the file: the next image in the
    folder takes its place, so one bad file does not stop a long run. A folder that is missing,
    empty or has no class subfolders stops the run with a message naming it.
    """

    def __init__(self, root: str, image_size: int):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data folder {root!r} does not exist")
        self.classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        if not self.classes:
            raise ValueError(f"data folder {root!r} has no class subfolders (expected {root}/<class>/<image>)")
        self.samples = [
            (os.path.join(root, name, file), label)
            for label, name in enumerate(self.classes)
            for file in sorted(os.listdir(os.path.join(root, name)))
            if file.lower().endswith(IMAGE_EXTENSIONS)
        ]
        if not self.samples:
            raise ValueError(f"data folder {root!r} has class subfolders but no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.side = resize_size(image_size)
        self.labels = torch.tensor([label for _, label in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str) -> torch.Tensor:
        with Image.open(path) as image:
            image = TF.pil_to_tensor(image.convert("RGB"))
        image = TF.resize(image, [self.side], antialias=True)  # shorter side -> S
        return TF.center_crop(image, [self.side]).float()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return self._load(path), label
            except (OSError, UnidentifiedImageError, ValueError) as error:
                warnings.warn(f"skipping unreadable image {path}: {error}", stacklevel=2)
        raise RuntimeError("no image in the dataset could be read")


# ---------------------------------------------------------------------------------------------
# What a training loop reads: the crops it trains and evaluates on, and the loaders
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
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
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


def load_datasets(
    root: str | None, image_size: int, train_size: int, val_size: int, seed: int
) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names), the raw images before augmentation: an ImageFolder tree's train/ and
    val/, or (root None) the built-in shapes of train_size and val_size images drawn from seed."""
    if root is None:
        train = ShapesDataset("train", train_size, image_size, seed=seed)
        val = ShapesDataset("val", val_size, image_size, seed=seed)
    else:
        train = ImageFolderDataset(os.path.join(root, "train"), image_size)
        val = ImageFolderDataset(os.path.join(root, "val"), image_size)
        if val.classes != train.classes:
            raise ValueError(f"{root}/val has classes {val.classes[:5]}... unlike train's {train.classes[:5]}...")
    return train, val, train.classes


class SkipFirst(Sampler):
    """A DistributedSampler's epoch minus the samples already trained on (for a mid-epoch resume)."""

    def __init__(self, sampler: DistributedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def make_loader(
    dataset: Dataset, sampler: Sampler, batch_size: int, workers: int | None, device: torch.device, seed: int
) -> DataLoader:
    """Batches of dataset in sampler's order for a loop on device; workers None: none on a CPU (its
    cores run the network), 8 beside a GPU."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers if workers is not None else (0 if device.type == "cpu" else 8),
        pin_memory=device.type == "cuda",
        drop_last=False,
        # Its own generator: a loader draws a seed for its workers each epoch, and drawing it from the
        # global one would shift the dropout seeds after a resume.
        generator=torch.Generator().manual_seed(seed),
    )


def estimate_statistics(
    dataset: Dataset, samples: int = 1000, seed: int = 0, standardize: bool = False
) -> dict[str, torch.Tensor]:
    """rgb_statistics over up to `samples` training images picked at random."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:samples]
    images = torch.stack([dataset[int(i)][0] for i in indices])
    return rgb_statistics(images, standardize)
