"""Stop and abort as decisions every process of a torchrun run makes together, and each process's own random
generators in the checkpoint (alexnet_triton/runtime.py StopRequest and agree, train.py's logging points,
checkpoint.py's per-rank generators): two processes on the CPU with gloo, through the reference backend.

A signal reaches one worker only (found as the torchrun agent's child whose environment says RANK=1), as a
preemption notice does: the job still stops every process at one step, saves, exits 0 with the resume line, and the
resumed run ends with the uninterrupted run's losses, weights and every process's generators. A NaN loss on one
process (the trainer's test-only fault injection, runtime.TEST_NAN_LOSS) ends the job, in bounded time, with one line
naming its step and rank.
"""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import reference_backend_env

from alexnet_triton import checkpoint, runtime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers through /proc")

# 2 processes x 96 training images, 8 a batch: 12 steps an epoch, 24 in all; logging points (where the processes
# agree) at steps 1, 5, 10, 12 (the epoch's end), 13, 15, 20 and 24. 300 held-out images: each evaluation takes
# seconds, long enough to signal a worker inside it.
FLAGS = ["--train-size", "192", "--val-size", "300", "--batch-size", "8", "--image-size", "67", "--epochs", "2",
         "--log-every", "5"]  # fmt: skip
STEPS = 24
TIMEOUT = 300  # seconds: any run here takes well under a minute; a hang fails instead of blocking the suite


def command(*args: str, processes: int = 2) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return [*(launcher if processes else [sys.executable]), "-m", "alexnet_triton.train", *args]


def run(*args: str, cwd, processes: int = 2, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args, processes=processes), cwd=cwd, env=reference_backend_env(**env),
                          capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip


def workers(agent: int) -> dict[int, int]:
    """{rank: pid} of the torchrun agent's worker processes (its children that carry a RANK)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                parent = int(file.read().rsplit(")", 1)[1].split()[1])
            if parent != agent:
                continue
            with open(f"/proc/{entry}/environ", "rb") as file:
                environment = file.read().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for item in environment:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry)
    return found


def rows(run_dir) -> list[tuple[int, str]]:
    """steps.csv's (step, loss) rows, in order."""
    path = os.path.join(run_dir, "steps.csv")
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [(int(row["step"]), row["loss"]) for row in csv.DictReader(file)]


def assert_same_run(got_dir, expected_dir) -> None:
    """The run in got_dir ended as the one in expected_dir: every step's loss (none repeated), the weights, and each
    process's random generators, by rank."""
    got_rows = rows(got_dir)
    assert [step for step, _ in got_rows] == list(range(1, STEPS + 1)), "every step once, in order"
    assert got_rows == rows(expected_dir), "the resumed steps repeat the uninterrupted run's losses"
    got, expected = checkpoint.read(str(got_dir)), checkpoint.read(str(expected_dir))
    for name, value in expected.model.items():
        assert torch.equal(got.model[name], value), name
    assert got.processes == expected.processes == 2
    for rank, (mine, theirs) in enumerate(zip(got.rng["ranks"], expected.rng["ranks"], strict=True)):
        assert list(mine) == list(theirs) == ["torch"], "a CPU run saves no CUDA state"
        assert torch.equal(mine["torch"], theirs["torch"]), f"rank {rank}'s generator"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    result = run(*FLAGS, "--name", "whole", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 2 ranks agree on the final weights" in result.stdout
    saved = checkpoint.read(str(folder / "runs" / "whole"))
    ranks = saved.rng["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"]), "a dropout stream per process"
    return folder / "runs" / "whole"


