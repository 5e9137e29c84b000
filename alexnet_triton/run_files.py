"""A training run's outputs in its run directory: steps.csv (the loss of every step), metrics.jsonl (a
row per epoch), TensorBoard events when tensorboard is installed, and the figures (curves.png,
conv1_filters.png, and at the run's end predictions.png and neighbours.png).

Rows are flushed as they are written, so `tail -f steps.csv` follows the run and a process killed
with SIGKILL loses no row it had written. The trainer writes steps.csv's rows at its logging points,
--log-every N steps at a time (train.StepLog: reading a step's loss from a GPU at every step would make
the host wait for it). Only the main process writes: the others open the files with active=False,
which makes every call a no-op.
"""

import csv
import json
import os

import torch

from alexnet_triton import figures, plots

STEP_COLUMNS = ["step", "epoch", "loss", "lr"]


class RunFiles:
    def __init__(self, folder: str, active: bool = True):
        self.folder, self.active = folder, active
        self._steps_file = self._tensorboard = None
        if not active:
            return
        os.makedirs(folder, exist_ok=True)
        # Appends: a resumed run continues the same files.
        self._steps_file = open(self.path("steps.csv"), "a", newline="")  # noqa: SIM115 (closed in close())
        self._steps = csv.writer(self._steps_file)
        if self._steps_file.tell() == 0:
            self._steps.writerow(STEP_COLUMNS)
            self._steps_file.flush()
        self._tensorboard = open_tensorboard(folder)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def log_step(self, step: int, epoch: int, loss: float, lr: float) -> None:
        self.log_steps([(step, epoch, loss, lr)])

    def log_steps(self, rows: list[tuple[int, int, float, float]]) -> None:
        """steps.csv rows (step, epoch, loss, lr), on disk (flushed once) when this returns."""
        if self.active and rows:
            self._steps.writerows([step, epoch, f"{loss:.6f}", lr] for step, epoch, loss, lr in rows)
            self._steps_file.flush()  # to the OS, which keeps it across a kill -9 of this process

    def log_epoch(self, row: dict, history: list[dict], model: torch.nn.Module) -> None:
        """One metrics.jsonl row (and TensorBoard scalars), then the figures redrawn from the history."""
        if not self.active:
            return
        with open(self.path("metrics.jsonl"), "a") as file:
            file.write(json.dumps(row) + "\n")
        if self._tensorboard is not None:
            for key, value in row.items():
                if key != "epoch":
                    self._tensorboard.add_scalar(key, value, row["epoch"])
            self._tensorboard.flush()
        plots.training_curves(history, self.path("curves.png"))
        plots.conv1_filters(model, self.path("conv1_filters.png"))

    def figure4(self, model: torch.nn.Module, train_set, val_set, stats: dict, image_size: int, classes: list[str],
                batch_size: int | None = None, channels_last: bool = False):  # fmt: skip
        """predictions.png and neighbours.png (figures.py) of the network as it ends the run, in passes of
        batch_size images in the run's layout (with the run's autocast around it: nothing the kernels have not
        seen, so nothing to compile or tune)."""
        if self.active:
            figures.draw(model, train_set, val_set, stats, image_size, classes, self.folder, batch_size, channels_last)

    def close(self) -> None:
        if self._steps_file is not None:
            self._steps_file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> "RunFiles":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_tensorboard(folder: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(folder)
