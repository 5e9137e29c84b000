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
loss of every step), curves.png, conv1_filters.png (figure 3), last.pt and best.pt (checkpoints, written
atomically), and TensorBoard events when tensorboard is installed. Ctrl-C or SIGTERM finishes the current
step, saves last.pt and exits; --resume then continues exactly where the run stopped.

Unreadable images in --data are skipped with a warning naming the file (the next image takes their
place); a missing or empty data folder, a folder without class subfolders, a corrupt checkpoint or one
trained for another number of classes stop the run with a message that names it.
"""

import argparse
import csv
import datetime
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from alexnet_triton import checkpoint, data, plots
from alexnet_triton.model import AlexNet

# Defaults for the built-in dataset, chosen so the default run finishes in about four minutes on a
# 2-core CPU (measured: see README). He initialisation there, because the paper's N(0, 0.01) needs
# far more than a few thousand steps to leave its plateau. --data runs get the paper's values.
BUILTIN = {"image_size": 67, "epochs": 10, "batch_size": 64, "init": "kaiming", "train_size": 4000, "val_size": 1000}
PAPER = {"image_size": 227, "epochs": 90, "batch_size": 128, "init": "paper"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_triton.train",
        description="Train the 2012 AlexNet built from fused Triton kernels.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = parser.add_argument_group("data and output")
    io.add_argument("--data", help="ImageFolder root with train/ and val/ (default: the built-in shapes dataset)")
    io.add_argument("--train-size", type=int, default=BUILTIN["train_size"], help="built-in dataset: training images")
    io.add_argument("--val-size", type=int, default=BUILTIN["val_size"], help="built-in dataset: held-out images")
    io.add_argument("--output-dir", default="runs", help="where run directories are created")
    io.add_argument("--name", help="run directory name (default: date and time)")
    io.add_argument("--workers", type=int, help="data loading processes (default: 0 on a CPU, else 8)")
    recipe = parser.add_argument_group("the paper's recipe (section 5)")
    recipe.add_argument("--epochs", type=int, help="90 for --data, 10 for the built-in dataset")
    recipe.add_argument("--batch-size", type=int, help="per process; 128 for --data, 64 for the built-in dataset")
    recipe.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    recipe.add_argument("--momentum", type=float, default=0.9)
    recipe.add_argument("--weight-decay", type=float, default=5e-4)
    recipe.add_argument(
        "--lr-patience", type=int, default=2, help="epochs without a better validation error before the lr is /10"
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
    run.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    run.add_argument("--seed", type=int, default=0, help="seeds data, augmentation, initialisation and dropout")
    run.add_argument("--max-steps", type=int, help="stop (resumably, as Ctrl-C does) after this many steps")
    run.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue from a run directory or checkpoint")
    run.add_argument("--evaluate", metavar="CHECKPOINT", help="only evaluate this checkpoint on the validation set")
    run.add_argument("--ten-crop", action="store_true", help="evaluate on ten crops, averaging the softmax")
    args = parser.parse_args(argv)
    defaults = PAPER if args.data else BUILTIN
    for key in ("image_size", "epochs", "batch_size", "init"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    for key in ("epochs", "batch_size", "train_size", "val_size", "lr_patience"):
        if getattr(args, key) < (0 if key == "lr_patience" else 1):
            parser.error(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    return args


# ---------------------------------------------------------------------------------------------
# Processes and devices
# ---------------------------------------------------------------------------------------------


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_runtime(args: argparse.Namespace) -> Runtime:
    """One process, or one of WORLD_SIZE started by torchrun (NCCL on GPUs, gloo on CPUs)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    wanted = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but no CUDA GPU is available")
    device = torch.device(wanted)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        # Early in training many activations are tiny; denormal arithmetic makes CPUs ~10x slower.
        torch.set_flush_denormal(True)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world_size, device)


def all_reduce_sum(values: list[float], runtime: Runtime) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    if runtime.world_size > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, list[str]]:
    """(train, val, class names); the raw images, before augmentation."""
    if args.data is None:
        train = data.ShapesDataset("train", args.train_size, args.image_size, seed=args.seed)
        val = data.ShapesDataset("val", args.val_size, args.image_size, seed=args.seed)
    else:
        train = data.ImageFolderDataset(os.path.join(args.data, "train"), args.image_size)
        val = data.ImageFolderDataset(os.path.join(args.data, "val"), args.image_size)
        if val.classes != train.classes:
            raise ValueError(f"{args.data}/val has classes {val.classes[:5]}... unlike train's {train.classes[:5]}...")
    return train, val, train.classes


