"""Train AlexNet with the paper's recipe (section 5) and data pipeline (sections 2 and 4.1).

    python -m alexnet_triton.train                        # the built-in shapes dataset; minutes on a CPU
    python -m alexnet_triton.train --data ~/imagenet      # an ImageFolder tree: DIR/train/<class>/*, DIR/val/<class>/*
    python -m alexnet_triton.train --data ~/imagenet --devices cuda:0,cuda:1   # one tower per GPU, as in the paper
    torchrun --nproc-per-node 8 -m alexnet_triton.train --data ~/imagenet      # data-parallel, one tower pair per GPU
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr HOST --master-port 29500 \\
        -m alexnet_triton.train --data ~/imagenet          # ... and --node-rank 1 on the second machine
    python -m alexnet_triton.train --resume runs/NAME     # continue an interrupted run where it stopped
    python -m alexnet_triton.train --evaluate runs/NAME/best.pt --data ~/imagenet --ten-crop

Each run writes into a run directory named on start: metrics.jsonl (a row per epoch), steps.csv (the
loss of every step, flushed as it is written), curves.png, conv1_filters.png (figure 3),
predictions.png and neighbours.png (figure 4, at the end; --evaluate draws them too), last.pt and
best.pt (checkpoints, written atomically and durably), and TensorBoard events when tensorboard is
installed. Ctrl-C or SIGTERM finishes the current step, saves last.pt and exits; --resume then continues
exactly where the run stopped.

Unreadable images in --data are skipped with a warning naming the file (the next image takes their
place); a missing or empty data folder, a folder without class subfolders, a corrupt checkpoint or one
trained for another number of classes stop the run with a message that names it.

This file holds the command line, train_one_epoch, evaluate and the epoch loop; the rest has its own
module: data.py (datasets, crops, loaders), training_state.py (network, optimizer, schedule),
checkpoint.py (what a checkpoint holds), run_files.py (logs and figures), runtime.py (processes, devices,
signals).
"""

import argparse
import datetime
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from alexnet_triton import checkpoint, data, figures, input_pipeline
from alexnet_triton.checkpoint import Position
from alexnet_triton.evaluation import evaluate, evaluate_checkpoint
from alexnet_triton.run_files import RunFiles
from alexnet_triton.runtime import (
    Runtime,
    StopRequest,
    all_reduce_sum,
    autocast,
    check_ranks_agree,
    start_runtime,
    stop_runtime,
)
from alexnet_triton.training_state import TrainingState

