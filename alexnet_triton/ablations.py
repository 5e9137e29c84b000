"""The paper's ablations on the built-in dataset: the default training run, then once each without LRN
(section 3.3), with non-overlapping pooling (3.4), without dropout (4.2) and as the one-GPU net with half
the kernels (3.2), over a few seeds; a table of held-out top-1 / top-5 error (mean and spread over the
seeds) beside the effects the paper reports.

Each run is the trainer's own (train.main with its command-line arguments), in its own run directory
<out>/ablations/<variant>-seed<k>. A run that finished is not run again and one that stopped is resumed
(--resume), so the command can be interrupted and started again. The errors are the final epoch's (the
last weights; no choosing the best epoch on the held-out images). Training error is measured again after
training, on the training images' centre crops in eval mode (no dropout, no augmentation), so that the
overfitting the paper reports without dropout shows as the gap between training and held-out error.
"""

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import SequentialSampler  # noqa: E402

from alexnet_triton import augmentation, checkpoint, data, train  # noqa: E402
from alexnet_triton.evaluation import evaluate  # noqa: E402
from alexnet_triton.runtime import Runtime, resolve_device  # noqa: E402
from alexnet_triton.training_state import build_model  # noqa: E402

# variant -> the trainer's flags
VARIANTS = {
    "default": [],
    "no-lrn": ["--no-lrn"],
    "no-overlap": ["--no-overlap"],
    "no-dropout": ["--no-dropout"],
    "one-tower": ["--towers", "1"],
}
# What the paper reports for each change, as the change in held-out (top-1, top-5) error in percentage
# points against the full network (sections 3.2-3.4, 4.2), or in words.
PAPER_EFFECTS = {
    "default": "the paper's network",
    "no-lrn": "+1.4 / +1.2 (LRN lowers them by 1.4 and 1.2, section 3.3)",
    "no-overlap": "+0.4 / +0.3 (overlapping pools lower them by 0.4 and 0.3, section 3.4)",
    "no-dropout": "substantial overfitting (section 4.2)",
    "one-tower": "+1.7 / +1.2 (half the kernels on one GPU, section 3.2)",
}


@dataclass
class Settings:
    """The experiment's size: the trainer's own recipe for the built-in dataset (its batch, learning rate and
    final epoch at a tenth of it) on fewer images and 8 epochs, as measured in the README. The defaults took
    40 minutes on this project's 2-core machine shared with other jobs, 30 of them training; on an idle one,
    at the 340 images/s the trainer now reaches there, about 10 (estimated from that speed, not timed)."""

    epochs: int = 8
    seeds: int = 2
    train_size: int = 2000
    val_size: int = 1000


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def trainer_arguments(variant: str, seed: int, settings: Settings, folder: str, device: str | None) -> list[str]:
    """The trainer's command line for one run: a fresh one, or --resume of one that stopped."""
    run_dir = os.path.join(folder, run_name(variant, seed))
    if os.path.isfile(os.path.join(run_dir, "last.pt")):
        arguments = ["--resume", run_dir]
    else:
        arguments = [
            "--output-dir", folder, "--name", run_name(variant, seed), "--seed", str(seed),
            "--epochs", str(settings.epochs), "--train-size", str(settings.train_size),
            "--val-size", str(settings.val_size), *VARIANTS[variant],
        ]  # fmt: skip
    return arguments + (["--device", device] if device else [])


def finished(run_dir: str, settings: Settings) -> bool:
    """Whether run_dir holds a run of these settings that ran all its epochs. A run of other settings is
    refused: mixing them into one table would compare unlike things."""
    if not os.path.isfile(os.path.join(run_dir, "last.pt")):
        return False
    saved = checkpoint.read(run_dir)
    wanted = {"epochs": settings.epochs, "train_size": settings.train_size, "val_size": settings.val_size}
    found = {key: saved.args[key] for key in wanted}
    if found != wanted:
        raise ValueError(f"{run_dir} is a run of {found}, not {wanted}: choose another --out")
    return saved.position.epoch >= settings.epochs


