"""The trainer's --cuda-graphs and --compile (alexnet_triton/train.py, step_graph.py, runtime.compiled).

Without a GPU the graphs are graph_fakes.FakeGraphs, whose capture has no effect on the run and whose replay runs
the captured step again over the static buffers with the learning rate it was captured at: a run with graphs must
then give exactly the eager run's numbers (steps.csv, metrics.jsonl, the final weights), through the warm-up, the
replays, a new capture when the schedule lowers the rate, a stop and an exact --resume, evaluation's own graph, and a
capture that fails. What only a GPU shows (a real replay, dropout's new mask each replay, a real capture failure)
is in tests/test_step_graph.py, skipped here.
"""

import json
import os

import pytest
import torch
from alexnet_triton.kernels import _common
from graph_fakes import FakeGraphs
from test_train import SMALL, final_parameters, step_losses

from alexnet_triton import evaluation, runtime, step_graph
from alexnet_triton import train as trainer
from alexnet_triton.train_options import parse_args

# 4 steps an epoch, 2 epochs, the second at a tenth of the rate (the built-in run's --final-lr-epochs 1); the
# held-out images in one evaluation batch. One warm-up step instead of 3, so that a resumed run also captures.
FLAGS = [*SMALL, "--epochs", "2"]


@pytest.fixture
def run(tmp_path, monkeypatch):
    """run(*argv, graphs=False, fail=None) trains in this process on the CPU (reference math), in tmp_path, with
    FakeGraphs for CUDA graphs when graphs is set (each capture raising fail, if given); run.made lists the
    (training step, evaluation pass) of each train() call, run.fakes its FakeGraphs."""
    monkeypatch.setattr(_common, "INTERPRET", False)
    monkeypatch.setattr(runtime.StopRequest, "install", lambda self: None)
    monkeypatch.setattr(step_graph, "TRAINING_WARMUP", 1)
    monkeypatch.chdir(tmp_path)
    made, fakes, failure = [], [], []

    def fake_graphs(device):
        fakes.append(FakeGraphs(fail=failure[-1]))
        return fakes[-1]

    graphed_steps = trainer.graphed_steps

    def recording(model, state, args, rt):
        steps = graphed_steps(model, state, args, rt)
        if args.cuda_graphs and fakes:  # what the captured steps change
            fakes[-1].model, fakes[-1].optimizer = state.model, state.optimizer
        made.append(steps)
        return steps

    monkeypatch.setattr(step_graph, "CudaGraphs", fake_graphs)
    monkeypatch.setattr(trainer, "graphed_steps", recording)
    cpu = runtime.Runtime(0, 1, torch.device("cpu"))

    def train(*argv, graphs=False, fail=None):
        args = parse_args([*argv, "--device", "cpu"])
        args.cuda_graphs = graphs  # the command line refuses it on a CPU
        failure.append(fail)
        return trainer.train(args, cpu)

    train.made, train.fakes = made, fakes
    return train


def metrics(run_dir, keys: tuple[str, ...]) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: row[key] for key in keys} for row in rows]


def assert_same_runs(got, expected, resumed: bool = False) -> None:
    """The same loss at every step, the same final weights, and the same epochs' numbers: evaluation's, and the
    training loss and error (of an epoch's batches run in one train() call: not comparable across a resume)."""
    assert step_losses(got) == step_losses(expected), "the same loss at every step"
    keys = ("epoch", "lr", "val_loss", "val_top1_error", "val_top5_error")
    keys += () if resumed else ("train_loss", "train_top1_error")
    assert metrics(got, keys) == metrics(expected, keys)
    for name, value in final_parameters(expected).items():
        assert torch.equal(final_parameters(got)[name], value), name