class SkipFirst(torch.utils.data.Sampler):
    """A DistributedSampler's epoch minus the samples already trained on (for a mid-epoch resume)."""

    def __init__(self, sampler: DistributedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return iter(list(self.sampler)[self.skip :])

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


def loader(dataset: Dataset, sampler, args: argparse.Namespace, runtime: Runtime, batch_size: int) -> DataLoader:
    workers = args.workers if args.workers is not None else (0 if runtime.device.type == "cpu" else 8)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",
        drop_last=False,
        # Its own generator: a loader draws a seed for its workers each epoch, and drawing it from the
        # global one would shift the dropout seeds after a resume.
        generator=torch.Generator().manual_seed(args.seed),
    )


# ---------------------------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------------------------


class StopRequest:
    """Set by Ctrl-C or SIGTERM; the loop saves and exits after the current step. A second Ctrl-C
    stops at once."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
            print(f"\n{signal.Signals(signum).name}: saving after this step (Ctrl-C again to stop at once)")

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def autocast(args: argparse.Namespace, device: torch.device):
    enabled = args.amp != "none" and device.type == "cuda"
    dtype = torch.bfloat16 if args.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def to_device(images: torch.Tensor, labels: torch.Tensor, args, runtime: Runtime):
    memory_format = torch.channels_last if args.channels_last and images.dim() == 4 else torch.contiguous_format
    images = images.to(runtime.device, non_blocking=True, memory_format=memory_format)
    return images, labels.to(runtime.device, non_blocking=True)


@torch.no_grad()
def evaluate(model, val_loader: DataLoader, args, runtime: Runtime, ten_crop: bool) -> dict:
    """Loss and top-1 / top-5 error on the validation set (summed over all processes)."""
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, labels in val_loader:
        images, labels = to_device(images, labels, args, runtime)
        with autocast(args, runtime.device):
            if ten_crop:  # (N, 10, 3, s, s): average the softmax over the crops (section 4.1)
                n, crops = images.shape[:2]
                probabilities = model(images.flatten(0, 1)).float().softmax(-1).view(n, crops, -1).mean(1)
            else:
                probabilities = model(images).float().softmax(-1)
        loss_sum += F.nll_loss(probabilities.clamp_min(1e-12).log(), labels, reduction="sum").item()
        top5 = probabilities.topk(min(5, probabilities.shape[1]), dim=1).indices
        correct1 += (top5[:, 0] == labels).sum().item()
        correct5 += (top5 == labels[:, None]).any(dim=1).sum().item()
        count += len(labels)
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], runtime)
    return {
        "val_loss": loss_sum / count,
        "val_top1_error": 1 - correct1 / count,
        "val_top5_error": 1 - correct5 / count,
    }


@dataclass
class Position:
    """Where a run is: the next epoch to run and how many of its batches are done."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0


def train_one_epoch(model, optimizer, scaler, train_loader, position: Position, args, runtime, stop, steps_log):
    """Train until the epoch ends, a stop is requested or --max-steps is reached; returns the training
    metrics of the batches run in this call."""
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
    for images, labels in bar:
        images, labels = to_device(images, labels, args, runtime)
        with autocast(args, runtime.device):
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
        if runtime.is_main:
            steps_log.writerow(
                [position.global_step, position.epoch + 1, f"{batch_loss:.6f}", optimizer.param_groups[0]["lr"]]
            )
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


def build_model(config: dict, runtime: Runtime, devices: str | None) -> AlexNet:
    model = AlexNet(
        config["num_classes"],
        devices.split(",") if devices else None,
        image_size=config["image_size"],
        lrn=config["lrn"],
        overlapping_pool=config["overlapping_pool"],
        dropout=config["dropout"],
        towers=config["towers"],
        init=config["init"],
    )
    if not devices:
        model.to(runtime.device)
    if config.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    return model


def model_config(args: argparse.Namespace, num_classes: int) -> dict:
    keys = ("image_size", "lrn", "overlapping_pool", "dropout", "towers", "init", "channels_last")
    return {"num_classes": num_classes, **{key: getattr(args, key) for key in keys}}