def final_errors(run_dir: str, device: torch.device) -> dict:
    """The last epoch's held-out errors, and the training error of the final weights measured in eval mode
    on the training images' centre crops; kept in run_dir/final_errors.json, so measured once."""
    path = os.path.join(run_dir, "final_errors.json")
    if os.path.isfile(path):
        with open(path) as file:
            return json.load(file)
    saved = checkpoint.read(run_dir)
    args = saved.args
    train_set, _, _ = data.load_datasets(None, saved.config.image_size, args["train_size"], 1, args["seed"])
    crops = augmentation.EvaluationCrops(train_set, saved.config.image_size, saved.stats)
    loader = data.make_loader(crops, SequentialSampler(crops), args["batch_size"], 0, device, args["seed"])
    model = build_model(saved.config, device, None)
    model.load_state_dict(saved.model)
    options = type("Options", (), {"amp": args["amp"], "channels_last": args["channels_last"]})()
    on_training_images = evaluate(model, loader, options, Runtime(0, 1, device), ten_crop=False)
    last = saved.history[-1]
    errors = {
        "val_top1_error": last["val_top1_error"],
        "val_top5_error": last["val_top5_error"],
        "train_top1_error": on_training_images["val_top1_error"],
        "train_top5_error": on_training_images["val_top5_error"],
        "train_seconds": sum(row["seconds"] for row in saved.history),
    }
    with open(path, "w") as file:
        json.dump(errors, file)
    return errors


def spread(values: list[float]) -> str:
    """mean ± sample standard deviation, in percent."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * statistics.stdev(values):.1f}"


def table_rows(results: dict[str, list[dict]]) -> list[list[str]]:
    """One row per variant: errors in percent, mean ± spread over seeds, and the change against default."""
    base = {key: statistics.fmean(r[key] for r in results["default"]) for key in ("val_top1_error", "val_top5_error")}
    rows = []
    for variant, runs in results.items():
        column = {key: [r[key] for r in runs] for key in runs[0]}
        change = "" if variant == "default" else " / ".join(
            f"{100 * (statistics.fmean(column[key]) - base[key]):+.1f}" for key in ("val_top1_error", "val_top5_error")
        )  # fmt: skip
        rows.append([
            variant, str(len(runs)), spread(column["val_top1_error"]), spread(column["val_top5_error"]),
            spread(column["train_top1_error"]), change, PAPER_EFFECTS[variant],
        ])  # fmt: skip
    return rows


HEADER = [
    "variant", "seeds", "held-out top-1 %", "held-out top-5 %", "training top-1 % (eval mode)",
    "change vs default (top-1 / top-5, points)", "paper",
]  # fmt: skip


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def table_png(rows: list[list[str]], caption: str, path: str) -> None:
    figure, axes = plt.subplots(figsize=(15, 0.45 * (len(rows) + 2)))
    axes.axis("off")
    table = axes.table(cellText=rows, colLabels=HEADER, loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(HEADER))))
    table.scale(1, 1.4)
    axes.set_title(caption, fontsize=9)
    figure.savefig(path, dpi=100, bbox_inches="tight", pad_inches=0.1)  # the table's size, not the figure's
    plt.close(figure)


def run(settings: Settings, out: str, device: str | None) -> dict:
    """Every variant over settings.seeds seeds (skipping finished runs), then ablations.md / .png / .json."""
    folder = os.path.join(out, "ablations")
    start = time.perf_counter()
    results: dict[str, list[dict]] = {variant: [] for variant in VARIANTS}
    for seed in range(settings.seeds):
        for variant in VARIANTS:
            run_dir = os.path.join(folder, run_name(variant, seed))
            if not finished(run_dir, settings):
                print(f"== {variant}, seed {seed}", flush=True)
                if train.main(trainer_arguments(variant, seed, settings, folder, device)) != 0:
                    raise RuntimeError(f"the trainer failed for {run_dir}")
                if not finished(run_dir, settings):
                    raise RuntimeError(f"{run_dir} stopped before its last epoch; run the command again to resume")
            evaluation_device = resolve_device(device)
            results[variant].append(final_errors(run_dir, evaluation_device))
    rows = table_rows(results)
    wall = time.perf_counter() - start
    caption = (
        f"built-in dataset, {settings.train_size} training / {settings.val_size} held-out images, "
        f"{settings.epochs} epochs, {settings.seeds} seeds (mean ± standard deviation)"
    )
    result = {"settings": asdict(settings), "runs": results, "table": rows, "wall_seconds": wall}
    with open(os.path.join(out, "ablations.json"), "w") as file:
        json.dump(result, file, indent=1)
    with open(os.path.join(out, "ablations.md"), "w") as file:
        file.write(f"{caption}\n\n{markdown(rows)}")
    table_png(rows, caption, os.path.join(out, "ablations.png"))
    print(f"{caption}\n\n{markdown(rows)}")
    print(f"wrote {out}/ablations.md, ablations.png and ablations.json in {wall:.0f} s")
    return result
