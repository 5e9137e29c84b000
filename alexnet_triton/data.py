"""Where images come from: the built-in dataset, ImageFolder trees and prepared stores, each giving
(image (3, S, S) float in [0, 255], label) at S = resize_size(image_size); and the loaders a training
loop reads them through, with the sampler that resumes an epoch part-way (SkipFirst). What the network
sees of them (crops, flips, lighting, normalisation) is augmentation.py's.

Every batch of a run has one of two sizes: the training batch and the evaluation batch. On a GPU the Triton
kernels tune and compile for the sizes they see, so a partial last batch would have them tune and compile
once more, for one step an epoch, at the end of the first epoch instead of in its first step. Training
drops its last partial batch (an epoch loses at most one, other images each epoch, since each epoch is
shuffled anew); evaluation pads its last batch up to the full size and leaves the padding's outputs out
(even_batch_size, pad_rows).

Sizes scale with the crop: the paper crops 227 out of 256, so an image_size of s crops s out of
round(s * 256 / 227).
"""

import math
import os
import warnings

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from alexnet_triton import augmentation, store


def resize_size(image_size: int) -> int:
    """The side images are rescaled and center-cropped to before the random crop (256 for 227)."""
    return round(image_size * 256 / 227)


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

    def __init__(self, split: str, size: int, image_size: int, seed: int = 0, side: int | None = None):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.classes = list(SHAPES)
        self.side = resize_size(image_size) if side is None else side
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


def list_image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, label)]) of an ImageFolder tree root/<class>/<image>, sorted; a folder that
    is missing, empty or has no class subfolders is refused with a message naming it."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise ValueError(f"data folder {root!r} has no class subfolders (expected {root}/<class>/<image>)")
    samples = [
        (os.path.join(root, name, file), label)
        for label, name in enumerate(classes)
        for file in sorted(os.listdir(os.path.join(root, name)))
        if file.lower().endswith(IMAGE_EXTENSIONS)
    ]
    if not samples:
        raise ValueError(f"data folder {root!r} has class subfolders but no images ({', '.join(IMAGE_EXTENSIONS)})")
    return classes, samples


def rescale_and_crop(image: Image.Image, side: int) -> torch.Tensor:
    """(3, side, side) uint8: the image as RGB (grayscale, CMYK, palette and alpha images converted),
    its shorter side rescaled to side, the centre kept (section 2)."""
    pixels = TF.pil_to_tensor(image.convert("RGB"))
    return TF.center_crop(TF.resize(pixels, [side], antialias=True), [side])


class ImageFolderDataset(Dataset):
    """An ImageFolder tree (root/<class>/<image>), each image rescaled so its shorter side is S and
    center-cropped to S x S (section 2), S = side or resize_size(image_size).

    An image that cannot be read is skipped with a warning naming the file: the next image in the
    folder takes its place, so one bad file does not stop a long run. A folder that is missing,
    empty or has no class subfolders stops the run with a message naming it.
    """

    def __init__(self, root: str, image_size: int, side: int | None = None):
        self.classes, self.samples = list_image_folder(root)
        self.side = resize_size(image_size) if side is None else side
        self.labels = torch.tensor([label for _, label in self.samples])

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str) -> torch.Tensor:
        with Image.open(path) as image:
            return rescale_and_crop(image, self.side).float()

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