def check_classes(state: dict, num_classes: int, path: str) -> None:
    trained = state["config"]["num_classes"]
    if trained != num_classes:
        raise checkpoint.CheckpointError(
            f"checkpoint {path!r} was trained for {trained} classes, but the data has {num_classes}"
        )


def run_evaluation(args: argparse.Namespace, runtime: Runtime) -> dict:
    state = checkpoint.load(args.evaluate)
    config = state["config"]
    args.image_size = config["image_size"]
    if args.data is None:  # the built-in dataset: the run's own held-out images
        for key in ("seed", "train_size", "val_size"):
            setattr(args, key, state["args"][key])
    _, val, classes = load_datasets(args)
    check_classes(state, len(classes), args.evaluate)
    model = build_model(config, runtime, args.devices)
    model.load_state_dict(state["model"])
    stats = {key: value.cpu() for key, value in state["stats"].items()}
    val_view = data.Evaluated(val, config["image_size"], stats, ten_crop=args.ten_crop)
    sampler = DistributedSampler(val_view, runtime.world_size, runtime.rank, shuffle=False)
    metrics = evaluate(model, loader(val_view, sampler, args, runtime, args.batch_size), args, runtime, args.ten_crop)
    if runtime.is_main:
        crops = "ten crops" if args.ten_crop else "center crop"
        print(
            f"{args.evaluate} ({crops}, {len(val)} images): top-1 error {metrics['val_top1_error']:.4f}, "
            f"top-5 error {metrics['val_top5_error']:.4f}, loss {metrics['val_loss']:.4f}"
        )
    return metrics


def run_directory(args: argparse.Namespace) -> str:
    if args.resume:
        return args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
    name = args.name or datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(args.output_dir, name)


