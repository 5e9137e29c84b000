"""Checkpoints (alexnet_triton/checkpoint.py): what one holds, that it opens with weights_only=True, that a
resume restores the recipe it names, and that saving is durable: the file reaches the disk before the rename,
the rename before save returns, and a failure at any step keeps the previous checkpoint."""

import dataclasses
import os

import pytest
import torch

from alexnet_triton import checkpoint, train_options
from alexnet_triton.checkpoint import CheckpointError, ModelConfig, Position, Recipe, TrainingCheckpoint


def small_checkpoint(num_classes: int = 10) -> TrainingCheckpoint:
    """A checkpoint whose every part holds state, as a run's does after a few steps: momentum buffers, a plateau
    schedule that has counted epochs, a loss scaler that has stepped, random normalization statistics."""
    args = train_options.parse_args(["--epochs", "3", "--lr", "0.02", "--seed", "7", "--no-lrn"])
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.02, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    for error in (0.5, 0.6, 0.7):
        scaler.scale(layer(torch.randn(4, 3)).sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step(error)
    assert optimizer.state[layer.weight]["momentum_buffer"].abs().sum() > 0
    assert scheduler.state_dict()["num_bad_epochs"] == 0 and optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    assert scaler.state_dict()["scale"] == 2048.0, "one growth after 3 steps"
    return TrainingCheckpoint(
        model=layer.state_dict(),
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict(),
        scaler=scaler.state_dict(),
        position=Position(epoch=1, batches_done=3, global_step=11),
        best_top1_error=0.5,
        history=[{"epoch": 1, "val_top1_error": 0.5, "val_loss": 1.25}, {"epoch": 2, "val_top1_error": 0.6}],
        rng={"ranks": [checkpoint.rng_state(), checkpoint.rng_state()]},  # two processes' generators, by rank
        stats={"mean": 255 * torch.rand(3), "scale": torch.rand(3) + 0.5, "eigenvalues": torch.rand(3)},
        config=ModelConfig.from_args(args, num_classes),
        classes=[f"class{i}" for i in range(num_classes)],
        args=vars(args).copy(),
        images={"resize": 76, "store_side": 256},
    )


def assert_same(got, expected, where: str) -> None:
    """got is expected: the same nesting, keys in the same order, types, and tensors equal in dtype, shape and
    every element."""
    assert type(got) is type(expected), f"{where}: {type(got).__name__}, saved {type(expected).__name__}"
    if isinstance(expected, torch.Tensor):
        assert got.dtype == expected.dtype and got.shape == expected.shape, f"{where}: {got.dtype} {got.shape}"
        assert torch.equal(got, expected), f"{where}: other values"
    elif isinstance(expected, dict):
        assert list(got) == list(expected), f"{where}: keys {list(got)}, saved {list(expected)}"
        for key, value in expected.items():
            assert_same(got[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), f"{where}: {len(got)} items, saved {len(expected)}"
        for index, (item, value) in enumerate(zip(got, expected, strict=True)):
            assert_same(item, value, f"{where}[{index}]")
    else:
        assert got == expected, f"{where}: {got!r}, saved {expected!r}"


def test_a_training_checkpoint_opens_with_weights_only_and_reads_back_equal(tmp_path):
    saved = small_checkpoint()
    path = str(tmp_path / "last.pt")
    checkpoint.save(saved.to_dict(), path)
    on_disk = torch.load(path, weights_only=True)  # plain containers only: no dataclass, no code
    assert on_disk["format"] == checkpoint.FORMAT and on_disk["position"] == vars(saved.position)
    assert on_disk["config"] == vars(saved.config)

    # Every random generator a training step draws from (checkpoint.rng_state), for each process by rank: PyTorch's
    # CPU generator, and the CUDA generators of the devices its network runs on (none here). Nothing in a run draws
    # from Python's or NumPy's global generators (data, augmentation and the samplers use generators of their own,
    # seeded from the run's seed and position), so neither is saved; tests/test_train.py's resume test checks that a
    # resumed run repeats the uninterrupted one, tests/test_distributed_stop.py that of two processes.
    assert list(saved.rng) == ["ranks"] and [list(rank) for rank in saved.rng["ranks"]] == [["torch"], ["torch"]]
    assert saved.processes == 2

    for source in (path, str(tmp_path)):  # a file, or a run directory's last.pt
        read = checkpoint.read(source)
        assert read.position == saved.position and read.config == saved.config
        assert read.recipe == saved.recipe and read.classes == saved.classes
        # Everything a resume restores, field by field: weights, the optimizer's momentum buffers and learning
        # rate, the plateau schedule, the loss scaler, the normalization statistics, the position, the history
        # and best error, the random generators, and the command line.
        for field in dataclasses.fields(TrainingCheckpoint):
            assert_same(getattr(read, field.name), getattr(saved, field.name), field.name)
        assert_same(read.to_dict(), saved.to_dict(), "checkpoint")


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


def test_a_checkpoint_keeps_the_side_its_images_were_cut_from_and_older_ones_read_without_it(tmp_path):
    saved = small_checkpoint()
    assert saved.resize == 76
    older = saved.to_dict()
    del older["images"]  # saved before the side was kept: its runs used data.resize_size(image_size)
    checkpoint.save(older, str(tmp_path / "older.pt"))
    read = checkpoint.read(str(tmp_path / "older.pt"))
    assert read.images == {} and read.resize is None
    del older["classes"]
    checkpoint.save(older, str(tmp_path / "broken.pt"))
    with pytest.raises(CheckpointError, match=r"not an alexnet_triton training checkpoint \(no \['classes'\]\)"):
        checkpoint.read(str(tmp_path / "broken.pt"))


def test_a_checkpoint_from_before_a_setting_existed_resumes_as_it_was_trained():
    saved_args = vars(train_options.parse_args([]))
    del saved_args["final_lr_epochs"]  # saved before the option existed: its runs had no final drop
    assert Recipe.from_args(saved_args).final_lr_epochs == 0
    del saved_args["lr"]
    with pytest.raises(KeyError, match="lr"):
        Recipe.from_args(saved_args)


# ---- random generators, by process -----------------------------------------------------------------


def fake_gpus(monkeypatch):
    """Four CUDA devices as far as the generator calls can tell: each device's state a distinct 16-byte tensor, and
    what set_rng_state was given, by device index."""
    states = {index: torch.full((16,), index, dtype=torch.uint8) for index in range(4)}
    restored = {}

    def index_of(device) -> int:
        device = torch.device(device)
        assert device.type == "cuda" and device.index is not None, f"an indexed CUDA device, not {device}"
        return device.index

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(states))
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[index_of(device)].clone())

    def set_rng_state(state, device="cuda"):
        restored[index_of(device)] = state.clone()

    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [state.clone() for state in states.values()])
    return states, restored


