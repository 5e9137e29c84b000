"""Checkpoints (alexnet_triton/checkpoint.py): what one holds, that it opens with weights_only=True, that a
resume restores the recipe it names, and that saving is durable: the file reaches the disk before the rename,
the rename before save returns, and a failure at any step keeps the previous checkpoint."""

import os

import pytest
import torch

from alexnet_triton import checkpoint, train_options
from alexnet_triton.checkpoint import CheckpointError, ModelConfig, Position, Recipe, TrainingCheckpoint


def small_checkpoint(num_classes: int = 10) -> TrainingCheckpoint:
    args = train_options.parse_args(["--epochs", "3", "--lr", "0.02", "--seed", "7", "--no-lrn"])
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.02, momentum=0.9)
    layer(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return TrainingCheckpoint(
        model=layer.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler={"best": 0.5, "num_bad_epochs": 1},
        scaler={},
        position=Position(epoch=1, batches_done=3, global_step=11),
        best_top1_error=0.5,
        history=[{"epoch": 1, "val_top1_error": 0.5}],
        rng=checkpoint.rng_state(),
        stats={"mean": torch.rand(3), "scale": torch.ones(3)},
        config=ModelConfig.from_args(args, num_classes),
        classes=[f"class{i}" for i in range(num_classes)],
        args=vars(args).copy(),
    )


def test_a_training_checkpoint_opens_with_weights_only_and_reads_back_equal(tmp_path):
    saved = small_checkpoint()
    path = str(tmp_path / "last.pt")
    checkpoint.save(saved.to_dict(), path)
    on_disk = torch.load(path, weights_only=True)  # plain containers only: no dataclass, no code
    assert on_disk["format"] == checkpoint.FORMAT and on_disk["position"] == vars(saved.position)
    assert on_disk["config"] == vars(saved.config)

    for source in (path, str(tmp_path)):  # a file, or a run directory's last.pt
        read = checkpoint.read(source)
        assert read.position == saved.position and read.config == saved.config
        assert read.recipe == saved.recipe and read.classes == saved.classes
        assert read.history == saved.history and read.best_top1_error == saved.best_top1_error
        for name, value in saved.model.items():
            assert torch.equal(read.model[name], value), name
        assert torch.equal(read.rng["torch"], saved.rng["torch"])


def test_the_recipe_is_what_a_resume_takes_from_the_checkpoint():
    saved = train_options.parse_args(["--epochs", "3", "--lr", "0.02", "--seed", "7", "--no-lrn", "--batch-size", "16"])
    recipe = Recipe.from_args(saved)
    command_line = train_options.parse_args(["--epochs", "50", "--seed", "1", "--workers", "2", "--name", "again"])
    recipe.apply_to(command_line)
    assert Recipe.from_args(command_line) == recipe
    assert (command_line.epochs, command_line.lr, command_line.seed, command_line.lrn) == (3, 0.02, 7, False)
    assert command_line.batch_size == 16
    assert (command_line.workers, command_line.name) == (2, "again"), "what is not in the recipe stays"


def test_every_recipe_and_model_setting_is_a_command_line_option():
    options = vars(train_options.parse_args([]))
    for setting in (*Recipe.__dataclass_fields__, *ModelConfig.__dataclass_fields__):
        assert setting in options or setting == "num_classes", setting


def test_unusable_checkpoints_are_refused_with_a_message_naming_them(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.read(str(tmp_path / "missing.pt"))
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="cannot be read"):
        checkpoint.read(str(tmp_path / "corrupt.pt"))
    checkpoint.save({"weights": torch.ones(2)}, str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match="is not an alexnet_triton training checkpoint"):
        checkpoint.read(str(tmp_path / "other.pt"))
    partial = small_checkpoint().to_dict()
    del partial["optimizer"]
    checkpoint.save(partial, str(tmp_path / "partial.pt"))
    with pytest.raises(CheckpointError, match="partial.pt.*not an alexnet_triton training checkpoint"):
        checkpoint.read(str(tmp_path / "partial.pt"))
    newer = small_checkpoint().to_dict() | {"format": checkpoint.FORMAT + 1}
    checkpoint.save(newer, str(tmp_path / "newer.pt"))
    with pytest.raises(CheckpointError, match="has format"):
        checkpoint.read(str(tmp_path / "newer.pt"))


def test_a_checkpoint_for_other_classes_is_refused():
    saved = small_checkpoint(num_classes=10)
    saved.check_classes(10, "last.pt")
    with pytest.raises(CheckpointError, match="'last.pt' was trained for 10 classes, but the data has 2"):
        saved.check_classes(2, "last.pt")


# ---- durable saving ---------------------------------------------------------------------------------


def record_fsyncs_and_renames(monkeypatch, folder, calls: list, fail_at: str | None = None):
    """Record ("fsync", "file" | "folder") and ("replace", name) calls; raise OSError at fail_at."""
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        kind = "folder" if os.path.samefile(f"/proc/self/fd/{descriptor}", folder) else "file"
        calls.append(("fsync", kind))
        if fail_at == f"fsync {kind}":
            raise OSError(f"{fail_at} failed")
        fsync(descriptor)

    def recording_replace(source, destination):
        calls.append(("replace", os.path.basename(destination)))
        if fail_at == "replace":
            raise OSError("replace failed")
        replace(source, destination)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell a folder's descriptor")
def test_save_fsyncs_the_file_then_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, str(path))
    calls = []
    record_fsyncs_and_renames(monkeypatch, tmp_path, calls)
    checkpoint.save({"model": {"w": torch.zeros(3)}}, str(path))
    assert calls == [("fsync", "file"), ("replace", "last.pt"), ("fsync", "folder")]
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(str(path))["model"]["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell a folder's descriptor")
@pytest.mark.parametrize("fail_at", ["fsync file", "replace"])
def test_a_failure_before_the_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, str(path))
    calls = []
    record_fsyncs_and_renames(monkeypatch, tmp_path, calls, fail_at)
    with pytest.raises(OSError, match=f"{fail_at} failed"):
        checkpoint.save({"model": {"w": torch.zeros(3)}}, str(path))
    monkeypatch.undo()
    assert ("fsync", "folder") not in calls
    assert torch.equal(checkpoint.load(str(path))["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file may be left behind"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell a folder's descriptor")
def test_a_failed_folder_fsync_is_reported_and_leaves_the_new_checkpoint_whole(tmp_path, monkeypatch):
    # After the rename the previous checkpoint is gone by design; what is there must be the complete new one.
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, str(path))
    record_fsyncs_and_renames(monkeypatch, tmp_path, [], "fsync folder")
    with pytest.raises(OSError, match="fsync folder failed"):
        checkpoint.save({"model": {"w": torch.zeros(3)}}, str(path))
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(str(path))["model"]["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file may be left behind"


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, str(path))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save({"model": {"w": torch.zeros(3)}}, str(path))
    assert torch.equal(checkpoint.load(str(path))["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file may be left behind"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell a folder's descriptor")
def test_save_same_as_names_the_saved_file_durably_and_later_saves_leave_it(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, str(last))
    checkpoint.save({"model": {"w": torch.full((3,), 7.0)}}, str(best))
    calls = []
    record_fsyncs_and_renames(monkeypatch, tmp_path, calls)
    checkpoint.save_same_as(str(last), str(best))
    assert calls == [("replace", "best.pt"), ("fsync", "folder")], "the new name is made durable"
    monkeypatch.undo()
    assert os.path.samefile(last, best), "a second name, not a second write"
    checkpoint.save({"model": {"w": torch.zeros(3)}}, str(last))
    assert torch.equal(checkpoint.load(str(best))["model"]["w"], torch.ones(3))
    assert torch.equal(checkpoint.load(str(last))["model"]["w"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_save_same_as_copies_where_there_are_no_hard_links(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, str(last))

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    checkpoint.save_same_as(str(last), str(best))
    assert not os.path.samefile(last, best)
    assert torch.equal(checkpoint.load(str(best))["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"], "no temporary file left"


def test_a_failed_rename_in_save_same_as_keeps_the_old_name_and_no_temporary(tmp_path, monkeypatch):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}}, str(last))
    checkpoint.save({"model": {"w": torch.full((3,), 7.0)}}, str(best))
    record_fsyncs_and_renames(monkeypatch, tmp_path, [], "replace")
    with pytest.raises(OSError, match="replace failed"):
        checkpoint.save_same_as(str(last), str(best))
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(str(best))["model"]["w"], torch.full((3,), 7.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_a_checkpoint_from_before_a_setting_existed_resumes_as_it_was_trained():
    saved_args = vars(train_options.parse_args([]))
    del saved_args["final_lr_epochs"]  # saved before the option existed: its runs had no final drop
    assert Recipe.from_args(saved_args).final_lr_epochs == 0
    del saved_args["lr"]
    with pytest.raises(KeyError, match="lr"):
        Recipe.from_args(saved_args)
