"""python -m alexnet_triton.prepare: an ImageFolder tree into a store, resumable, skipping what it cannot read."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from helpers import reference_backend_env
from image_tree import CLASSES, write_tree
from PIL import Image

from alexnet_triton import augmentation, data, prepare, store

SIDE = 16


def expected_image(path, side: int = SIDE) -> torch.Tensor:
    """(side, side, 3) uint8, written out here independently of the package: RGB, shorter side to side, centre."""
    with Image.open(path) as image:
        pixels = TF.pil_to_tensor(image.convert("RGB"))
    return TF.center_crop(TF.resize(pixels, [side], antialias=True), [side]).permute(1, 2, 0)


def arrays(root) -> dict[str, np.ndarray]:
    return {
        f"{split}/{name}": np.load(store.split_file(root, split, name))
        for split in store.SPLITS
        for name in ("images", "labels", "status", "moments")
    }


def manifest_without_timing(root) -> dict:
    manifest = store.read_manifest(root)
    del manifest["last_run"]
    return manifest


def strip_timing(manifest: dict) -> dict:
    return {key: value for key, value in manifest.items() if key != "last_run"}


def all_images(root) -> list[str]:
    return sorted(path for split in store.SPLITS for path, _ in data.list_image_folder(os.path.join(root, split))[1])


def images_to_do(root, out) -> list[str]:
    """The paths of the images a store's status arrays still mark to do, sorted."""
    plan = json.loads((out / store.PLAN).read_text())
    return sorted(
        os.path.join(root, plan["splits"][split]["files"][slot])
        for split in store.SPLITS
        for slot in np.flatnonzero(np.load(store.split_file(out, split, "status")) == store.TODO)
    )


@contextlib.contextmanager
def images_decoded(monkeypatch):
    """The paths prepare decodes while the block runs (in this process: workers=0)."""
    load_image, decoded = prepare.load_image, []

    def counting(path, side):
        decoded.append(path)
        return load_image(path, side)

    monkeypatch.setattr(prepare, "load_image", counting)
    try:
        yield decoded
    finally:
        monkeypatch.setattr(prepare, "load_image", load_image)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    awkward = write_tree(root)
    return root, awkward


def test_store_holds_every_readable_image_rescaled_with_its_label(tree, tmp_path, capsys):
    root, awkward = tree
    out = tmp_path / "store"
    manifest = prepare.prepare(str(root), str(out), side=SIDE, workers=0)
    assert f"skipping unreadable image {awkward['corrupt']}" in capsys.readouterr().out
    assert manifest["classes"] == list(CLASSES)
    assert manifest["splits"]["train"]["unreadable"] == [awkward["corrupt"]]
    assert manifest["splits"]["train"]["usable"] == 2 * 5 + 3 and manifest["splits"]["val"]["usable"] == 4
    for split in store.SPLITS:
        _, samples = data.list_image_folder(os.path.join(root, split))
        readable = [(path, label) for path, label in samples if path != awkward["corrupt"]]
        dataset = store.StoreDataset(str(out), split)
        assert len(dataset) == len(readable)
        for i, (path, label) in enumerate(readable):
            image, stored_label = dataset[i]
            assert stored_label == label
            assert image.dtype == torch.float32 and image.shape == (3, SIDE, SIDE)
            assert torch.equal(image, expected_image(path).permute(2, 0, 1).float()), path


def test_grayscale_cmyk_and_alpha_images_become_rgb(tree, tmp_path):
    root, awkward = tree
    out = tmp_path / "store"
    prepare.prepare(str(root), str(out), side=SIDE, workers=0)
    split = store.StoreSplit(str(out), "train")
    _, samples = data.list_image_folder(os.path.join(root, "train"))
    slot_of = {path: slot for slot, (path, _) in enumerate(samples)}
    usable_index = {int(slot): i for i, slot in enumerate(split.indices)}
    gray = split.image(usable_index[slot_of[awkward["gray"]]])
    assert torch.equal(gray[..., 0], gray[..., 1]) and torch.equal(gray[..., 1], gray[..., 2])
    for kind in ("cmyk", "alpha"):
        stored = split.image(usable_index[slot_of[awkward[kind]]])
        assert stored.shape == (SIDE, SIDE, 3)
        assert torch.equal(stored, expected_image(awkward[kind])), kind