# Defaults for the built-in dataset, chosen so the default run finishes in about four minutes on a
# 2-core CPU (measured: see README). He initialisation there, because the paper's N(0, 0.01) needs
# far more than a few thousand steps to leave its plateau. --data runs get the paper's values.
BUILTIN = {
    "image_size": 67, "epochs": 8, "final_lr_epochs": 1, "batch_size": 64, "init": "kaiming",
    "train_size": 4000, "val_size": 1000,
}  # fmt: skip
# Evaluation keeps no activations for a backward pass, so it can take bigger batches, which read the
# fully-connected weights fewer times per image: 1.6x the images/s at 256 than at 64 on a 2-core CPU.
EVALUATION_BATCH_FACTOR = 4
PAPER = {"image_size": 227, "epochs": 90, "batch_size": 128, "init": "paper", "final_lr_epochs": 0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_triton.train",
        description="Train the 2012 AlexNet built from fused Triton kernels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = parser.add_argument_group("data and output")
    io.add_argument(
        "--data",
        help="a store from python -m alexnet_triton.prepare, or an ImageFolder root with train/ and val/ "
        "(default: the built-in shapes dataset)",
    )
    io.add_argument("--train-size", type=int, default=BUILTIN["train_size"], help="built-in dataset: training images")
    io.add_argument("--val-size", type=int, default=BUILTIN["val_size"], help="built-in dataset: held-out images")
    io.add_argument("--output-dir", default="runs", help="where run directories are created")
    io.add_argument("--name", help="run directory name (default: date and time)")
    io.add_argument("--workers", type=int, help="data loading processes (default: 0 on a CPU, else 8)")
    recipe = parser.add_argument_group("the paper's recipe (section 5)")
    recipe.add_argument("--epochs", type=int, help=f"90 for --data, {BUILTIN['epochs']} for the built-in dataset")
    recipe.add_argument("--batch-size", type=int, help="per process; 128 for --data, 64 for the built-in dataset")
    recipe.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    recipe.add_argument("--momentum", type=float, default=0.9)
    recipe.add_argument("--weight-decay", type=float, default=5e-4)
    recipe.add_argument(
        "--lr-patience", type=int, default=2, help="epochs without a better validation error before the lr is /10"
    )
    recipe.add_argument(
        "--final-lr-epochs",
        type=int,
        help="the last N epochs at a tenth of the lr (the paper's /10, on time for a short run); "
        "0 for --data (the plateau rule alone, as in the paper), 1 for the built-in dataset",
    )
    model = parser.add_argument_group("the network")
    model.add_argument("--image-size", type=int, help="crop side: 227 for --data (the paper), 67 for the built-in set")
    model.add_argument("--no-lrn", dest="lrn", action="store_false", help="ablation: no local response norm")
    model.add_argument(
        "--no-overlap", dest="overlapping_pool", action="store_false", help="ablation: 2x2 stride 2 pooling"
    )
    model.add_argument("--no-dropout", dest="dropout", action="store_false", help="ablation: no dropout")
    model.add_argument("--towers", type=int, default=2, choices=(1, 2), help="1: the one-GPU half-width net")
    model.add_argument(
        "--init",
        choices=("paper", "kaiming"),
        help="weights: paper = N(0, 0.01) (default for --data), kaiming = He (default for the built-in set)",
    )
    run = parser.add_argument_group("running")
    run.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    run.add_argument("--devices", help="two devices, one per tower, e.g. cuda:0,cuda:1 (single process)")
    run.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast precision on GPU")
    run.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="NHWC activations and weights (default: on a GPU, where the conv kernels' fast path is NHWC)",
    )
    run.add_argument(
        "--augment",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="where crops, flips and lighting are made: auto = one fused GPU kernel for a prepared store on "
        "CUDA, the loader workers otherwise",
    )
    run.add_argument("--seed", type=int, default=0, help="seeds data, augmentation, initialisation and dropout")
    run.add_argument("--max-steps", type=int, help="stop (resumably, as Ctrl-C does) after this many steps")
    run.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue from a run directory or checkpoint")
    run.add_argument("--evaluate", metavar="CHECKPOINT", help="only evaluate this checkpoint on the validation set")
    run.add_argument("--ten-crop", action="store_true", help="evaluate on ten crops, averaging the softmax")
    args = parser.parse_args(argv)
    defaults = PAPER if args.data else BUILTIN
    if args.channels_last is None:
        args.channels_last = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    for key in ("image_size", "epochs", "batch_size", "init", "final_lr_epochs"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    for key in ("epochs", "batch_size", "train_size", "val_size", "lr_patience", "final_lr_epochs"):
        if getattr(args, key) < (0 if key in ("lr_patience", "final_lr_epochs") else 1):
            parser.error(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    return args


# ---------------------------------------------------------------------------------------------
# One epoch of training
# ---------------------------------------------------------------------------------------------


def train_one_epoch(model, state: TrainingState, train_loader, pipeline, args, runtime: Runtime, stop, files: RunFiles):
    """Train model (state.model, or its DistributedDataParallel wrapper) until the epoch ends, a stop is
    requested or --max-steps is reached; returns the training metrics of the batches run in this call.
    pipeline (input_pipeline.py) turns each loader batch into crops on the device."""
    optimizer, scaler, position = state.optimizer, state.scaler, state.position
    model.train()
    loss_sum = correct = count = 0.0
    start = time.perf_counter()
    bar = tqdm(
        train_loader,
        desc=f"epoch {position.epoch + 1}/{args.epochs}",
        initial=position.batches_done,
        total=position.batches_done + len(train_loader),
        disable=not runtime.is_main,
        dynamic_ncols=True,
    )
    for batch in bar:
        images, labels = pipeline.training_batch(batch, runtime.device, args.channels_last)
        with autocast(args.amp, runtime.device):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at step {position.global_step}; try a lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

        position.batches_done += 1
        position.global_step += 1
        batch_loss = loss.item()
        loss_sum += batch_loss * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
        files.log_step(position.global_step, position.epoch + 1, batch_loss, optimizer.param_groups[0]["lr"])
        if runtime.is_main:
            rate = count * runtime.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}", img_s=f"{rate:.0f}")
        if stop.requested or (args.max_steps is not None and position.global_step >= args.max_steps):
            break
    bar.close()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], runtime)
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_top1_error": 1 - correct / max(count, 1),
        "images_per_s": count / seconds,
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------
# The program
# ---------------------------------------------------------------------------------------------


