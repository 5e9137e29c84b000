"""How a batch reaches the network: the views the loaders read, and what happens once a batch is on the
device. Two ways, the same numbers (augmentation.py draws them alike):

- on the CPU (any dataset): loader workers cut, flip, light and normalize each image; the device gets
  float crops.
- on the GPU (a prepared store on CUDA): workers only slice the store's memory map and draw the random
  numbers; the device gets uint8 images (4x fewer bytes over PCIe) and one fused kernel makes the crops,
  in the training dtype and memory format.
"""

import torch
from torch.utils.data import Dataset

from alexnet_triton import augmentation, store
from alexnet_triton.runtime import to_device


class CpuPipeline:
    """Augmentation in the loader workers (augmentation.TrainingCrops / EvaluationCrops)."""

    on_device = False

    def __init__(self, train: Dataset, val: Dataset, image_size: int, stats: dict, seed: int, ten_crop: bool = False):
        self.training = augmentation.TrainingCrops(train, image_size, stats, seed)
        self.evaluation = augmentation.EvaluationCrops(val, image_size, stats, ten_crop)

    def training_batch(self, batch, device: torch.device, channels_last: bool):
        """(images (N, 3, s, s), labels) on device."""
        return to_device(*batch, device, channels_last)

    def evaluation_batch(self, batch, device: torch.device, channels_last: bool):
        """(images (N, 3, s, s), or (N, 10, 3, s, s) for ten crops, labels) on device."""
        return to_device(*batch, device, channels_last)


class GpuPipeline:
    """Workers ship a store's uint8 images and the draws; augmentation.crop_on_device rescales them to the
    datasets' side, as the CPU path's StoreDataset does, and makes the crops."""

    on_device = True

    def __init__(self, train: store.StoreDataset, val: store.StoreDataset, image_size: int, stats: dict, seed: int,
                 ten_crop: bool = False):  # fmt: skip
        if train.side != val.side:
            raise ValueError(f"the training images are {train.side} pixels wide, the held-out ones {val.side}")
        self.training = augmentation.TrainingDraws(train.store, image_size, stats, seed, train.side)
        self.evaluation = augmentation.StoredImages(val.store)
        self.image_size, self.stats, self.ten_crop, self.side = image_size, stats, ten_crop, val.side
        self._stats_on: dict[torch.device, dict] = {}

    def _crops(self, images, boxes, device, channels_last, shift=None):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if images.device not in self._stats_on:  # copied once: a copy from pageable memory per batch would sync
            self._stats_on[images.device] = {key: self.stats[key].to(images.device, torch.float32)
                                             for key in ("mean", "scale")}  # fmt: skip
        return augmentation.crop_on_device(
            images, boxes, self._stats_on[images.device], self.image_size, shift=shift, resize=self.side,
            memory_format=memory_format,
        )  # fmt: skip

    def training_batch(self, batch, device: torch.device, channels_last: bool):
        images, draws, shift, labels = (t.to(device, non_blocking=True) for t in batch)
        boxes = augmentation.training_boxes(draws)
        return self._crops(images, boxes, device, channels_last, shift), labels

    def evaluation_batch(self, batch, device: torch.device, channels_last: bool):
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        count = images.shape[0]
        boxes = augmentation.evaluation_boxes(count, self.side, self.image_size, self.ten_crop, device)
        crops = self._crops(images, boxes, device, channels_last)
        return (crops.unflatten(0, (count, 10)) if self.ten_crop else crops), labels


def choose(train: Dataset, val: Dataset, image_size: int, stats: dict, seed: int, device: torch.device,
           ten_crop: bool = False, augment: str = "auto"):  # fmt: skip
    """The GPU pipeline for a store on CUDA (augment "auto" or "gpu"), else the CPU one."""
    from_store = isinstance(train, store.StoreDataset) and isinstance(val, store.StoreDataset)
    if augment == "gpu" and not from_store:
        raise ValueError("--augment gpu needs a prepared store as --data (python -m alexnet_triton.prepare)")
    if augment == "gpu" or (augment == "auto" and from_store and device.type == "cuda"):
        return GpuPipeline(train, val, image_size, stats, seed, ten_crop)
    return CpuPipeline(train, val, image_size, stats, seed, ten_crop)
