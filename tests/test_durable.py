"""durable.write_atomically: the order of calls that makes a replaced file survive a crash or a power cut."""

import os

import pytest

from alexnet_triton import durable


def test_file_flushed_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    calls = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        is_folder = os.path.samefile(f"/proc/self/fd/{descriptor}", tmp_path)
        calls.append(("fsync", "folder" if is_folder else "file"))
        fsync(descriptor)

    def recording_replace(source, destination):
        calls.append(("replace", os.path.basename(destination)))
        replace(source, destination)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    durable.write_atomically(str(target), b"new")
    assert calls == [("fsync", "file"), ("replace", "state.json"), ("fsync", "folder")]
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("failing", ["write", "fsync", "replace"])
def test_a_failure_at_any_step_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, failing):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def fail(*args):
        raise OSError(f"{failing} failed")

    if failing == "write":
        content = fail
    else:
        content = b"new"
        monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match=f"{failing} failed"):
        durable.write_atomically(str(target), content)
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]