def load_datasets(
    root: str | None, image_size: int, train_size: int, val_size: int, seed: int, resize: int | None = None
) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names), the raw images before augmentation, each resize x resize (default
    resize_size(image_size); a checkpoint gives the one it was trained with): a prepared store's splits (see
    store.py; the store's images rescaled as an image folder's files are), an ImageFolder tree's train/ and
    val/, or (root None) the built-in shapes of train_size and val_size images drawn from seed. A store whose
    images are smaller than resize is refused, naming the `prepare --side` that fits."""
    resize = resize_size(image_size) if resize is None else resize
    if not image_size <= resize:
        raise ValueError(f"the images ({resize}x{resize}) must be at least as large as --image-size {image_size}")
    if root is None:
        train = ShapesDataset("train", train_size, image_size, seed=seed, side=resize)
        val = ShapesDataset("val", val_size, image_size, seed=seed, side=resize)
    elif store.is_store(root):
        side = store.read_manifest(root)["side"]
        if side < resize:
            raise store.StoreError(
                f"the store {root} holds {side}x{side} images; --image-size {image_size} crops from {resize}x{resize} "
                f"ones (as from an image folder): prepare it again with `prepare --side {resize}` (or more)"
            )
        train, val = store.StoreDataset(root, "train", resize), store.StoreDataset(root, "val", resize)
    else:
        train = ImageFolderDataset(os.path.join(root, "train"), image_size, side=resize)
        val = ImageFolderDataset(os.path.join(root, "val"), image_size, side=resize)
        if val.classes != train.classes:
            raise ValueError(f"{root}/val has classes {val.classes[:5]}... unlike train's {train.classes[:5]}...")
    return train, val, train.classes


def image_source(dataset: Dataset) -> dict:
    """What a run's images were cut from, for its checkpoint: their side ("resize") and, for a prepared store,
    the side it holds ("store_side", else None)."""
    return {"resize": dataset.side, "store_side": getattr(dataset, "stored_side", None)}


class SkipFirst(Sampler):
    """A DistributedSampler's epoch minus the samples already trained on (for a mid-epoch resume)."""

    def __init__(self, sampler: DistributedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def steps_per_epoch(images: int, batch_size: int, world_size: int = 1) -> int:
    """Training steps in an epoch of `images` training images shared by world_size processes: whole batches
    of each process's share (a DistributedSampler's, the same on every process), the last partial batch
    dropped. ValueError, naming the sizes, when a process's share is smaller than one batch: an epoch would
    train no step at all."""
    share = math.ceil(images / world_size)
    if share < batch_size:
        where = f" ({share} per process for {world_size} processes)" if world_size > 1 else ""
        raise ValueError(
            f"the training set has {images} images{where}, fewer than one batch of --batch-size {batch_size}: "
            f"an epoch would train no step; use --batch-size {max(share, 1)} or less, or more training images"
        )
    return share // batch_size


def even_batch_size(images: int, largest: int) -> int:
    """The evaluation batch for `images` images: as few batches as batches of `largest` would take, their
    size evened out, so the last one (padded up to it, pad_rows) carries as little padding as it can;
    e.g. 1000 images at most 256 at a time: 4 batches of 250, none padded (256 would pad 24)."""
    if images < 1:
        return largest
    return math.ceil(images / math.ceil(images / largest))


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """tensor with zero rows appended along dimension 0 up to `rows` (tensor itself when it has as many),
    in its memory format: a partial batch made full-size. The network treats each image on its own in
    eval mode (no batch statistics, dropout off), so the real rows' outputs do not depend on the padding."""
    if len(tensor) >= rows:
        return tensor
    # Dimensions in tensor's memory order (outermost first), so that the padded batch has the full batches' strides
    # (channels_last, and ten crops' 5-D views of it too): a CUDA graph replays only for the strides it captured.
    order = sorted(range(tensor.dim()), key=lambda dim: (dim != 0, -tensor.stride(dim)))
    shape = (rows, *tensor.shape[1:])
    padded = tensor.new_zeros([shape[dim] for dim in order]).permute([order.index(dim) for dim in range(tensor.dim())])
    padded[: len(tensor)] = tensor
    return padded


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    workers: int | None,
    device: torch.device,
    seed: int,
    *,
    drop_last: bool = False,
) -> DataLoader:
    """Batches of dataset in sampler's order for a loop on device; workers None: none on a CPU (its
    cores run the network), 8 beside a GPU. drop_last: leave out the last partial batch, as training does
    (steps_per_epoch); evaluation keeps it and pads it (pad_rows)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers if workers is not None else (0 if device.type == "cpu" else 8),
        pin_memory=device.type == "cuda",
        drop_last=drop_last,
        # Its own generator: a loader draws a seed for its workers each epoch, and drawing it from the
        # global one would shift the dropout seeds after a resume.
        generator=torch.Generator().manual_seed(seed),
    )


def training_statistics(root: str | None, train: Dataset, seed: int, standardize: bool) -> dict[str, torch.Tensor]:
    """A prepared store's statistics, computed over every training image when it was prepared; else
    estimated from a sample of the training set."""
    if root is not None and store.is_store(root):
        return store.statistics(root, standardize)
    return estimate_statistics(train, seed=seed, standardize=standardize)


def estimate_statistics(
    dataset: Dataset, samples: int = 1000, seed: int = 0, standardize: bool = False
) -> dict[str, torch.Tensor]:
    """rgb_statistics over up to `samples` training images picked at random."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(dataset), generator=generator)[:samples]
    images = torch.stack([dataset[int(i)][0] for i in indices])
    return augmentation.rgb_statistics(images, standardize)