def test_each_process_saves_its_cpu_generator_and_its_own_devices_cuda_generators(monkeypatch):
    """What a torchrun process on cuda:2 saves: its CPU generator and cuda:2's, not every device's (rank 2's copy of
    cuda:0's state would be meaningless); a single process with --devices saves its two towers' devices, in the
    towers' order; a CPU run saves no CUDA state."""
    states, _ = fake_gpus(monkeypatch)
    own = checkpoint.rng_state([torch.device("cuda", 2)])
    assert list(own) == ["torch", "cuda"] and len(own["cuda"]) == 1
    assert torch.equal(own["torch"], torch.get_rng_state()) and torch.equal(own["cuda"][0], states[2])
    towers = checkpoint.rng_state(["cuda:3", "cuda:1"])
    assert [int(state[0]) for state in towers["cuda"]] == [3, 1]
    assert list(checkpoint.rng_state([torch.device("cpu")])) == ["torch"]


def test_each_process_restores_its_own_generators_from_the_checkpoint(monkeypatch):
    """Rank r restores rank r's CPU generator and puts rank r's CUDA state on its own device."""
    _, restored = fake_gpus(monkeypatch)
    saved = {"ranks": []}
    for rank in range(2):
        torch.manual_seed(100 + rank)
        state = checkpoint.rng_state([torch.device("cuda", rank)])
        state["cuda"] = [torch.full((16,), 10 + rank, dtype=torch.uint8)]  # each process's own CUDA state
        saved["ranks"].append(state)
    draws = []
    for rank in range(2):
        torch.manual_seed(100 + rank)
        draws.append(torch.rand(4))
    for rank in (1, 0):
        torch.manual_seed(7)
        restored.clear()
        checkpoint.set_rng_state(saved, rank, 2, [torch.device("cuda", rank)])
        assert torch.equal(torch.rand(4), draws[rank]), f"rank {rank}'s CPU generator"
        assert list(restored) == [rank] and int(restored[rank][0]) == 10 + rank, f"rank {rank}'s device's state"
    restored.clear()
    checkpoint.set_rng_state(saved, 1, 2, [torch.device("cpu")])
    assert restored == {}, "a process now on the CPU leaves the CUDA generators as seeded"


def test_a_resume_on_another_number_of_processes_is_refused_in_one_line():
    saved = small_checkpoint()  # two processes
    saved.check_processes(2, "runs/a")
    with pytest.raises(CheckpointError) as refused:
        saved.check_processes(1, "runs/a")
    assert str(refused.value) == (
        "checkpoint 'runs/a' was written by 2 processes, this run has 1; resume it with torchrun --nproc-per-node 2 "
        "(or nodes x processes per node = 2)"
    )
    saved.rng = {"ranks": saved.rng["ranks"][:1]}
    with pytest.raises(CheckpointError, match=r"written by 1 process, this run has 8; resume it with one process"):
        saved.check_processes(8, "runs/a")
    with pytest.raises(CheckpointError, match=r"holds the random generators of 1 process\(es\), this run has 2"):
        checkpoint.set_rng_state(saved.rng, 1, 2)


def test_a_format_1_checkpoint_restores_its_one_generator_state_into_any_number_of_processes(tmp_path, monkeypatch):
    """Format 1 saved one process's generators (the CPU's, every CUDA device's) and every process restored them:
    it still loads, resumes on any number of processes (processes is None) as it did, and 8 CUDA states restore
    into the 4 devices this machine has instead of failing on the fifth."""
    older = small_checkpoint().to_dict()
    _, restored = fake_gpus(monkeypatch)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    older["format"], older["rng"] = (
        1,
        {
            "torch": torch.get_rng_state(),
            "cuda": [torch.full((16,), 20 + index, dtype=torch.uint8) for index in range(8)],
        },
    )
    checkpoint.save(older, str(tmp_path / "older.pt"))
    read = checkpoint.read(str(tmp_path / "older.pt"))
    assert read.format == 1 and read.processes is None
    read.check_processes(3, "older.pt")
    torch.manual_seed(9)
    checkpoint.set_rng_state(read.rng, 2, 3, [torch.device("cuda", 2)])
    assert torch.equal(torch.rand(4), expected)
    assert {index: int(state[0]) for index, state in restored.items()} == {0: 20, 1: 21, 2: 22, 3: 23}
