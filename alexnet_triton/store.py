"""A prepared store: every image of an ImageFolder tree rescaled once to S x S (the paper's 256 x 256,
section 2) and kept in one memory-mapped uint8 array per split, so that training reads an image by
slicing memory instead of decoding a JPEG every epoch.

    STORE/
      manifest.json         written last, atomically: a store without it is not complete
      plan.json             what preparation will write (first thing written; lets it resume)
      train/images.npy      (N, S, S, 3) uint8, HWC: a crop is a contiguous run of rows
      train/labels.npy      (N,) int64 class index
      train/status.npy      (N,) uint8: TODO, DONE or UNREADABLE (skipped images keep their slot)
      train/moments.npy     (N, 13) float64 per image: pixel count, channel sums, channel products
      val/...               the same for the held-out images

Arrays are .npy files (numpy's own format, memory-mapped with ``np.load(mmap_mode="r")``); the
manifest holds the class names, the counts, the files that could not be read, and the training set's
per-channel mean and standard deviation and its RGB covariance eigen-decomposition (for "fancy PCA"),
computed over every training image while preparing. ``python -m alexnet_triton.prepare`` writes it.
"""

import json
import os

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

MANIFEST = "manifest.json"
PLAN = "plan.json"
FORMAT = "alexnet_triton.store"
VERSION = 1
SPLITS = ("train", "val")

# status.npy values
TODO, DONE, UNREADABLE = 0, 1, 2

# moments.npy columns, for pixel values scaled to [0, 1]: count, sum per channel, sum of products
# of each channel pair (3 x 3, row-major). Enough to combine into a mean and covariance exactly.
MOMENT_COLUMNS = 1 + 3 + 9


class StoreError(ValueError):
    """A store that cannot be used: incomplete, truncated or inconsistent. The message names the file."""


def is_store(path: str) -> bool:
    """Whether path is a store folder (complete or not): it holds a plan or a manifest."""
    return os.path.isfile(os.path.join(path, PLAN)) or os.path.isfile(os.path.join(path, MANIFEST))


def split_file(root: str, split: str, name: str) -> str:
    return os.path.join(root, split, f"{name}.npy")


def read_manifest(root: str) -> dict:
    """The manifest of a complete store; StoreError naming the file otherwise."""
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise StoreError(
            f"{root!r} is not a complete prepared store: {path} is missing (preparation did not finish; "
            "run the same `python -m alexnet_triton.prepare` command again to resume it)"
        )
    try:
        with open(path) as file:
            manifest = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise StoreError(f"store manifest {path} cannot be read: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not an alexnet_triton store manifest")
    if manifest.get("version") != VERSION:
        raise StoreError(f"{path} has store version {manifest.get('version')!r}; this version reads {VERSION}")
    return manifest


def _open_array(path: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """np.load(mmap_mode="r") after checking the header and the file's length against what the manifest says."""
    if not os.path.isfile(path):
        raise StoreError(f"store file {path} is missing")
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:  # numpy refuses a file shorter than its header promises
        raise StoreError(f"store file {path} is truncated or not a .npy array: {error}") from None
    if array.shape != shape or array.dtype != dtype:
        raise StoreError(
            f"store file {path} holds {array.dtype}{list(array.shape)}, the manifest says {dtype}{list(shape)}"
        )
    return array


class StoreSplit:
    """One split of a complete store, checked against its manifest: its arrays (memory-mapped) and the
    indices of the images that were read."""

    def __init__(self, root: str, split: str):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        manifest = read_manifest(root)
        entry = manifest["splits"][split]
        side, count = manifest["side"], entry["images"]
        self.root, self.split, self.side = root, split, side
        self.classes: list[str] = manifest["classes"]
        self.images_path = split_file(root, split, "images")
        # Opened to check; reopened lazily in each loader worker (a memory map does not pickle cheaply).
        _open_array(self.images_path, (count, side, side, 3), np.dtype(np.uint8))
        labels = np.array(_open_array(split_file(root, split, "labels"), (count,), np.dtype(np.int64)))
        status = np.array(_open_array(split_file(root, split, "status"), (count,), np.dtype(np.uint8)))
        status_path = split_file(root, split, "status")
        if (status == TODO).any() or not np.isin(status, (DONE, UNREADABLE)).all():
            raise StoreError(f"store file {status_path} marks images as not prepared; the store is inconsistent")
        self.indices = np.flatnonzero(status == DONE)
        if len(self.indices) != entry["usable"]:
            raise StoreError(
                f"store file {status_path} has {len(self.indices)} prepared images, the manifest says {entry['usable']}"
            )
        if len(self.indices) == 0:
            raise StoreError(f"the store's {split} split has no usable images ({status_path})")
        self.labels = torch.from_numpy(labels[self.indices])
        if self.labels.min() < 0 or self.labels.max() >= len(self.classes):
            raise StoreError(f"store file {split_file(root, split, 'labels')} holds labels outside the class list")
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> torch.Tensor:
        """The index-th usable image: (S, S, 3) uint8, a copy out of the memory map."""
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        return torch.from_numpy(np.array(self._images[self.indices[index]]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}


class StoreDataset(Dataset):
    """A split of a prepared store as the other datasets are: (image (3, R, R) float in [0, 255], label), the
    stored S x S image rescaled to R x R (resize; None: R = S) as the folder path rescales a file (PyTorch's
    antialiased resize of uint8 pixels), so that a 256 store serves any crop that fits the folder path's images.
    For the CPU transforms; the GPU path reads the uint8 S x S images directly (``StoreSplit.image``) and
    rescales them in its crop kernel, rounding after each pass as PyTorch's uint8 resize does on x86 CPUs with AVX2
    (elsewhere PyTorch resizes uint8 through float and rounds once: a grey level apart on more pixels)."""

    def __init__(self, root: str, split: str, resize: int | None = None):
        self.store = StoreSplit(root, split)
        self.classes, self.labels, self.stored_side = self.store.classes, self.store.labels, self.store.side
        self.side = self.stored_side if resize is None else resize
        if not 1 <= self.side <= self.stored_side:
            raise StoreError(
                f"the store {root!r} holds {self.stored_side}x{self.stored_side} images, too small to serve "
                f"{self.side}x{self.side} ones: prepare the data again with --side {self.side} or more"
            )

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.store.image(index).permute(2, 0, 1)
        if self.side != self.stored_side:
            image = TF.resize(image, [self.side], antialias=True)
        return image.float(), int(self.labels[index])


def statistics(root: str, standardize: bool = False) -> dict[str, torch.Tensor]:
    """The training set's statistics in the form augmentation.normalize and augmentation.pca_shift take: mean (0-255),
    scale (1, or 1 / std with standardize), eigenvalues and eigenvectors of the [0, 1] RGB covariance."""
    stats = read_manifest(root)["statistics"]
    std = torch.tensor(stats["std"], dtype=torch.float64)
    return {
        "mean": torch.tensor(stats["mean"], dtype=torch.float32),
        "scale": (1 / std.clamp_min(1e-6) if standardize else torch.ones(3, dtype=torch.float64)).float(),
        "eigenvalues": torch.tensor(stats["eigenvalues"], dtype=torch.float32),
        "eigenvectors": torch.tensor(stats["eigenvectors"], dtype=torch.float32),
    }
