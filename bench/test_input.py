"""The input pipeline on ImageNet-like JPEGs (500x375, quality 90) that the benchmark writes itself: the CPU
cost of one training image, per core, by each path a trainer can take, and of preparing a store.

- imagefolder: today's --data DIR path (decode, rescale to 256, crop, flip, lighting, normalize, every epoch)
- torchvision: torchvision's reference transforms (RandomResizedCrop, flip, ToTensor, Normalize)
- store, cpu transforms: a prepared store, augmented in the loader worker (what a CPU run does)
- store, gpu kernel: a prepared store, as the loader worker serves the GPU path: slice the memory map, draw
  the crop, flip and lighting, collate uint8 batches; the crops are then one kernel on the GPU (timed below
  where a GPU runs the harness)
- prepare: python -m alexnet_triton.prepare, per image (done once)

Each runs in one process with one torch thread, so its images/s is per CPU core.
"""

import functools
import os
import shutil

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import v2

from alexnet_triton import augmentation, data, prepare, store
from bench.timing import roofline, run_benchmark

CLASSES = ("a", "b")
IMAGE_SIZE = 227
SIDE = 256
BATCH = 32


def imagenet_like(rng: np.random.Generator) -> Image.Image:
    """500x375: a smooth colour field with noise, about what a photo costs JPEG to encode and decode."""
    field = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(field).resize((500, 375), Image.BICUBIC), dtype=np.int16)
    noisy = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory, pytestconfig) -> str:
    count = pytestconfig.getoption("--bench-input-images")
    root = tmp_path_factory.mktemp("input") / "images"
    rng = np.random.default_rng(0)
    for split, per_class in (("train", count // 2), ("val", 2)):
        for name in CLASSES:
            os.makedirs(root / split / name)
            for i in range(per_class):
                imagenet_like(rng).save(root / split / name / f"{i:05d}.jpg", quality=90)
    return str(root)


@pytest.fixture(scope="module")
def prepared(jpegs) -> str:
    out = os.path.join(os.path.dirname(jpegs), "store")
    prepare.prepare(jpegs, out, side=SIDE, workers=0)
    return out


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def every_image(view) -> None:
    for index in range(len(view)):
        view[index]


def every_batch(view) -> None:
    for start in range(0, len(view), BATCH):
        default_collate([view[index] for index in range(start, min(start + BATCH, len(view)))])


def record(benchmark, path: str, images: int, seconds: float | None) -> None:
    benchmark.extra_info.update(kind="input", op="input", layer=path, direction="training", dtype="uint8",
                                memory_format="-", implementation="ours", images=images)  # fmt: skip
    if seconds is not None:
        benchmark.extra_info.update(median_s=seconds, images_per_s_per_core=images / seconds)


def time_cpu(benchmark, call, images: int) -> float | None:
    """Median seconds of call() (a pass over `images` images); None when benchmarks are disabled."""
    if not benchmark.enabled:
        call()
        return None
    benchmark.pedantic(call, rounds=3, warmup_rounds=1)
    return benchmark.stats.stats.median


def make_view(path: str, jpegs: str, prepared: str):
    folder = os.path.join(jpegs, "train")
    if path == "imagefolder":
        dataset = data.ImageFolderDataset(folder, IMAGE_SIZE)
        return augmentation.TrainingCrops(dataset, IMAGE_SIZE, data.estimate_statistics(dataset, 8), seed=0)
    if path == "torchvision":
        transform = v2.Compose([
            v2.PILToTensor(), v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])  # fmt: skip
        return torchvision.datasets.ImageFolder(folder, transform=transform)
    stats = store.statistics(prepared)
    if path == "store, cpu transforms":
        return augmentation.TrainingCrops(store.StoreDataset(prepared, "train"), IMAGE_SIZE, stats, seed=0)
    return augmentation.TrainingDraws(store.StoreSplit(prepared, "train"), IMAGE_SIZE, stats, seed=0, resize=SIDE)


@pytest.mark.parametrize("path", ["imagefolder", "torchvision", "store, cpu transforms", "store, gpu kernel"])
def test_training_image_cpu_cost(benchmark, one_thread, jpegs, prepared, path):
    view = make_view(path, jpegs, prepared)
    benchmark.group = "input pipeline: CPU cost of a training image, one core"
    record(benchmark, path, len(view), time_cpu(benchmark, functools.partial(every_batch, view), len(view)))


def test_prepare_cost(benchmark, one_thread, jpegs, tmp_path):
    images = len(data.list_image_folder(os.path.join(jpegs, "train"))[1]) + 2 * len(CLASSES)
    out = tmp_path / "store"

    def prepare_once():
        shutil.rmtree(out, ignore_errors=True)
        prepare.prepare(jpegs, str(out), side=SIDE, workers=0)

    benchmark.group = "input pipeline: prepare, one core"
    record(benchmark, "prepare (once per image)", images, time_cpu(benchmark, prepare_once, images))


def test_augmentation_kernel(benchmark, settings, peaks, prepared, dtype_name, dtype, memory_format):
    """The GPU side of "store, gpu kernel": one batch of training crops from uint8 images."""
    if not settings.on_gpu and dtype_name != "float32":
        pytest.skip("Triton's CPU interpreter does not do half-precision arithmetic")
    split = store.StoreSplit(prepared, "train")
    count = settings.batch if settings.on_gpu else 2
    size = IMAGE_SIZE if settings.on_gpu else 67
    images = torch.stack([split.image(i % len(split)) for i in range(count)]).to(settings.device)
    generator = torch.Generator().manual_seed(0)
    stats = store.statistics(prepared)
    draws = [augmentation.draw_training_crop(SIDE, size, stats, generator) for _ in range(count)]
    boxes = augmentation.training_boxes(torch.tensor([[t, left, int(f)] for t, left, f, _ in draws])).to(images.device)
    shift = torch.stack([s for *_, s in draws]).to(images.device)
    layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    crop = functools.partial(augmentation.crop_on_device, images, boxes, stats, size, shift=shift, dtype=dtype,
                             memory_format=layout)  # fmt: skip
    moved = count * 3 * size * size * (1 + torch.finfo(dtype).bits // 8)  # uint8 read, crop written
    benchmark.group = f"input pipeline: augmentation kernel {dtype_name} {memory_format}"
    benchmark.extra_info.update(kind="input", op="input", layer="gpu kernel (one batch)", direction="training",
                                dtype=dtype_name, memory_format=memory_format, implementation="ours", images=count,
                                bytes=moved)  # fmt: skip
    medians = run_benchmark(benchmark, settings, crop)
    if medians is not None:
        benchmark.extra_info.update(
            roofline(medians, 0, moved, peaks, dtype_name), images_per_s=count / medians["median_s"]
        )
