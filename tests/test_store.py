"""Reading a prepared store: a store that is incomplete, truncated or inconsistent is refused, naming the file; a
256 store serves the crops an image folder's files give at any crop size that fits, and refuses one that does not."""

import json
import os

import numpy as np
import pytest
import torch
from image_tree import write_shapes_tree, write_tree
from torch.utils.data import Dataset

from alexnet_triton import augmentation, data, prepare, store


@pytest.fixture
def prepared(tmp_path):
    root, out = tmp_path / "images", tmp_path / "store"
    write_tree(root, awkward=False)
    prepare.prepare(str(root), str(out), side=12, workers=0)
    return out


def test_a_complete_store_reads_back(prepared):
    split = store.StoreSplit(str(prepared), "val")
    assert len(split) == 4 and split.side == 12
    assert split.image(3).shape == (12, 12, 3)
    assert store.is_store(str(prepared)) and not store.is_store(str(prepared / "train"))


def test_missing_manifest_says_preparation_did_not_finish(prepared):
    os.remove(prepared / store.MANIFEST)
    with pytest.raises(store.StoreError, match=r"not a complete prepared store.*manifest\.json.*resume"):
        store.StoreSplit(str(prepared), "train")


def test_truncated_image_array_is_refused_naming_it(prepared):
    path = store.split_file(prepared, "train", "images")
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)
    with pytest.raises(store.StoreError, match=r"train/images\.npy is truncated"):
        store.StoreSplit(str(prepared), "train")


def test_array_of_another_shape_is_refused_naming_it(prepared):
    path = store.split_file(prepared, "val", "labels")
    np.save(path, np.zeros(3, dtype=np.int64))
    with pytest.raises(store.StoreError, match=r"val/labels\.npy holds int64\[3\], the manifest says int64\[4\]"):
        store.StoreSplit(str(prepared), "val")


def test_status_that_disagrees_with_the_manifest_is_refused(prepared):
    path = store.split_file(prepared, "train", "status")
    status = np.load(path)
    status[0] = store.TODO
    np.save(path, status)
    with pytest.raises(store.StoreError, match=r"train/status\.npy marks images as not prepared"):
        store.StoreSplit(str(prepared), "train")
    status[0] = store.UNREADABLE
    np.save(path, status)
    with pytest.raises(store.StoreError, match=r"train/status\.npy has 9 prepared images, the manifest says 10"):
        store.StoreSplit(str(prepared), "train")


def test_manifest_that_is_not_a_store_manifest_is_refused(prepared):
    (prepared / store.MANIFEST).write_text(json.dumps({"hello": 1}))
    with pytest.raises(store.StoreError, match="not an alexnet_triton store manifest"):
        store.read_manifest(str(prepared))
    (prepared / store.MANIFEST).write_text("{ truncated")
    with pytest.raises(store.StoreError, match="manifest.json cannot be read"):
        store.read_manifest(str(prepared))


def test_labels_outside_the_class_list_are_refused(prepared):
    path = store.split_file(prepared, "val", "labels")
    np.save(path, np.array([0, 1, 2, 1], dtype=np.int64))
    with pytest.raises(store.StoreError, match="labels outside the class list"):
        store.StoreSplit(str(prepared), "val")


# ---------------------------------------------------------------------------------------------
# A store serves the crops an image folder does
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[320, 96], ids=["photos larger than the store", "photos smaller"])
def folder_and_store(request, tmp_path_factory):
    """An image folder of the built-in shapes drawn at one side (PNG, lossless) and its 256 store."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_tree(root / "images", side=request.param, classes=4, per_class=2, val_per_class=2)
    prepare.prepare(str(root / "images"), str(root / "store"), side=256, workers=0)
    return request.param, str(root / "images"), str(root / "store")


def seen_in_pixels(view: Dataset, epochs: tuple[int, ...] = (0,)) -> torch.Tensor:
    """Every image of view, for each epoch, in grey levels (the views are normalized by a mean of 0 and scale 1)."""
    crops = []
    for epoch in epochs:
        if hasattr(view, "set_epoch"):
            view.set_epoch(epoch)
        crops += [view[i][0] for i in range(len(view))]
    return torch.stack(crops)


# Measured over these views (8 images, two epochs of training crops, centre and ten crops), photos 320 pixels wide (as
# most of ImageNet's are wider than 256): mean 0.21 grey levels, 1.5% of values more than 1 apart, at most 4. The two
# roundings to whole grey levels (the store's image, then its rescaled one) account for 1; the rest is the first
# resampling's own filter (a triangle 1.25 photo pixels wide) slightly widening the second's (5.3 wide), which moves
# pixel noise at a sharp edge by a few levels. Photos smaller than the store are upscaled into it (bilinear) and down
# again, a blur of one photo pixel more: mean 1.9 levels, 45% of values more than 1 apart, at most 29 on this pixel
# noise. Bounds: about 3x the measured (a crop cut out of the 256 image without rescaling is off by tens of levels).
BOUNDS = {320: {"mean": 0.65, "over_1": 0.045, "max": 12}, 96: {"mean": 6.0, "over_1": 0.9, "max": 87}}


@pytest.mark.parametrize("image_size", [67, 227])
def test_a_256_store_serves_the_crops_the_image_folder_makes(folder_and_store, image_size):
    photo_side, folder, prepared = folder_and_store
    from_folder = data.load_datasets(folder, image_size, 0, 0, 0)
    from_store = data.load_datasets(prepared, image_size, 0, 0, 0)
    assert from_store[2] == from_folder[2] and from_store[0].side == from_folder[0].side == data.resize_size(image_size)
    stats = {**store.statistics(prepared), "mean": torch.zeros(3), "scale": torch.ones(3)}
    views = {
        "training": lambda split: augmentation.TrainingCrops(split[0], image_size, stats, seed=5),
        "centre": lambda split: augmentation.EvaluationCrops(split[1], image_size, stats),
        "ten crops": lambda split: augmentation.EvaluationCrops(split[1], image_size, stats, ten_crop=True),
    }
    for name, view in views.items():
        expected = seen_in_pixels(view(from_folder), (0, 1))
        got = seen_in_pixels(view(from_store), (0, 1))
        assert got.shape == expected.shape, name
        if image_size == 227:  # the store's 256 images are the folder's rescaled ones: nothing is resampled twice
            assert torch.equal(got, expected), name
            continue
        difference, bound = (got - expected).abs(), BOUNDS[photo_side]
        assert difference.mean() <= bound["mean"], (name, difference.mean())
        assert (difference > 1).double().mean() <= bound["over_1"], (name, (difference > 1).double().mean())
        assert difference.max() <= bound["max"], (name, difference.max())


def test_a_store_too_small_for_the_crop_is_refused_naming_the_side_that_fits(folder_and_store):
    _, _, prepared = folder_and_store
    with pytest.raises(store.StoreError) as refusal:
        data.load_datasets(prepared, 240, 0, 0, 0)  # crops 240 out of 271 x 271 images
    message = str(refusal.value)
    assert "\n" not in message and "holds 256x256 images" in message and "--image-size 240" in message
    assert "271x271" in message and "prepare --side 271" in message
    with pytest.raises(store.StoreError, match="holds 256x256 images, too small to serve 300x300 ones"):
        store.StoreDataset(prepared, "train", resize=300)