def open_tensorboard(folder: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(folder)


def train(args: argparse.Namespace, runtime: Runtime) -> dict:
    resume_state = checkpoint.load(args.resume) if args.resume else None
    if resume_state is not None:  # the run continues with its own recipe
        saved = resume_state["args"]
        for key in ("data", "train_size", "val_size", "image_size", "epochs", "batch_size", "lr", "momentum",
                    "weight_decay", "lr_patience", "lrn", "overlapping_pool", "dropout", "towers", "init",
                    "seed", "amp", "channels_last"):  # fmt: skip
            setattr(args, key, saved[key])
    if args.devices and runtime.world_size > 1:
        raise ValueError(
            "--devices places one tower per GPU in a single process; with torchrun each process "
            "owns a tower pair on its own GPU, so leave --devices out"
        )
    folder = run_directory(args)
    torch.manual_seed(args.seed)  # the same initial weights in every process

    train_set, val_set, classes = load_datasets(args)
    if resume_state is None:  # He initialisation expects unit-variance inputs; the paper's, raw pixels
        stats = data.estimate_statistics(train_set, seed=args.seed, standardize=args.init == "kaiming")
    else:
        stats = resume_state["stats"]
    config = model_config(args, len(classes))
    model = build_model(config, runtime, args.devices)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    # Section 5: divide the learning rate by 10 when the validation error stops improving.
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=args.lr_patience)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=args.amp == "fp16" and runtime.device.type == "cuda")
    position, best_error, history = Position(), math.inf, []
    if resume_state is not None:
        check_classes(resume_state, len(classes), args.resume)
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        position = Position(**resume_state["position"])
        best_error, history = resume_state["best_top1_error"], resume_state["history"]
        checkpoint.set_rng_state(resume_state["rng"])
    stats = {key: value.cpu() for key, value in stats.items()}
    ddp_model = DistributedDataParallel(model) if runtime.world_size > 1 else model

    train_view = data.Augmented(train_set, args.image_size, stats, seed=args.seed)
    val_view = data.Evaluated(val_set, args.image_size, stats)
    train_sampler = DistributedSampler(train_view, runtime.world_size, runtime.rank, shuffle=True, seed=args.seed)
    val_sampler = DistributedSampler(val_view, runtime.world_size, runtime.rank, shuffle=False)
    val_loader = loader(val_view, val_sampler, args, runtime, args.batch_size)

    def save(path: str) -> None:
        if runtime.is_main:
            checkpoint.save(
                {
                    "format": 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "position": vars(position).copy(),
                    "best_top1_error": best_error,
                    "history": history,
                    "rng": checkpoint.rng_state(),
                    "stats": stats,
                    "config": config,
                    "classes": classes,
                    "args": vars(args).copy(),
                },
                os.path.join(folder, path),
            )

    stop = StopRequest()
    stop.install()
    writer = None
    if runtime.is_main:
        os.makedirs(folder, exist_ok=True)
        print(f"run directory: {folder}")
        print(
            f"{'resuming at' if resume_state else 'training'} epoch {position.epoch + 1}/{args.epochs}: "
            f"{len(train_set)} training and {len(val_set)} validation images, {len(classes)} classes, "
            f"{args.image_size}x{args.image_size} crops, {runtime.world_size} process(es) on {runtime.device}"
        )
        writer = open_tensorboard(folder)
    steps_file = open(os.path.join(folder, "steps.csv"), "a", newline="") if runtime.is_main else None  # noqa: SIM115
    steps_log = csv.writer(steps_file) if steps_file else None
    if steps_file and steps_file.tell() == 0:
        steps_log.writerow(["step", "epoch", "loss", "lr"])

    try:
        while position.epoch < args.epochs:
            train_view.set_epoch(position.epoch)
            train_sampler.set_epoch(position.epoch)
            skip = position.batches_done * args.batch_size
            train_loader = loader(train_view, SkipFirst(train_sampler, skip), args, runtime, args.batch_size)
            train_metrics = train_one_epoch(
                ddp_model, optimizer, scaler, train_loader, position, args, runtime, stop, steps_log
            )
            if position.batches_done < math.ceil(len(train_sampler) / args.batch_size):  # stopped mid-epoch
                save("last.pt")
                if runtime.is_main:
                    print(f"stopped at step {position.global_step}; continue with --resume {folder}")
                return {"stopped": True, "position": vars(position)}
            metrics = evaluate(ddp_model, val_loader, args, runtime, ten_crop=False)
            scheduler.step(metrics["val_top1_error"])
            row = {"epoch": position.epoch + 1, "lr": optimizer.param_groups[0]["lr"], **train_metrics, **metrics}
            history.append(row)
            position.epoch, position.batches_done = position.epoch + 1, 0
            improved = metrics["val_top1_error"] < best_error
            best_error = min(best_error, metrics["val_top1_error"])
            save("last.pt")
            if improved:
                save("best.pt")
            if runtime.is_main:
                report_epoch(row, folder, history, model, writer)
            if stop.requested or (args.max_steps is not None and position.global_step >= args.max_steps):
                return {"stopped": True, "position": vars(position)}
    finally:
        if steps_file:
            steps_file.close()
        if writer:
            writer.close()
    if runtime.world_size > 1:
        check_ranks_agree(model, runtime)
    if runtime.is_main:
        print(f"done: best validation top-1 error {best_error:.4f} (accuracy {1 - best_error:.1%}); files in {folder}")
    return {"stopped": False, "best_top1_error": best_error, "history": history}


def check_ranks_agree(model: torch.nn.Module, runtime: Runtime) -> None:
    """Data-parallel processes must end with the same weights; a cheap fingerprint proves it."""
    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(runtime.device)
    gathered = [torch.empty_like(fingerprint) for _ in range(runtime.world_size)]
    dist.all_gather(gathered, fingerprint)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("data-parallel processes ended with different weights")
    if runtime.is_main:
        print(f"all {runtime.world_size} ranks agree on the final weights")


def report_epoch(row: dict, folder: str, history: list[dict], model: AlexNet, writer) -> None:
    print(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, validation top-1 error "
        f"{row['val_top1_error']:.4f} (top-5 {row['val_top5_error']:.4f}), lr {row['lr']:g}, "
        f"{row['images_per_s']:.0f} img/s"
    )
    with open(os.path.join(folder, "metrics.jsonl"), "a") as file:
        file.write(json.dumps(row) + "\n")
    plots.training_curves(history, os.path.join(folder, "curves.png"))
    plots.conv1_filters(model, os.path.join(folder, "conv1_filters.png"))
    if writer is not None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, row["epoch"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runtime = start_runtime(args)
    try:
        if args.evaluate:
            run_evaluation(args, runtime)
        else:
            train(args, runtime)
    except (checkpoint.CheckpointError, FileNotFoundError, ValueError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if runtime.world_size > 1:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