def test_statistics_cover_every_training_pixel(tree, tmp_path):
    root, _ = tree
    out = tmp_path / "store"
    prepare.prepare(str(root), str(out), side=SIDE, workers=0)
    dataset = store.StoreDataset(str(out), "train")
    every_image = torch.stack([dataset[i][0] for i in range(len(dataset))])
    for standardize in (False, True):
        expected = augmentation.rgb_statistics(every_image, standardize=standardize)
        got = store.statistics(str(out), standardize=standardize)
        for key in ("mean", "scale", "eigenvalues"):
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
        # Eigenvectors are defined up to sign.
        torch.testing.assert_close(
            got["eigenvectors"].abs(), expected["eigenvectors"].abs(), rtol=1e-4, atol=1e-5, msg="eigenvectors"
        )


def test_interrupted_then_rerun_gives_the_store_of_an_uninterrupted_run(tree, tmp_path, monkeypatch):
    root, _ = tree
    whole, part = tmp_path / "whole", tmp_path / "part"
    prepare.prepare(str(root), str(whole), side=SIDE, workers=0)
    monkeypatch.setattr(prepare, "CHUNK", 4)
    load_image, calls = prepare.load_image, []

    def interrupted_after_nine(path, side):
        calls.append(path)
        if len(calls) > 9:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third chunk
        return load_image(path, side)

    monkeypatch.setattr(prepare, "load_image", interrupted_after_nine)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(str(root), str(part), side=SIDE, workers=0)
    assert not (part / store.MANIFEST).exists()
    with pytest.raises(store.StoreError, match="not a complete prepared store.*manifest.json"):
        store.StoreSplit(str(part), "train")
    status = np.load(store.split_file(part, "train", "status"))
    assert (status != store.TODO).sum() == 8, "two whole chunks were done before the interruption"

    monkeypatch.setattr(prepare, "load_image", load_image)
    todo = images_to_do(root, part)
    assert len(todo) == len(all_images(root)) - 8
    with images_decoded(monkeypatch) as rerun:
        prepare.prepare(str(root), str(part), side=SIDE, workers=0)
    assert sorted(rerun) == todo, "the rerun decodes the images not done before, and only those"
    whole_arrays, part_arrays = arrays(whole), arrays(part)
    for name in whole_arrays:
        assert np.array_equal(whole_arrays[name], part_arrays[name]), name
    assert manifest_without_timing(whole) == manifest_without_timing(part)

    with images_decoded(monkeypatch) as again:
        assert manifest_without_timing(whole) == strip_timing(prepare.prepare(str(root), str(part), side=SIDE))
    assert again == [], "a complete store is not prepared again"


