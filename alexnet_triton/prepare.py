"""Prepare an ImageFolder tree for training: every image rescaled once, as the paper did (section 2).

    python -m alexnet_triton.prepare --data ~/imagenet --out ~/imagenet-256     # DIR/train/<class>/*, DIR/val/<class>/*
    python -m alexnet_triton.train --data ~/imagenet-256                        # then train from the store

Each image's shorter side is rescaled to 256 and the centre 256x256 is kept (what the trainer's ImageFolder
path does every epoch), then stored as uint8 in one memory-mapped array per split (see store.py), with
the training set's per-channel mean, standard deviation and RGB covariance eigen-decomposition computed
over every training image. Cost: 196 KB per image (256 x 256 x 3 bytes), about 250 GB for ImageNet's
1.28 M training images; the decode runs at about the speed of one epoch of the ImageFolder path.

Ctrl-C or a crash, then the same command, continues where it stopped: images are written and flushed
before they are marked done, and the manifest that makes the store complete is written last, atomically.
Unreadable images are skipped with a warning naming each and listed in the manifest; grayscale, CMYK
and alpha images become RGB.
"""

import argparse
import json
import multiprocessing
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from alexnet_triton import data, durable, store
from alexnet_triton.cli_help import HelpWithDefaults

CHUNK = 32  # images per worker task: large enough to amortise the hand-off, small enough to resume finely


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_triton.prepare",
        description=__doc__.split("\n\n")[0],
        epilog=(
            "Cost: side x side x 3 bytes per image, 196 KB at 256: about 250 GB for ImageNet's 1.28 M training "
            "images. Interrupt freely: the same command resumes."
        ),
        formatter_class=HelpWithDefaults,
    )
    parser.add_argument("--data", required=True, help="ImageFolder root with train/<class>/* and val/<class>/*")
    parser.add_argument("--out", required=True, help="the store folder to write (created; resumed if it exists)")
    parser.add_argument("--side", type=int, default=256, help="side of the stored images (the paper: 256)")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (0: decode in this process)"
    )
    args = parser.parse_args(argv)
    if args.side < 1:
        parser.error(f"--side must be positive, got {args.side}")
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    return args


# ---------------------------------------------------------------------------------------------
# One image: decode, rescale, centre-crop, moments
# ---------------------------------------------------------------------------------------------


def load_image(path: str, side: int) -> np.ndarray:
    """(side, side, 3) uint8: the image as RGB, shorter side rescaled to side, centre crop."""
    with Image.open(path) as image:
        return data.rescale_and_crop(image, side).permute(1, 2, 0).numpy()


def moments(image: np.ndarray) -> np.ndarray:
    """store.MOMENT_COLUMNS values: pixel count, per-channel sums, per-channel-pair products, in [0, 1] units."""
    pixels = image.reshape(-1, 3).astype(np.float64) / 255
    return np.concatenate([[len(pixels)], pixels.sum(0), (pixels.T @ pixels).ravel()])


def decode_chunk(task: tuple[int, list[tuple[int, str]]]) -> list[tuple[int, np.ndarray | None, np.ndarray | str]]:
    """[(slot, image, moments)] for images that load, [(slot, None, error message)] for those that do not."""
    side, items = task
    results = []
    for slot, path in items:
        try:
            image = load_image(path, side)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:  # PIL raises all of these
            results.append((slot, None, f"{type(error).__name__}: {error}"))
        else:
            results.append((slot, image, moments(image)))
    return results


def _quiet_worker() -> None:
    torch.set_num_threads(1)  # one decode per process; threads would only contend for the same cores


# ---------------------------------------------------------------------------------------------
# The plan: what to write, fixed on the first run so that a rerun resumes the same work
# ---------------------------------------------------------------------------------------------


def make_plan(root: str, side: int) -> dict:
    splits, classes = {}, None
    for split in store.SPLITS:
        split_classes, samples = data.list_image_folder(os.path.join(root, split))
        if classes is not None and split_classes != classes:
            raise ValueError(f"{root}/{split} has classes {split_classes[:5]}... unlike train's {classes[:5]}...")
        classes = split_classes
        splits[split] = {
            "files": [os.path.relpath(path, root) for path, _ in samples],
            "labels": [label for _, label in samples],
        }
    return {"format": store.FORMAT, "version": store.VERSION, "side": side, "classes": classes, "splits": splits}