def test_a_run_with_graphs_equals_the_eager_run_through_a_new_rate_a_stop_and_a_resume(run, tmp_path):
    runs = tmp_path / "runs"
    assert not run(*FLAGS, "--name", "eager")["stopped"]
    assert run.made[-1][0].func is trainer.sgd_step, "no graphs unless asked for"

    assert not run(*FLAGS, "--name", "graphs", graphs=True)["stopped"]
    assert_same_runs(runs / "graphs", runs / "eager")
    train_step, evaluation_pass = run.made[-1]
    # Step 1 warms up; step 2 captures at the rate 0.01 and replays, as steps 3-4 do; epoch 2's rate 0.001 makes step
    # 5 capture again. Evaluation: epoch 1's pass warms up, epoch 2's (after step 8) captures and replays.
    assert run.fakes[-1].captured_at == [[0.01], [0.001], [0.001]]
    assert (train_step.captures, train_step.replays) == (2, 7)
    assert (evaluation_pass.captures, evaluation_pass.replays) == (1, 1)

    # Stopped at step 6 (epoch 2), then resumed in a new train(): its graph is built anew (the resume replaced the
    # optimizer's state), after its own warm-up step 7.
    assert run(*FLAGS, "--name", "resumed", "--max-steps", "6", graphs=True)["stopped"]
    assert not run("--resume", "runs/resumed", graphs=True)["stopped"]
    assert_same_runs(runs / "resumed", runs / "eager", resumed=True)
    train_step, _ = run.made[-1]
    assert (train_step.captures, train_step.replays) == (1, 1), "step 7 warms up, step 8 captures and replays"


def test_a_capture_that_fails_warns_once_and_the_run_goes_on_eagerly(run, tmp_path, capsys):
    run(*FLAGS, "--name", "eager")
    capsys.readouterr()
    failure = RuntimeError("CUDA error: operation not permitted when stream is capturing")
    run(*FLAGS, "--name", "failed", graphs=True, fail=failure)
    assert_same_runs(tmp_path / "runs" / "failed", tmp_path / "runs" / "eager")
    train_step, evaluation_pass = run.made[-1]
    assert train_step.failed and evaluation_pass.failed and train_step.captures == evaluation_pass.captures == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    expected = "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    assert warnings == [
        f"warning: CUDA graph capture of the {what} failed, so it runs without a graph from here on: {expected}"
        for what in ("training step", "evaluation pass")
    ], "once for each graph: the training step's at step 2, evaluation's at epoch 2's pass (epoch 1's warms up)"


def test_two_devices_run_without_graphs_saying_why(run, tmp_path, capsys):
    run(*SMALL, "--epochs", "1", "--max-steps", "2", "--devices", "cpu,cpu", "--name", "towers", graphs=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: CUDA graphs are off for this run: --devices puts the towers on two GPUs; a graph here is captured "
        "on one device"
    ]
    assert run.fakes == [] and run.made[-1][0].func is trainer.sgd_step
    assert sorted(step_losses(tmp_path / "runs" / "towers")) == [1, 2]


def test_compile_trains_on_a_cpu_and_its_losses_follow_the_eager_run(run, tmp_path):
    """torch.compile of the network (the reference math here) gives the eager losses to float rounding. Dropout
    off: compiled code draws its masks its own way."""
    flags = [*SMALL, "--epochs", "1", "--max-steps", "3", "--no-dropout"]
    run(*flags, "--name", "eager")
    run(*flags, "--name", "compiled", "--compile")
    model = run.made[-1][0].args[0]
    assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule), "the steps ran the compiled network"
    eager, compiled = (step_losses(tmp_path / "runs" / name) for name in ("eager", "compiled"))
    assert sorted(compiled) == [1, 2, 3]
    for step, loss in eager.items():
        assert float(compiled[step]) == pytest.approx(float(loss), rel=1e-4), step
    saved = torch.load(os.path.join("runs", "compiled", "last.pt"), weights_only=True)["model"]
    assert saved.keys() == final_parameters(tmp_path / "runs" / "eager").keys(), "the model's own names"


@pytest.mark.parametrize("ten_crop", [False, True], ids=["center", "ten-crop"])
def test_evaluate_replays_its_forward_pass_and_measures_what_eager_evaluation_does(run, ten_crop, monkeypatch):
    run(*SMALL, "--epochs", "1", "--max-steps", "1", "--name", "saved")
    made = []
    graphed_step = step_graph.GraphedStep

    def recording(*args, **kwargs):
        made.append(graphed_step(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(step_graph, "GraphedStep", recording)
    monkeypatch.setattr(step_graph, "CudaGraphs", lambda device: FakeGraphs())
    results = {}
    for graphs in (False, True):
        args = parse_args([*SMALL, "--batch-size", "2", "--evaluate", "runs/saved/last.pt", "--device", "cpu",
                           *(["--ten-crop"] if ten_crop else [])])  # fmt: skip
        args.cuda_graphs = graphs
        results[graphs] = evaluation.evaluate_checkpoint(args, runtime.Runtime(0, 1, torch.device("cpu")))
    assert results[True] == results[False]
    (forward,) = made
    assert (forward.captures, forward.replays) == (1, 3), "8 images in passes of 2: one warms up, three replay"
