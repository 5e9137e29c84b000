"""Reading a prepared store: a store that is incomplete, truncated or inconsistent is refused, naming the file."""

import json
import os

import numpy as np
import pytest
from image_tree import write_tree

from alexnet_triton import prepare, store


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