def start_or_resume(out: str, plan: dict) -> None:
    """Create the arrays and write the plan, or check that an existing plan is this one."""
    plan_path = os.path.join(out, store.PLAN)
    if os.path.isfile(plan_path):
        with open(plan_path) as file:
            existing = json.load(file)
        if existing != plan:
            raise ValueError(
                f"{out} holds a preparation of different images or settings ({plan_path}); "
                "give another --out, or delete that folder to start again"
            )
        return
    side = plan["side"]
    for split, entry in plan["splits"].items():
        count = len(entry["files"])
        os.makedirs(os.path.join(out, split), exist_ok=True)
        arrays = {
            "images": ((count, side, side, 3), np.uint8),  # sparse on disk until written
            "labels": ((count,), np.int64),
            "moments": ((count, store.MOMENT_COLUMNS), np.float64),
            "status": ((count,), np.uint8),  # all TODO
        }
        for name, (shape, dtype) in arrays.items():
            array = np.lib.format.open_memmap(store.split_file(out, split, name), "w+", dtype, shape)
            if name == "labels":
                array[:] = entry["labels"]
            array.flush()
            del array
    # Written last: a plan on disk means every array above exists whole.
    durable.write_atomically(plan_path, json.dumps(plan).encode())


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class SplitWriter:
    """The open arrays of one split. An image and its moments are flushed before it is marked done."""

    def __init__(self, out: str, split: str):
        self.images, self.moments, self.status = (
            np.load(store.split_file(out, split, name), mmap_mode="r+") for name in ("images", "moments", "status")
        )

    def write(self, results) -> list[tuple[int, str]]:
        """Store a chunk's results; returns [(slot, error)] of the unreadable ones."""
        failures = []
        for slot, image, value in results:
            if image is None:
                failures.append((slot, value))
            else:
                self.images[slot], self.moments[slot] = image, value
        self.images.flush()
        self.moments.flush()
        for slot, image, _ in results:
            self.status[slot] = store.DONE if image is not None else store.UNREADABLE
        self.status.flush()
        return failures


def prepare_split(root: str, out: str, split: str, plan: dict, workers: int) -> None:
    files = plan["splits"][split]["files"]
    writer = SplitWriter(out, split)
    todo = np.flatnonzero(writer.status == store.TODO)
    tasks = [
        (plan["side"], [(int(slot), os.path.join(root, files[slot])) for slot in todo[i : i + CHUNK]])
        for i in range(0, len(todo), CHUNK)
    ]
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc=split, unit="img", dynamic_ncols=True)
    pool = multiprocessing.Pool(workers, initializer=_quiet_worker) if workers > 0 else None
    try:
        chunks = pool.imap_unordered(decode_chunk, tasks) if pool else map(decode_chunk, tasks)
        for results in chunks:
            for slot, error in writer.write(results):
                tqdm.write(f"warning: skipping unreadable image {os.path.join(root, files[slot])}: {error}")
            bar.update(len(results))
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()  # on Ctrl-C: what was written and flushed stays done
            pool.join()


def statistics(out: str) -> dict[str, list]:
    """Mean and std (0-255) and the eigen-decomposition of the [0, 1] RGB covariance of every training pixel."""
    status = np.load(store.split_file(out, "train", "status"))
    columns = np.load(store.split_file(out, "train", "moments"))[status == store.DONE].sum(0)
    if columns[0] < 2:
        raise ValueError(f"no training image in {out} could be read, so there are no statistics to compute")
    count, sums, products = columns[0], columns[1:4], columns[4:].reshape(3, 3)
    mean = sums / count
    covariance = (products - count * np.outer(mean, mean)) / (count - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return {
        "mean": (255 * mean).tolist(),
        "std": (255 * np.sqrt(np.diag(covariance))).tolist(),
        "eigenvalues": np.clip(eigenvalues, 0, None).tolist(),
        "eigenvectors": eigenvectors.tolist(),
    }


def finish(root: str, out: str, plan: dict, seconds: float, workers: int) -> dict:
    splits = {}
    for split, entry in plan["splits"].items():
        status = np.load(store.split_file(out, split, "status"))
        unreadable = [os.path.join(root, entry["files"][slot]) for slot in np.flatnonzero(status == store.UNREADABLE)]
        splits[split] = {"images": len(status), "usable": int((status == store.DONE).sum()), "unreadable": unreadable}
    manifest = {
        "format": store.FORMAT,
        "version": store.VERSION,
        "side": plan["side"],
        "classes": plan["classes"],
        "splits": splits,
        "statistics": statistics(out),
        "source": os.path.abspath(root),
        "last_run": {"seconds": round(seconds, 1), "workers": workers},
    }
    durable.write_atomically(os.path.join(out, store.MANIFEST), json.dumps(manifest, indent=1).encode())
    return manifest


def prepare(root: str, out: str, side: int = 256, workers: int = 0) -> dict:
    """Prepare (or resume preparing) the store; returns its manifest."""
    if os.path.isfile(os.path.join(out, store.MANIFEST)):
        manifest = store.read_manifest(out)
        if manifest["side"] != side:
            raise ValueError(
                f"{out} is a complete store of {manifest['side']}-pixel images, not {side}; use another --out"
            )
        return manifest
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data folder {root!r} does not exist")
    plan = make_plan(root, side)
    start_or_resume(out, plan)
    start = time.perf_counter()
    for split in store.SPLITS:
        prepare_split(root, out, split, plan, workers)
    return finish(root, out, plan, time.perf_counter() - start, workers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        manifest = prepare(args.data, args.out, args.side, args.workers)
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to continue where it stopped ({args.out})", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, store.StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{split} {entry['usable']}" for split, entry in manifest["splits"].items())
    skipped = sum(len(entry["unreadable"]) for entry in manifest["splits"].values())
    classes = len(manifest["classes"])
    print(f"store {args.out} is complete: {counts} images, {skipped} unreadable skipped, {classes} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
