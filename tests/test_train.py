"""The trainer (python -m alexnet_triton.train): its command line.

The CLI runs in fresh processes through the reference backend (TRITON_INTERPRET unset, no GPU): what
is tested here is the program (files, resume, errors, distributed data parallelism), not the kernels. The
data pipeline, evaluation, checkpoints, run files and runtime have their own test files.
"""

import contextlib
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from alexnet_triton.kernels import _common
from graph_fakes import FakeGraphs
from helpers import reference_backend_env
from image_tree import write_shapes_tree
from PIL import Image

from alexnet_triton import (
    checkpoint,
    data,
    figures,
    input_pipeline,
    prepare,
    run_files,
    runtime,
    step_graph,
    training_state,
)
from alexnet_triton import train as trainer
from alexnet_triton.train_options import parse_args

TINY = ["--train-size", "128", "--val-size", "40", "--batch-size", "32", "--image-size", "67"]
SMALL = ["--train-size", "32", "--val-size", "8", "--batch-size", "8", "--image-size", "67"]  # 4 steps an epoch


def run_cli(*args: str, cwd, torchrun: int = 0) -> subprocess.CompletedProcess:
    env = reference_backend_env()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"]
    command = [*(launcher if torchrun else [sys.executable]), "-m", "alexnet_triton.train", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def step_losses(run_dir) -> dict[int, str]:
    """steps.csv's losses by step; a step written twice (a resume repeating rows) fails."""
    with open(os.path.join(run_dir, "steps.csv")) as file:
        rows = [(int(row["step"]), row["loss"]) for row in csv.DictReader(file)]
    steps = [step for step, _ in rows]
    assert steps == sorted(set(steps)), f"steps.csv rows out of order or repeated: {steps}"
    return dict(rows)


def final_parameters(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)["model"]


def test_cli_trains_and_writes_its_files(tmp_path):
    result = run_cli(*TINY, "--epochs", "3", "--output-dir", "runs", "--name", "tiny", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    assert f"run directory: runs{os.sep}tiny" in result.stdout
    for name in ("metrics.jsonl", "steps.csv", "curves.png", "conv1_filters.png", "last.pt", "best.pt"):
        assert (run_dir / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], "the training loss should fall"
    assert all(0 <= row["val_top1_error"] <= 1 and row["val_top5_error"] <= row["val_top1_error"] for row in rows)
    assert "best validation top-1 error" in result.stdout


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    common = [*TINY, "--epochs", "2", "--output-dir", "runs"]
    whole = run_cli(*common, "--name", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    # Interrupted mid-way through the second epoch (4 steps per epoch), then resumed.
    part = run_cli(*common, "--name", "part", "--max-steps", "6", cwd=tmp_path)
    assert part.returncode == 0, part.stderr[-3000:]
    assert "continue with --resume" in part.stdout
    assert sorted(step_losses(tmp_path / "runs" / "part")) == [1, 2, 3, 4, 5, 6]
    resumed = run_cli("--resume", "runs/part", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, got = step_losses(tmp_path / "runs" / "whole"), step_losses(tmp_path / "runs" / "part")
    assert got == expected, "steps after the resume must repeat the uninterrupted run's losses"
    for name, value in final_parameters(tmp_path / "runs" / "whole").items():
        assert torch.equal(final_parameters(tmp_path / "runs" / "part")[name], value), name


def write_image_folder(root, classes=("cat", "dog"), per_class=6, corrupt: str | None = None) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (60 + 7 * i, 90, 3), dtype=np.uint8)
                pixels[..., label] = 255  # a colour cue per class
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    if corrupt:
        (root / "train" / classes[0] / corrupt).write_bytes(b"not an image at all" * 10)


def test_image_folder_with_an_unreadable_file(tmp_path):
    write_image_folder(tmp_path / "images", corrupt="broken.jpg")
    result = run_cli(
        "--data", "images", "--image-size", "67", "--batch-size", "4", "--epochs", "1", "--name", "folder",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping unreadable image" in result.stderr and "broken.jpg" in result.stderr
    assert "2 classes" in result.stdout and "13 training" in result.stdout
    assert sorted(step_losses(tmp_path / "runs" / "folder")) == [1, 2, 3], "3 batches of 4; the 13th image left out"


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("no-classes", "has no class subfolders"),
        ("no-images", "has class subfolders but no images"),
    ],
)
def test_bad_data_folders_stop_with_a_clear_message(tmp_path, layout, message):
    root = tmp_path / "images"
    if layout == "no-classes":
        (root / "train").mkdir(parents=True)
        (root / "train" / "loose.jpg").write_bytes(b"")
    elif layout == "no-images":
        (root / "train" / "cat").mkdir(parents=True)
    result = run_cli("--data", "images", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "images" in result.stderr


def test_evaluate_ten_crop_and_refuse_bad_checkpoints(tmp_path):
    trained = run_cli(*TINY, "--epochs", "1", "--name", "eval", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    best = os.path.join("runs", "eval", "best.pt")
    for crops in ([], ["--ten-crop"]):
        result = run_cli(*TINY, "--evaluate", best, *crops, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "top-1 error" in result.stdout and ("ten crops" in result.stdout) == bool(crops)

    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage" * 100)
    result = run_cli("--evaluate", "corrupt.pt", cwd=tmp_path)
    assert result.returncode == 1 and "cannot be read" in result.stderr

    write_image_folder(tmp_path / "images")
    result = run_cli("--evaluate", best, "--data", "images", cwd=tmp_path)
    assert result.returncode == 1 and "trained for 10 classes, but the data has 2" in result.stderr


def test_two_processes_started_like_torchrun_equal_one_process(tmp_path):
    # Dropout off, so the two runs draw nothing differently; 2 x 16 per step against 32 in one process.
    common = ["--train-size", "64", "--val-size", "16", "--image-size", "67", "--epochs", "1", "--no-dropout"]
    two = run_cli(*common, "--batch-size", "16", "--name", "two", cwd=tmp_path, torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "ranks agree" in two.stdout
    one = run_cli(*common, "--batch-size", "32", "--name", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    parameters_two, parameters_one = (
        final_parameters(tmp_path / "runs" / "two"),
        final_parameters(tmp_path / "runs" / "one"),
    )
    for name, value in parameters_one.items():
        torch.testing.assert_close(parameters_two[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_sigterm_saves_after_the_step_and_the_run_resumes(tmp_path):
    command = [sys.executable, "-m", "alexnet_triton.train", *TINY, "--epochs", "3", "--name", "stopped"]
    process = subprocess.Popen(command, cwd=tmp_path, env=reference_backend_env(), stdout=subprocess.PIPE, text=True)
    steps = tmp_path / "runs" / "stopped" / "steps.csv"
    deadline = time.monotonic() + 300
    # An epoch's first step is a logging point, so the first step's row shows the loop is running.
    while not (steps.exists() and len(steps.read_text().splitlines()) > 1):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first step"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    assert "SIGTERM: saving after this step" in stdout and "continue with --resume" in stdout
    saved = checkpoint.read(str(tmp_path / "runs" / "stopped"))
    assert 1 <= saved.position.global_step < 12, "stopped before the run's end"
    resumed = run_cli("--resume", "runs/stopped", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(step_losses(tmp_path / "runs" / "stopped")) == list(range(1, 13))


def test_training_and_ten_crop_evaluation_from_a_prepared_store(tmp_path):
    write_image_folder(tmp_path / "images")
    manifest = prepare.prepare(str(tmp_path / "images"), str(tmp_path / "store"), side=76, workers=0)
    trained = run_cli("--data", "store", "--image-size", "67", "--batch-size", "5", "--epochs", "1",
                      "--name", "stored", cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "12 training and 12 validation images, 2 classes" in trained.stdout
    assert sorted(step_losses(tmp_path / "runs" / "stored")) == [1, 2], "2 batches of 5; 2 images left out"
    saved = checkpoint.read(str(tmp_path / "runs" / "stored"))
    # The run normalizes with the store's statistics over every training image, not a sample's.
    expected_mean = torch.tensor(manifest["statistics"]["mean"], dtype=torch.float32)
    assert torch.equal(saved.stats["mean"], expected_mean)
    evaluated = run_cli("--data", "store", "--evaluate", "runs/stored/best.pt", "--ten-crop", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "ten crops, 12 images" in evaluated.stdout


def test_a_256_store_trains_as_the_image_folder_does_at_a_smaller_crop(tmp_path):
    # Photos larger than the store (as most of ImageNet's), each class a shape (the built-in dataset's, 4 of them).
    # Before stores served rescaled images, the store run cropped 67 x 67 straight out of the 256 image, a seventh
    # of the picture, and stayed near chance: top-1 error 0.74 after these 10 epochs (the folder 0.30).
    write_shapes_tree(tmp_path / "images", side=320, classes=4, per_class=100, val_per_class=30)
    prepare.prepare(str(tmp_path / "images"), str(tmp_path / "store"), side=256, workers=0)
    flags = ["--image-size", "67", "--epochs", "10", "--batch-size", "32", "--init", "kaiming",
             "--final-lr-epochs", "2", "--workers", "0"]  # fmt: skip
    errors = {}
    for source in ("images", "store"):
        result = run_cli("--data", source, *flags, "--name", source, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        rows = (tmp_path / "runs" / source / "metrics.jsonl").read_text().splitlines()
        errors[source] = json.loads(rows[-1])["val_top1_error"]
    # Measured: 0.300 from the folder, 0.325 from the store (chance: 0.75).
    assert errors["images"] <= 0.45 and errors["store"] <= 0.45, errors
    assert abs(errors["images"] - errors["store"]) <= 0.1, errors
    assert checkpoint.read(str(tmp_path / "runs" / "store")).images == {"resize": 76, "store_side": 256}
    assert checkpoint.read(str(tmp_path / "runs" / "images")).images == {"resize": 76, "store_side": None}
    # --evaluate sees the held-out images as training did: the same error as the last epoch's (to one image, since
    # another batch size may round a borderline logit the other way).
    evaluated = run_cli("--data", "store", "--evaluate", "runs/store/last.pt", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    (printed,) = re.findall(r"top-1 error ([0-9.]+)", evaluated.stdout)
    assert abs(float(printed) - errors["store"]) <= 1 / 120 + 1e-9, (printed, errors)


def test_a_store_too_small_for_the_crop_stops_the_run_in_one_line(tmp_path):
    write_image_folder(tmp_path / "images")
    prepare.prepare(str(tmp_path / "images"), str(tmp_path / "store"), side=76, workers=0)
    result = run_cli("--data", "store", "--image-size", "100", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip() == (
        "error: the store store holds 76x76 images; --image-size 100 crops from 113x113 ones (as from an image "
        "folder): prepare it again with `prepare --side 113` (or more)"
    )
    assert not (tmp_path / "runs").exists()


def test_incomplete_store_is_refused_naming_its_manifest(tmp_path):
    write_image_folder(tmp_path / "images")
    prepare.prepare(str(tmp_path / "images"), str(tmp_path / "store"), side=76, workers=0)
    (tmp_path / "store" / "manifest.json").unlink()
    result = run_cli("--data", "store", "--image-size", "67", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert "not a complete prepared store" in result.stderr and "manifest.json" in result.stderr


def test_bf16_autocast_trains_on_a_cpu(tmp_path):
    result = run_cli(*TINY, "--epochs", "1", "--amp", "bf16", "--name", "bf16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in (tmp_path / "runs" / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row[key]) for key in ("train_loss", "val_loss", "val_top1_error"))


def test_fp16_autocast_is_refused_on_a_cpu_in_one_line(tmp_path):
    result = run_cli(*TINY, "--epochs", "1", "--amp", "fp16", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]  # argparse's usage error, before anything runs
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].endswith(
        "error: --amp fp16 needs a GPU (a CPU has no fast fp16, and no loss scaling runs there); use --amp bf16"
    ), result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """The trainer run in this process through the reference math (as its own process runs without
    TRITON_INTERPRET), in tmp_path, without taking over this process's Ctrl-C."""
    monkeypatch.setattr(_common, "INTERPRET", False)
    monkeypatch.setattr(runtime.StopRequest, "install", lambda self: None)
    monkeypatch.chdir(tmp_path)
    cpu = runtime.Runtime(0, 1, torch.device("cpu"))
    return lambda *argv: trainer.train(parse_args([*argv, "--device", "cpu"]), cpu)


def test_the_network_sees_one_training_and_one_evaluation_batch_size(in_process, tmp_path, monkeypatch):
    """On a GPU the kernels tune and compile for the sizes they see: a run shows them the training batch
    and the evaluation batch, and no other size (no partial last batch), across epochs and a mid-epoch
    resume, figure 4 at the end included."""
    phase = "run"
    seen = []  # (what ran, images in the pass)

    def record(module, inputs):
        what = "training" if module.training else ("figure" if phase == "figure" else "evaluation")
        seen.append((what, len(inputs[0])))

    def build_model(*args, **kwargs):
        model = build(*args, **kwargs)
        model.towers[0].conv1.register_forward_pre_hook(record)  # runs in model(images) and model.features
        return model

    def draw(*args, **kwargs):
        nonlocal phase
        phase = "figure"
        try:
            return draw_figure(*args, **kwargs)
        finally:
            phase = "run"

    build, draw_figure = training_state.build_model, figures.draw
    monkeypatch.setattr(training_state, "build_model", build_model)
    monkeypatch.setattr(figures, "draw", draw)
    # 22 training images in batches of 4: 5 steps an epoch, 2 images left out. 19 held-out images, at most
    # 4 x 4 at a time: 2 passes of 10, the second padded from 9.
    sizes = ["--train-size", "22", "--val-size", "19", "--batch-size", "4", "--image-size", "67"]
    stopped = in_process(*sizes, "--epochs", "2", "--max-steps", "7", "--name", "sizes")
    assert stopped["stopped"] and stopped["position"]["batches_done"] == 2, "stopped mid-way through epoch 2"
    finished = in_process("--resume", "runs/sizes")
    assert not finished["stopped"]

    assert sorted(step_losses(tmp_path / "runs" / "sizes")) == list(range(1, 11))
    passes = {what: [size for kind, size in seen if kind == what] for what in ("training", "evaluation", "figure")}
    assert passes["training"] == [4] * 10
    assert passes["evaluation"] == [10] * 4, "2 passes an epoch, each of the one evaluation size"
    assert passes["figure"] and set(passes["figure"]) == {10}, "figure 4 passes at the evaluation batch"
    assert {size for _, size in seen} == {4, 10}


def test_a_training_set_smaller_than_one_batch_stops_the_run_at_once(in_process, tmp_path):
    with pytest.raises(ValueError, match=r"20 images, fewer than one batch of --batch-size 32"):
        in_process("--train-size", "20", "--val-size", "10", "--batch-size", "32", "--image-size", "67")
    assert not (tmp_path / "runs").exists(), "refused before the run began"


class SyncGuard:
    """Tensor methods that read a value back to the host (on a GPU: wait for it) made to fail while armed. The
    failures are recorded too, in case some code swallows the exception."""

    READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")

    def __init__(self, monkeypatch):
        self.armed, self.caught = False, []
        for name in self.READS:
            monkeypatch.setattr(torch.Tensor, name, self._guarded(name, getattr(torch.Tensor, name)))

    def _guarded(self, name, read):
        def guarded(tensor, *args, **kwargs):
            if self.armed:
                self.caught.append(name)
                raise AssertionError(f"Tensor.{name} inside a training step")
            return read(tensor, *args, **kwargs)

        return guarded

    @contextlib.contextmanager
    def set(self, armed: bool):
        before, self.armed = self.armed, armed
        try:
            yield
        finally:
            self.armed = before

    def wrap(self, function, armed: bool):
        def wrapped(*args, **kwargs):
            with self.set(armed):
                return function(*args, **kwargs)

        return wrapped


class HostBatches:
    """A training loader whose batches are made with the guard off: the loader runs on the host (its samplers and
    workers read CPU tensors, which waits for nothing); what the step does with a batch is guarded."""

    def __init__(self, loader, guard: SyncGuard):
        self.loader, self.guard = loader, guard

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        with self.guard.set(False):
            batches = iter(self.loader)
        while True:
            with self.guard.set(False):
                batch = next(batches, None)
            if batch is None:
                return
            yield batch


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_no_step_reads_the_device_and_steps_csv_is_written_at_logging_points(in_process, tmp_path, monkeypatch,
                                                                             graphs):  # fmt: skip
    """Between logging points nothing in the loop reads a tensor's value (Tensor.item, tolist, bool, float, int,
    index, cpu and numpy fail there): on a GPU the host never waits for the device inside a step. steps.csv gets
    every step's row, in bulk at the logging points: every --log-every 3 steps, an epoch's first step, its end, and
    a stop between logging points, whose rows are on disk before last.pt is saved, so the resumed run neither
    loses nor repeats one. With graphs, the steps replay CUDA graphs (graph_fakes.FakeGraphs here): what the host
    does around a replay (the copy into the static buffers, the check of the baked learning rate) reads nothing."""
    guard = SyncGuard(monkeypatch)
    if graphs:
        fakes, graphed_steps = [], trainer.graphed_steps

        def with_fake_graphs(model, state, args, rt):
            args.cuda_graphs = True  # the command line refuses it on a CPU
            monkeypatch.setattr(step_graph, "CudaGraphs", lambda device: fakes.append(FakeGraphs()) or fakes[-1])
            steps = graphed_steps(model, state, args, rt)
            fakes[-1].model, fakes[-1].optimizer = state.model, state.optimizer
            return steps

        monkeypatch.setattr(trainer, "graphed_steps", with_fake_graphs)
    monkeypatch.setattr(trainer, "train_one_epoch", guard.wrap(trainer.train_one_epoch, armed=True))
    monkeypatch.setattr(trainer.StepLog, "read", guard.wrap(trainer.StepLog.read, armed=False))
    monkeypatch.setattr(trainer, "all_reduce_sum", guard.wrap(trainer.all_reduce_sum, armed=False))
    make_loader = data.make_loader

    def guarded_loader(*args, drop_last=False, **kwargs):
        loader = make_loader(*args, drop_last=drop_last, **kwargs)
        return HostBatches(loader, guard) if drop_last else loader  # the training loader

    monkeypatch.setattr(data, "make_loader", guarded_loader)
    armed_steps = []
    training_step = trainer.training_step

    def counted_step(*args, **kwargs):
        armed_steps.append(guard.armed)
        return training_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "training_step", counted_step)
    writes = []  # the steps of each steps.csv write
    log_steps = run_files.RunFiles.log_steps

    def record_writes(files, rows):
        writes.append([row[0] for row in rows])
        return log_steps(files, rows)

    monkeypatch.setattr(run_files.RunFiles, "log_steps", record_writes)
    rows_at_save = []
    save = checkpoint.save

    def record_save(state, path):
        rows_at_save.append((state["position"]["global_step"], sorted(step_losses(tmp_path / "runs" / "guarded"))))
        return save(state, path)

    monkeypatch.setattr(checkpoint, "save", record_save)

    # 4 steps an epoch; stopped at step 7, between the logging points of steps 6 and 9.
    flags = [*SMALL, "--epochs", "2", "--log-every", "3", "--name", "guarded"]
    stopped = in_process(*flags, "--max-steps", "7")
    assert stopped["stopped"] and stopped["position"]["global_step"] == 7
    assert rows_at_save == [(4, [1, 2, 3, 4]), (7, list(range(1, 8)))], "rows on disk before each save"
    finished = in_process("--resume", "runs/guarded", "--log-every", "3")
    assert not finished["stopped"]

    assert guard.caught == [] and armed_steps == [True] * 8, "every step ran with the reads guarded"
    if graphs:  # steps 1-3 warm up, 4-7 replay (5 at a new rate); the resumed run's step 8 warms up
        assert [fake.replays for fake in fakes] == [4, 0]
    # Epoch 1: its first step, step 3, its end; epoch 2: its first step, step 6, the stop; then the resumed run's
    # first step (the end of its epoch has no row left to write).
    assert [steps for steps in writes if steps] == [[1], [2, 3], [4], [5], [6], [7], [8]]
    assert sorted(step_losses(tmp_path / "runs" / "guarded")) == list(range(1, 9))
    # The epoch's metrics are still those of all its steps.
    rows = [json.loads(line) for line in (tmp_path / "runs" / "guarded" / "metrics.jsonl").read_text().splitlines()]
    losses = step_losses(tmp_path / "runs" / "guarded")
    assert rows[0]["train_loss"] == pytest.approx(sum(float(losses[step]) for step in (1, 2, 3, 4)) / 4, abs=1e-5)


@pytest.mark.parametrize("max_steps, seen_at", [(7, "a stop"), (None, "the epoch's end")])
def test_a_non_finite_loss_names_its_step_and_no_checkpoint_is_saved_after_it(
    in_process, tmp_path, monkeypatch, max_steps, seen_at
):
    """Step 6's images are NaN (4 steps an epoch; the logging points every 100 steps). The run goes on to the next
    logging point (the stop at step 7, or the epoch's end at step 8: each comes right before a checkpoint would be
    saved), raises naming step 6, and saves nothing after it: last.pt stays the one of epoch 1's end. steps.csv ends
    with step 6's row."""
    calls = 0
    training_batch = input_pipeline.CpuPipeline.training_batch

    def poisoned_batch(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        images, labels = training_batch(self, *args, **kwargs)
        return (images * float("nan") if calls == 6 else images), labels

    monkeypatch.setattr(input_pipeline.CpuPipeline, "training_batch", poisoned_batch)
    saved_at = []
    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda state, path: (saved_at.append(state["position"]["global_step"]),
                                                                   save(state, path)))  # fmt: skip

    flags = [*SMALL, "--epochs", "3", "--log-every", "100", "--name", "nan"]
    with pytest.raises(FloatingPointError, match=r"^the loss became nan at step 6; try a lower --lr$"):
        in_process(*flags, *(["--max-steps", str(max_steps)] if max_steps else []))
    assert calls == {"a stop": 7, "the epoch's end": 8}[seen_at]
    assert saved_at == [4], "no checkpoint after the non-finite step"
    assert checkpoint.read(str(tmp_path / "runs" / "nan")).position.global_step == 4
    losses = step_losses(tmp_path / "runs" / "nan")
    assert sorted(losses) == list(range(1, 7)) and losses[6] == "nan"
    assert all(math.isfinite(float(losses[step])) for step in range(1, 6))