@pytest.mark.parametrize(
    "moment, rows_before_signal",
    [("mid-epoch", 1), ("during evaluation", 12)],
    ids=["mid-epoch", "during-evaluation"],
)
def test_sigterm_to_one_worker_stops_every_process_at_one_step_and_the_resume_ends_as_uninterrupted(
    tmp_path, uninterrupted, moment, rows_before_signal
):
    """Mid-epoch: rank 1 is signalled once step 1's row is written (the first logging point), most likely a step or
    two before the next one at step 5 (or still at step 1's, whose agreement follows the row): every process runs on
    to the same logging point, saves there and exits. During
    evaluation: once step 12's row (the epoch's end) is written, the processes are evaluating, for seconds: the stop
    is agreed when the evaluation is over, after last.pt of the epoch's end."""
    start = time.monotonic()
    agent = subprocess.Popen(command(*FLAGS, "--name", "part"), cwd=tmp_path, env=reference_backend_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        while len(rows(tmp_path / "runs" / "part")) < rows_before_signal:
            assert agent.poll() is None, "the run ended before the signal"
            assert time.monotonic() - start < TIMEOUT, "no step was logged"
            time.sleep(0.02)
        time.sleep(0.1 if moment == "mid-epoch" else 0)  # past step 1's agreement, most likely
        ranks = workers(agent.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGTERM)
        stdout, stderr = agent.communicate(timeout=TIMEOUT)
    finally:
        agent.kill()
    assert agent.returncode == 0, stderr[-3000:]
    assert "SIGTERM on rank 1: every process stops at the next logging point" in stdout
    assert "stopped at step" in stdout and "continue with --resume runs/part" in stdout
    position = checkpoint.read(str(tmp_path / "runs" / "part")).position
    if moment == "mid-epoch":
        assert position.epoch == 0 and position.batches_done == position.global_step in {1, 5, 10}, position
    else:
        assert (position.epoch, position.batches_done, position.global_step) == (1, 0, 12), position
    assert [step for step, _ in rows(tmp_path / "runs" / "part")] == list(range(1, position.global_step + 1))

    resumed = run("--resume", "runs/part", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "runs" / "part", uninterrupted)


def test_a_max_steps_stop_and_resume_restore_each_process_s_generators(tmp_path, uninterrupted):
    """Stopped by --max-steps at step 7 (between logging points: every process leaves there, deterministically),
    resumed: each process continues its own dropout stream (a process given rank 0's would draw other masks, and
    the weights would differ). The checkpoint holds both processes' generators, and a resume with another number of
    processes is refused in one line."""
    part = run(*FLAGS, "--name", "part", "--max-steps", "7", cwd=tmp_path)
    assert part.returncode == 0, part.stderr[-3000:]
    saved = checkpoint.read(str(tmp_path / "runs" / "part"))
    assert saved.position.global_step == 7 and saved.processes == 2
    assert not torch.equal(saved.rng["ranks"][0]["torch"], saved.rng["ranks"][1]["torch"])

    alone = run("--resume", "runs/part", cwd=tmp_path, processes=0)
    assert alone.returncode == 1
    assert alone.stderr.strip().splitlines() == [
        "error: checkpoint 'runs/part' was written by 2 processes, this run has 1; resume it with "
        "torchrun --nproc-per-node 2 (or nodes x processes per node = 2)"
    ]

    resumed = run("--resume", "runs/part", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "runs" / "part", uninterrupted)


def test_a_nan_loss_on_one_process_ends_the_job_naming_its_step_and_rank(tmp_path):
    """Rank 1's loss is NaN at step 3 (the test-only fault injection); rank 0's stays finite. At the next logging
    point (step 5) both processes agree on the verdict and raise: the job exits non-zero in seconds, rank 0 prints
    the one line naming step 3 and rank 1, and no checkpoint is saved."""
    start = time.monotonic()
    result = run(*FLAGS, "--name", "nan", cwd=tmp_path, **{runtime.TEST_NAN_LOSS: "1:3"})
    assert time.monotonic() - start < 120, "bounded time: no process waits for another"
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: the loss became nan at step 3 on rank 1; try a lower --lr"], result.stderr[-3000:]
    assert "mismatch" not in result.stderr and "Connection reset" not in result.stderr
    assert [step for step, _ in rows(tmp_path / "runs" / "nan")] == [1, 2, 3, 4, 5], "rank 0's rows to the verdict"
    assert not (tmp_path / "runs" / "nan" / "last.pt").exists()
