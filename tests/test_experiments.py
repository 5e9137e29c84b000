"""python -m alexnet_triton.experiments (experiments.py, relu_vs_tanh.py, ablations.py): each command at a
tiny size writes its files with the expected contents, and the measurements they are built from.

The commands run in fresh processes through the reference backend, as the trainer's tests run it.
"""

import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import reference_backend_env

from alexnet_triton import ablations, experiments, relu_vs_tanh
from alexnet_triton import nn as fused


def run_experiment(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "alexnet_triton.experiments", *args]
    return subprocess.run(command, cwd=cwd, env=reference_backend_env(), capture_output=True, text=True, timeout=900)


# ---------------------------------------------------------------------------------------------
# relu-vs-tanh (figure 1)
# ---------------------------------------------------------------------------------------------


def test_relu_vs_tanh_writes_a_curve_per_seed_and_activation(tmp_path):
    result = run_experiment(
        "relu-vs-tanh", "--epochs", "3", "--seeds", "2", "--train-size", "60", "--lr", "0.02", "--out", "out",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads((tmp_path / "out" / "relu_vs_tanh.json").read_text())
    assert (tmp_path / "out" / "relu_vs_tanh.png").stat().st_size > 0
    assert measured["settings"] == {"epochs": 3, "seeds": 2, "train_size": 60, "batch_size": 64, "lr": 0.02,
                                    "momentum": 0.9}  # fmt: skip
    for activation in ("relu", "tanh"):
        curves = measured["curves"][activation]
        assert len(curves) == 2 and all(len(curve) == 3 for curve in curves), activation
        assert all(0 <= error <= 1 for curve in curves for error in curve)
        # Each error is a count of wrong images out of 60.
        assert all(abs(error * 60 - round(error * 60)) < 1e-9 for curve in curves for error in curve)
    assert measured["threshold"] == 0.25 and measured["paper_ratio"] == 6.0
    assert measured["verdict"] in result.stdout
    assert measured["wall_seconds"] > 0


def test_both_nets_start_from_the_same_weights_and_differ_only_in_the_activation():
    torch.manual_seed(0)
    tanh = relu_vs_tanh.FourLayerNet("tanh")
    relu = relu_vs_tanh.FourLayerNet("relu")
    relu.load_state_dict(tanh.state_dict())
    assert all(isinstance(conv, fused.Conv2dReLU) for conv in (relu.conv1, relu.conv2, relu.conv3))
    assert not any(isinstance(conv, fused.Conv2dReLU) for conv in (tanh.conv1, tanh.conv2, tanh.conv3))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pre_activation = tanh.conv1(images)
        torch.testing.assert_close(relu.conv1(images), pre_activation.relu(), rtol=1e-5, atol=1e-5)
        assert relu(images).shape == tanh(images).shape == (2, 10)
    with pytest.raises(ValueError, match="activation"):
        relu_vs_tanh.FourLayerNet("sigmoid")


def test_epochs_to_threshold_interpolates_between_epochs_from_chance():
    assert relu_vs_tanh.epochs_to_threshold([0.5, 0.3, 0.2]) == pytest.approx(2.5)  # 0.3 -> 0.2 crosses halfway
    assert relu_vs_tanh.epochs_to_threshold([0.25]) == pytest.approx(1.0)
    assert relu_vs_tanh.epochs_to_threshold([0.1]) == pytest.approx((0.9 - 0.25) / (0.9 - 0.1))  # from chance
    assert math.isinf(relu_vs_tanh.epochs_to_threshold([0.8, 0.5, 0.26]))


def test_the_ratio_and_a_plain_verdict():
    curves = {"relu": [[0.5, 0.2], [0.5, 0.2]], "tanh": [[0.8, 0.6, 0.4, 0.2], [0.8, 0.6, 0.4, 0.2]]}
    summary = relu_vs_tanh.summarize(curves, epochs=4)
    relu_epochs, tanh_epochs = 1 + 0.25 / 0.3, 3 + 0.15 / 0.2
    assert summary["ratio"] == pytest.approx(tanh_epochs / relu_epochs)
    assert not summary["ratio_is_lower_bound"]
    assert "DIFFERS from the paper's 6x" in relu_vs_tanh.verdict(summary)

    # A tanh run that never gets there: the ratio is a lower bound, and said to be.
    curves["tanh"][1] = [0.8, 0.6, 0.5, 0.4]
    summary = relu_vs_tanh.summarize(curves, epochs=4)
    assert summary["ratio_is_lower_bound"] and summary["epochs_to_threshold"]["tanh"][1] is None
    assert summary["ratio"] == pytest.approx((tanh_epochs + 4) / 2 / relu_epochs)
    assert "at least" in relu_vs_tanh.verdict(summary)

    close = {"relu": [[0.2]], "tanh": [[0.8, 0.7, 0.6, 0.5, 0.4, 0.2]]}  # 5.75 / 0.93 epochs
    assert "close to the paper's 6x" in relu_vs_tanh.verdict(relu_vs_tanh.summarize(close, epochs=6))
    never = relu_vs_tanh.summarize({"relu": [[0.5]], "tanh": [[0.2]]}, epochs=1)
    assert never["ratio"] is None and "no ratio" in relu_vs_tanh.verdict(never)


# ---------------------------------------------------------------------------------------------
# ablations
# ---------------------------------------------------------------------------------------------

TINY_ABLATIONS = [
    "ablations",
    "--epochs",
    "1",
    "--seeds",
    "1",
    "--train-size",
    "64",  # one batch of the recipe's 64: the trainer drops a partial last batch and refuses a set smaller than one
    "--val-size",
    "10",
    "--out",
    "out",
]


def test_ablations_table_has_every_variant_and_a_second_call_reruns_nothing(tmp_path):
    result = run_experiment(*TINY_ABLATIONS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("ablations.md", "ablations.png", "ablations.json"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "ablations.md").read_text()
    for variant, effect in ablations.PAPER_EFFECTS.items():
        rows = [line for line in table.splitlines() if line.startswith(f"| {variant} |")]
        assert len(rows) == 1 and effect in rows[0], variant
    measured = json.loads((out / "ablations.json").read_text())
    assert list(measured["runs"]) == list(ablations.VARIANTS)
    for variant, runs in measured["runs"].items():
        assert len(runs) == 1
        assert all(0 <= runs[0][key] <= 1 for key in ("val_top1_error", "val_top5_error", "train_top1_error"))
        rows = [json.loads(line) for line in (out / "ablations" / f"{variant}-seed0" / "metrics.jsonl").open()]
        assert rows[-1]["val_top1_error"] == runs[0]["val_top1_error"], "the final epoch's error"
    saved = torch.load(out / "ablations" / "one-tower-seed0" / "last.pt", weights_only=True)
    assert saved["config"]["towers"] == 1 and saved["args"]["train_size"] == 64

    again = run_experiment(*TINY_ABLATIONS, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "run directory" not in again.stdout, "finished runs are not run again"
    assert (out / "ablations.md").read_text() == table

    other = run_experiment(*TINY_ABLATIONS[:-2], "--epochs", "2", "--out", "out", cwd=tmp_path)
    assert other.returncode == 1 and "choose another --out" in other.stderr and "Traceback" not in other.stderr


def test_the_table_reports_mean_spread_and_change_against_the_default():
    def run(top1, top5, train):
        return {"val_top1_error": top1, "val_top5_error": top5, "train_top1_error": train}

    results = {variant: [run(0.30, 0.10, 0.2), run(0.32, 0.12, 0.2)] for variant in ablations.VARIANTS}
    results["no-lrn"] = [run(0.35, 0.15, 0.25), run(0.37, 0.13, 0.25)]
    rows = {row[0]: row for row in ablations.table_rows(results)}
    assert rows["default"][1:6] == ["2", "31.0 ± 1.4", "11.0 ± 1.4", "20.0 ± 0.0", ""]
    assert rows["no-lrn"][2] == "36.0 ± 1.4" and rows["no-lrn"][5] == "+5.0 / +3.0"
    assert ablations.spread([0.25]) == "25.0"


def test_trainer_arguments_start_a_run_or_resume_it(tmp_path):
    settings = ablations.Settings(epochs=3, seeds=1, train_size=50, val_size=20)
    fresh = ablations.trainer_arguments("no-overlap", 1, settings, str(tmp_path), None)
    assert fresh == ["--output-dir", str(tmp_path), "--name", "no-overlap-seed1", "--seed", "1", "--epochs", "3",
                     "--train-size", "50", "--val-size", "20", "--no-overlap"]  # fmt: skip
    (tmp_path / "no-overlap-seed1").mkdir()
    (tmp_path / "no-overlap-seed1" / "last.pt").write_bytes(b"")
    resumed = ablations.trainer_arguments("no-overlap", 1, settings, str(tmp_path), "cpu")
    assert resumed == ["--resume", str(tmp_path / "no-overlap-seed1"), "--device", "cpu"]


def test_size_options_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        experiments.parse_args(["ablations", "--seeds", "0"])
    assert "--seeds must be positive" in capsys.readouterr().err
    args = experiments.parse_args(["relu-vs-tanh", "--lr", "0.05"])
    assert experiments.settings_from(args, relu_vs_tanh.Settings) == relu_vs_tanh.Settings(lr=0.05)
