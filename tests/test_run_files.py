"""A run's outputs (alexnet_triton/run_files.py): every row is on disk as soon as it is written (the trainer writes
steps.csv's rows a logging point at a time), so `tail -f` follows the run and a killed process loses nothing it had
logged."""

import csv
import json

import pytest

from alexnet_triton.model import AlexNet
from alexnet_triton.run_files import RunFiles


def read_steps(folder) -> list[dict]:
    with open(folder / "steps.csv", newline="") as file:  # a second reader, as tail -f would be
        return list(csv.DictReader(file))


def test_a_step_row_is_on_disk_right_after_it_is_written(tmp_path):
    files = RunFiles(str(tmp_path))
    try:
        files.log_step(1, 1, 2.5, 0.01)
        assert read_steps(tmp_path) == [{"step": "1", "epoch": "1", "loss": "2.500000", "lr": "0.01"}]
        files.log_step(2, 1, 2.25, 0.01)
        assert [row["step"] for row in read_steps(tmp_path)] == ["1", "2"]
    finally:
        files.close()


def test_rows_written_together_are_on_disk_in_order_when_the_call_returns(tmp_path):
    # The trainer writes a logging point's steps in one call; a non-finite loss is written as it is.
    with RunFiles(str(tmp_path)) as files:
        files.log_steps([(1, 1, 2.5, 0.01), (2, 1, 2.25, 0.01), (3, 2, float("nan"), 0.001)])
        assert read_steps(tmp_path) == [
            {"step": "1", "epoch": "1", "loss": "2.500000", "lr": "0.01"},
            {"step": "2", "epoch": "1", "loss": "2.250000", "lr": "0.01"},
            {"step": "3", "epoch": "2", "loss": "nan", "lr": "0.001"},
        ]
        files.log_steps([])
        files.log_steps([(4, 2, 2.0, 0.001)])
        assert [row["step"] for row in read_steps(tmp_path)] == ["1", "2", "3", "4"]


def test_an_epoch_row_is_on_disk_right_after_it_is_written_and_the_figures_drawn(tmp_path):
    row = {"epoch": 1, "lr": 0.01, "train_loss": 2.0, "train_top1_error": 0.8, "images_per_s": 100.0,
           "seconds": 4.0, "val_loss": 1.9, "val_top1_error": 0.7, "val_top5_error": 0.2}  # fmt: skip
    with RunFiles(str(tmp_path)) as files:
        files.log_epoch(row, [row], AlexNet(10, image_size=67))
        assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [row]
        for figure in ("curves.png", "conv1_filters.png"):
            assert (tmp_path / figure).stat().st_size > 0, figure


def test_a_resumed_run_appends_without_a_second_header(tmp_path):
    with RunFiles(str(tmp_path)) as files:
        files.log_step(1, 1, 2.5, 0.01)
    with RunFiles(str(tmp_path)) as files:
        files.log_step(2, 1, 2.0, 0.01)
    assert [row["step"] for row in read_steps(tmp_path)] == ["1", "2"]


def test_other_processes_write_nothing(tmp_path):
    folder = tmp_path / "run"
    with RunFiles(str(folder), active=False) as files:
        files.log_step(1, 1, 2.5, 0.01)
        files.log_steps([(2, 1, 2.0, 0.01)])
        files.log_epoch({"epoch": 1}, [], model=None)
    assert not folder.exists()


@pytest.mark.parametrize("name", ["steps.csv", "metrics.jsonl"])
def test_paths_are_inside_the_run_directory(tmp_path, name):
    assert RunFiles(str(tmp_path), active=False).path(name) == str(tmp_path / name)