def run_directory(args: argparse.Namespace) -> str:
    if args.resume:
        return args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
    return os.path.join(args.output_dir, args.name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def train(args: argparse.Namespace, runtime: Runtime) -> dict:
    resumed = checkpoint.read(args.resume) if args.resume else None
    if resumed is not None:  # the run continues with its own recipe, whatever the command line says
        resumed.recipe.apply_to(args)
    if args.devices and runtime.world_size > 1:
        raise ValueError(
            "--devices places one tower per GPU in a single process; with torchrun each process "
            "owns a tower pair on its own GPU, so leave --devices out"
        )
    folder = run_directory(args)
    torch.manual_seed(args.seed)  # the same initial weights in every process

    train_set, val_set, classes = data.load_datasets(
        args.data, args.image_size, args.train_size, args.val_size, args.seed
    )
    if resumed is None:  # He initialisation expects unit-variance inputs; the paper's, raw pixels
        stats = data.training_statistics(args.data, train_set, args.seed, standardize=args.init == "kaiming")
    else:
        stats = resumed.stats
    state = TrainingState.start(args, runtime.device, classes, stats)
    if resumed is not None:
        state.restore(resumed, args.resume)
    position = state.position
    ddp_model = DistributedDataParallel(state.model) if runtime.world_size > 1 else state.model

    pipeline = input_pipeline.choose(
        train_set, val_set, args.image_size, state.stats, args.seed, runtime.device, augment=args.augment
    )
    train_view, val_view = pipeline.training, pipeline.evaluation
    train_sampler = DistributedSampler(train_view, runtime.world_size, runtime.rank, shuffle=True, seed=args.seed)
    val_sampler = DistributedSampler(val_view, runtime.world_size, runtime.rank, shuffle=False)
    eval_batch = EVALUATION_BATCH_FACTOR * args.batch_size
    val_loader = data.make_loader(val_view, val_sampler, eval_batch, args.workers, runtime.device, args.seed)

    def save(name: str) -> None:
        if runtime.is_main:
            checkpoint.save(state.to_checkpoint(args).to_dict(), os.path.join(folder, name))

    stop = StopRequest()
    stop.install()
    if runtime.is_main:
        print(f"run directory: {folder}")
        print(
            f"{'resuming at' if resumed else 'training'} epoch {position.epoch + 1}/{args.epochs}: "
            f"{len(train_set)} training and {len(val_set)} validation images, {len(classes)} classes, "
            f"{args.image_size}x{args.image_size} crops, {runtime.world_size} process(es) on {runtime.device}"
        )
    with RunFiles(folder, active=runtime.is_main) as files:
        while position.epoch < args.epochs:
            train_view.set_epoch(position.epoch)
            train_sampler.set_epoch(position.epoch)
            skip = position.batches_done * args.batch_size
            remaining = data.SkipFirst(train_sampler, skip)  # all of it, unless resuming mid-epoch
            train_loader = data.make_loader(
                train_view, remaining, args.batch_size, args.workers, runtime.device, args.seed
            )
            train_metrics = train_one_epoch(ddp_model, state, train_loader, pipeline, args, runtime, stop, files)
            if position.batches_done < math.ceil(len(train_sampler) / args.batch_size):  # stopped mid-epoch
                save("last.pt")
                return stopped(position, folder, runtime)
            metrics = evaluate(ddp_model, val_loader, args, runtime, ten_crop=False, pipeline=pipeline)
            lr = state.optimizer.param_groups[0]["lr"]  # the rate this epoch trained at
            state.schedule(metrics["val_top1_error"], epochs_done=position.epoch + 1, epochs=args.epochs)
            row = {"epoch": position.epoch + 1, "lr": lr, **train_metrics, **metrics}
            state.history.append(row)
            position.epoch, position.batches_done = position.epoch + 1, 0
            improved = metrics["val_top1_error"] < state.best_top1_error
            state.best_top1_error = min(state.best_top1_error, metrics["val_top1_error"])
            save("last.pt")
            if improved and runtime.is_main:  # the same checkpoint: a second name, not a second write
                checkpoint.save_same_as(os.path.join(folder, "last.pt"), os.path.join(folder, "best.pt"))
            if runtime.is_main:
                print_epoch(row)
            files.log_epoch(row, state.history, state.model)
            if stop.requested or (args.max_steps is not None and position.global_step >= args.max_steps):
                return stopped(position, folder, runtime)
        files.figure4(state.model, train_set, val_set, state.stats, args.image_size, classes)  # the paper's figure 4
    if runtime.world_size > 1:
        check_ranks_agree(state.model, runtime)
    best = state.best_top1_error
    if runtime.is_main:
        print(f"done: best validation top-1 error {best:.4f} (accuracy {1 - best:.1%}); files in {folder}")
    return {"stopped": False, "best_top1_error": best, "history": state.history}


def stopped(position: Position, folder: str, runtime: Runtime) -> dict:
    if runtime.is_main:
        print(f"stopped at step {position.global_step}; continue with --resume {folder}")
    return {"stopped": True, "position": vars(position)}


def print_epoch(row: dict) -> None:
    print(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, validation top-1 error "
        f"{row['val_top1_error']:.4f} (top-5 {row['val_top5_error']:.4f}), lr {row['lr']:g}, "
        f"{row['images_per_s']:.0f} img/s"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime = start_runtime(args.device)
    try:
        if args.evaluate:
            evaluate_checkpoint(args, runtime)
            if runtime.is_main:  # the paper's figure 4 of this network, next to its checkpoint
                figures.draw_for_checkpoint(
                    args.evaluate, args.data, runtime.device, args.devices, args.train_size, args.val_size
                )
        else:
            train(args, runtime)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_runtime(runtime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