def test_interrupted_after_the_last_image_a_rerun_decodes_nothing(tree, tmp_path, monkeypatch):
    # Every image done and flushed, the manifest not yet written: the rerun only writes the manifest.
    root, _ = tree
    whole, out = tmp_path / "whole", tmp_path / "store"
    prepare.prepare(str(root), str(whole), side=SIDE, workers=0)
    finish = prepare.finish
    monkeypatch.setattr(prepare, "finish", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(str(root), str(out), side=SIDE, workers=0)
    monkeypatch.setattr(prepare, "finish", finish)
    assert not (out / store.MANIFEST).exists() and images_to_do(root, out) == []
    with images_decoded(monkeypatch) as rerun:
        prepare.prepare(str(root), str(out), side=SIDE, workers=0)
    assert rerun == []
    assert manifest_without_timing(whole) == manifest_without_timing(out)


def test_worker_processes_write_the_same_store(tree, tmp_path):
    root, _ = tree
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    prepare.prepare(str(root), str(serial), side=SIDE, workers=0)
    prepare.prepare(str(root), str(parallel), side=SIDE, workers=2)
    serial_arrays, parallel_arrays = arrays(serial), arrays(parallel)
    for name in serial_arrays:
        assert np.array_equal(serial_arrays[name], parallel_arrays[name]), name


def test_a_changed_folder_is_not_resumed_into_an_old_store(tree, tmp_path, monkeypatch):
    root, _ = tree
    out = tmp_path / "store"
    monkeypatch.setattr(prepare, "finish", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(str(root), str(out), side=SIDE, workers=0)
    monkeypatch.undo()
    Image.new("RGB", (30, 30)).save(root / "train" / CLASSES[1] / "new.jpg")
    with pytest.raises(ValueError, match="plan.json"):
        prepare.prepare(str(root), str(out), side=SIDE, workers=0)


def test_cli_help_states_the_cost_and_errors_are_one_line(tmp_path):
    env = reference_backend_env()
    command = [sys.executable, "-m", "alexnet_triton.prepare"]
    help_text = subprocess.run([*command, "--help"], env=env, capture_output=True, text=True, timeout=120).stdout
    assert "196 KB" in help_text and "250 GB" in help_text
    missing = subprocess.run(
        [*command, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "store")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "error: data folder" in missing.stderr and "nowhere" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_cli_prepares_and_a_second_run_changes_nothing(tmp_path):
    root = tmp_path / "images"
    write_tree(root, awkward=False)
    out = tmp_path / "store"
    command = [sys.executable, "-m", "alexnet_triton.prepare", "--data", str(root), "--out", str(out)]
    env = reference_backend_env()
    first = subprocess.run([*command, "--side", "20", "--workers", "1"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "is complete: train 10, val 4 images, 0 unreadable" in first.stdout
    manifest = json.loads((out / store.MANIFEST).read_text())
    mtime = (out / store.MANIFEST).stat().st_mtime_ns
    second = subprocess.run([*command, "--side", "20"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    assert (out / store.MANIFEST).stat().st_mtime_ns == mtime
    assert manifest["side"] == 20


SLOW_PREPARE = """
import sys, time
from alexnet_triton import prepare
load_image = prepare.load_image
prepare.load_image = lambda path, side: (time.sleep(0.02), load_image(path, side))[1]  # long enough to be killed
prepare.prepare(sys.argv[1], sys.argv[2], side=16, workers=0)
"""


def test_killed_mid_way_then_rerun_gives_the_store_of_an_uninterrupted_run(tmp_path, monkeypatch):
    root, whole, part = tmp_path / "images", tmp_path / "whole", tmp_path / "part"
    write_tree(root, per_class=120, awkward=False)
    prepare.prepare(str(root), str(whole), side=16, workers=0)
    process = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(root), str(part)], env=reference_backend_env())
    status_path = store.split_file(part, "train", "status")
    deadline = time.monotonic() + 120
    while not (os.path.exists(status_path) and (np.load(status_path) == store.DONE).sum() >= prepare.CHUNK):
        assert process.poll() is None and time.monotonic() < deadline, "preparation ended before it was killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = (np.load(status_path) != store.TODO).sum()
    assert 0 < done < 240 and not (part / store.MANIFEST).exists()
    todo = images_to_do(root, part)
    assert len(todo) == len(all_images(root)) - done
    with images_decoded(monkeypatch) as rerun:
        prepare.prepare(str(root), str(part), side=16, workers=0)
    assert sorted(rerun) == todo, "the rerun decodes the images not done before, and only those"
    whole_arrays, part_arrays = arrays(whole), arrays(part)
    for name in whole_arrays:
        assert np.array_equal(whole_arrays[name], part_arrays[name]), name
