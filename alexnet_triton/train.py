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
loss of every step, written and flushed every --log-every N steps), curves.png, conv1_filters.png (figure 3),
predictions.png and neighbours.png (figure 4, at the end; --evaluate draws them too), last.pt and
best.pt (checkpoints, written atomically and durably), and TensorBoard events when tensorboard is
installed. Ctrl-C or SIGTERM finishes the current step, saves last.pt and exits; --resume then continues
exactly where the run stopped. Under torchrun every process stops at the same step, the next logging point (within
--log-every steps) or the end of an evaluation, whichever process the signal reached (runtime.StopRequest); a
resume needs as many processes as the run it continues.

Unreadable images in --data are skipped with a warning naming the file (the next image takes their
place); a missing or empty data folder, a folder without class subfolders, a corrupt checkpoint or one
trained for another number of classes stop the run with a message that names it.

On a GPU each training step, after 3 warm-up steps, replays one CUDA graph of the whole step (forward, loss,
backward, the SGD update), and evaluation replays one of its forward pass (--no-cuda-graphs: eager steps);
--compile runs the network through torch.compile.

This file holds train_one_epoch, the epoch loop and main; the rest has its own module: train_options.py
(the command line and its defaults), evaluation.py (evaluate, --evaluate), data.py (datasets, loaders),
input_pipeline.py (crops on the device), training_state.py (network, optimizer, schedule), step_graph.py (a step
as one CUDA graph), checkpoint.py (what a checkpoint holds), run_files.py (logs and figures), runtime.py
(processes, devices, signals, memory, torch.compile).
"""

import argparse
import datetime
import functools
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from alexnet_triton import checkpoint, data, figures, input_pipeline, step_graph
from alexnet_triton.checkpoint import Position
from alexnet_triton.evaluation import evaluate, evaluate_checkpoint, forward_pass
from alexnet_triton.run_files import RunFiles
from alexnet_triton.runtime import (
    NonFiniteLoss,
    Runtime,
    StopRequest,
    Verdict,
    all_reduce_sum,
    autocast,
    check_ranks_agree,
    compiled,
    gather_objects,
    injected_nan_step,
    seed_process_generators,
    start_runtime,
    stop_runtime,
)
from alexnet_triton.train_options import parse_args
from alexnet_triton.training_state import TrainingState

# Evaluation keeps no activations for a backward pass, so it can take bigger batches, which read the
# fully-connected weights fewer times per image: 1.6x the images/s at 256 than at 64 on a 2-core CPU. Its
# batch is at most this many training batches, evened out over the held-out images (data.even_batch_size).
EVALUATION_BATCH_FACTOR = 4


# ---------------------------------------------------------------------------------------------
# One epoch of training
# ---------------------------------------------------------------------------------------------


def train_one_epoch(model, state: TrainingState, train_loader, pipeline, args, runtime: Runtime, stop, files: RunFiles,
                    step=None):  # fmt: skip
    """Train model (state.model, or its DistributedDataParallel or torch.compile wrapper) until the epoch ends, a
    stop is requested or --max-steps is reached; returns the training metrics of the batches run in this call.
    pipeline (input_pipeline.py) turns each loader batch into crops on the device; step runs each SGD step
    (training_step).

    Nothing in the loop reads a value from the device (DESIGN.md, "Syncs"): StepLog keeps the steps' numbers
    there and reads them at logging points only, the last one before this returns, so a non-finite loss is
    raised before the caller saves a checkpoint. Each logging point is also where the processes of a torchrun run
    agree (stop.agree: one small all-reduce, nothing in one process) on a stop and on a non-finite loss, so that
    every process leaves the loop, or raises, at the same step."""
    position = state.position
    model.train()
    log = StepLog(runtime.device, files)
    start = time.perf_counter()
    bar = tqdm(
        train_loader,
        desc=f"epoch {position.epoch + 1}/{args.epochs}",
        initial=position.batches_done,
        total=position.batches_done + len(train_loader),
        disable=not runtime.is_main,
        dynamic_ncols=True,
    )

    def logging_point() -> tuple[float, float]:
        loss_sum, correct = log.read()
        raise_if_non_finite(stop.agree(log.nonfinite), runtime)
        if runtime.is_main:
            rate = log.count * runtime.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / log.count:.3f}", acc=f"{correct / log.count:.3f}", img_s=f"{rate:.0f}")
        return loss_sum, correct

    nan_step = injected_nan_step(runtime.rank)  # TEST ONLY (runtime.TEST_NAN_LOSS): None in every real run
    for batch in bar:
        loss, logits, labels = training_step(model, state, batch, pipeline, args, runtime, step)
        position.batches_done += 1
        position.global_step += 1
        if position.global_step == nan_step:  # TEST ONLY: the fault injection's NaN loss
            loss = loss * math.nan
        log.add(position.global_step, position.epoch + 1, state.optimizer.param_groups[0]["lr"], loss, logits, labels)
        # Every --log-every N steps, and the epoch's first step (the bar's numbers at once; the first row of
        # steps.csv, a sign that the loop runs).
        if log.steps == 1 or position.global_step % args.log_every == 0:
            logging_point()
        # stop.now: in one process a stop asked during this step; in several, one agreed at this step's logging
        # point (asked since the last one, it waits for the next: every process must leave after the same step).
        if stop.now or (args.max_steps is not None and position.global_step >= args.max_steps):
            break
    # The loop's last logging point; every process reaches it after the same step (the epoch's end, --max-steps or
    # an agreed stop), and a resumed epoch that has no step left skips it in every process alike.
    loss_sum, correct = logging_point() if log.steps else (0.0, 0.0)  # the rows since the last one
    bar.close()
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, log.count], runtime)
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_top1_error": 1 - correct / max(count, 1),
        "images_per_s": count / seconds,
        "seconds": seconds,
    }


def training_step(model, state: TrainingState, batch, pipeline, args, runtime: Runtime, step=None):
    """One step of SGD on a loader batch; returns (loss, logits, labels), device tensors nobody has read.
    step(images, labels) -> (loss, logits) runs it: sgd_step, or a step_graph.GraphedStep of it that replays one CUDA
    graph (its outputs then change at the next step: StepLog.add reads them at once). None: sgd_step of model."""
    images, labels = pipeline.training_batch(batch, runtime.device, args.channels_last)
    if step is None:
        step = functools.partial(sgd_step, model, state, args.amp, runtime.device)
    loss, logits = step(images, labels)
    return loss, logits, labels


def sgd_step(model, state: TrainingState, amp: str, device: torch.device, images, labels):
    """Forward, loss, backward and the optimizer's update on a batch on the device; returns (loss, logits), detached.
    The same work eagerly or captured into a CUDA graph (step_graph.py): nothing here reads the device."""
    optimizer, scaler = state.optimizer, state.scaler
    with autocast(amp, device):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    # Under --amp fp16 the scaler skips the update of a step whose scaled gradients overflowed, on the device
    # (the fused SGD reads its found-inf flag there), and lowers the scale: a normal event, not an error. A
    # non-finite loss is another matter (the forward pass itself overflowed, or the weights are spoiled):
    # StepLog stops the run at it whatever the precision.
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


def graphed_steps(model, state: TrainingState, args, runtime: Runtime):
    """(training step, evaluation pass): each replays a CUDA graph under --cuda-graphs (step_graph.py), unless this
    run cannot (a line says why, once), else runs eagerly. Built after any resume: a graph bakes in the addresses of
    the optimizer's state, which a resume replaces."""
    train_step = functools.partial(sgd_step, model, state, args.amp, runtime.device)
    evaluation_pass = forward_pass(model, args.amp, runtime.device, ten_crop=False)
    graphs = step_graph.graphs_for(
        args.cuda_graphs, runtime.device, args.amp, args.devices, runtime.world_size, runtime.is_main
    )
    if graphs is None:
        return train_step, evaluation_pass
    train_step = step_graph.GraphedStep(
        train_step, graphs, name="training step", warmup=step_graph.TRAINING_WARMUP,
        prepare=lambda: state.optimizer.zero_grad(set_to_none=True),
        baked=lambda: step_graph.hyperparameters(state.optimizer),
    )  # fmt: skip
    evaluation_pass = step_graph.GraphedStep(
        evaluation_pass, graphs, name="evaluation pass", warmup=step_graph.EVALUATION_WARMUP
    )
    return train_step, evaluation_pass


class StepLog:
    """An epoch's training steps as the device computes them, read by the host at logging points only: every
    --log-every N steps, the epoch's first step, its end and a stop.

    Reading a value from a GPU (.item(), bool(t), .tolist()) makes the host wait until the GPU has finished
    all it was given, and the GPU then idles while the host prepares the next step. So a step only queues
    work: its loss stays on the device, the epoch's loss and correct-label sums grow there, and a logging
    point reads them all in one transfer, writes the steps' rows to steps.csv in one go (one row per step,
    as before: the per-step history is kept, and `tail -f` sees rows in bursts of N) and checks every loss
    it read (nonfinite: the first that is not finite).

    A non-finite loss is therefore raised at the next logging point, not at its own step: up to N - 1 more
    steps run after it, on weights it has spoiled (under --amp fp16 the scaler skips its update instead).
    The error names the first non-finite step, steps.csv ends with that step's row, and no checkpoint is
    written from the spoiled weights: the trainer saves only after the epoch's last logging point
    (train_one_epoch's end), so last.pt stays the one from before the step. In a multi-process run each
    process reads its own losses and the logging point's agreement (StopRequest.agree) combines their verdicts:
    every process raises there, naming the earliest non-finite step and the rank it was seen on."""

    def __init__(self, device: torch.device, files: RunFiles):
        self.files = files
        # Sums over this call's images, in float64 as the Python floats they replaced: every step adds to them
        # on the device, and nothing is read.
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.steps = self.count = 0  # steps and images: batch sizes are known on the host
        self.pending: list[tuple[int, int, float, torch.Tensor]] = []  # (step, epoch, lr, loss): rows to write
        self.nonfinite: tuple[int, float] | None = None  # (step, loss): the first non-finite loss read

    def add(self, step: int, epoch: int, lr: float, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
        """A step's numbers, kept on the device."""
        loss = loss.to(torch.float64, copy=True)  # a copy: a graph's replay overwrites its loss at the next step
        self.loss_sum += loss * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.steps += 1
        self.count += len(labels)
        self.pending.append((step, epoch, lr, loss))

    def read(self) -> tuple[float, float]:
        """A logging point: the loss and correct-label sums so far, after the pending steps' rows are written
        to steps.csv; at a non-finite loss, its row is the last written and nonfinite names its step and value (the
        caller raises, raise_if_non_finite, once the processes agree)."""
        values = torch.stack([self.loss_sum, self.correct, *(loss for *_, loss in self.pending)]).tolist()
        rows = []
        for (step, epoch, lr, _), loss in zip(self.pending, values[2:], strict=True):
            rows.append((step, epoch, loss, lr))
            if not math.isfinite(loss):
                self.nonfinite = (step, loss)
                break
        self.files.log_steps(rows)
        self.pending.clear()
        return values[0], values[1]


def raise_if_non_finite(verdict: Verdict, runtime: Runtime) -> None:
    """NonFiniteLoss, in every process alike, when the agreed verdict holds a non-finite loss."""
    if verdict.nonfinite is not None:
        step, rank, value = verdict.nonfinite
        where = f" on rank {rank}" if runtime.world_size > 1 else ""
        raise NonFiniteLoss(f"the loss became {value} at step {step}{where}; try a lower --lr")


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
        resumed.check_processes(runtime.world_size, args.resume)
        resumed.recipe.apply_to(args)
    if args.devices and runtime.world_size > 1:
        raise ValueError(
            "--devices places one tower per GPU in a single process; with torchrun each process "
            "owns a tower pair on its own GPU, so leave --devices out"
        )
    folder = run_directory(args)
    torch.manual_seed(args.seed)  # the same initial weights in every process

    train_set, val_set, classes = data.load_datasets(
        args.data, args.image_size, args.train_size, args.val_size, args.seed, resumed.resize if resumed else None
    )
    # Whole batches only (a partial one would make the GPU kernels tune and compile again); refused at once
    # when the training set is smaller than one batch.
    steps_per_epoch = data.steps_per_epoch(len(train_set), args.batch_size, runtime.world_size)
    if resumed is None:  # He initialisation expects unit-variance inputs; the paper's, raw pixels
        stats = data.training_statistics(args.data, train_set, args.seed, standardize=args.init == "kaiming")
    else:
        stats = resumed.stats
    state = TrainingState.start(args, runtime.device, classes, stats, data.image_source(train_set))
    seed_process_generators(args.seed, runtime)  # the same weights everywhere; a dropout stream per process
    if resumed is not None:
        state.restore(resumed, args.resume, runtime.rank, runtime.world_size)
    position = state.position
    ddp_model = DistributedDataParallel(state.model) if runtime.world_size > 1 else state.model
    if args.compile:  # checkpoints keep state.model's own names; steps run the compiled wrapper
        ddp_model = compiled(ddp_model)
    train_step, evaluation_pass = graphed_steps(ddp_model, state, args, runtime)

    pipeline = input_pipeline.choose(
        train_set, val_set, args.image_size, state.stats, args.seed, runtime.device, augment=args.augment
    )
    train_view, val_view = pipeline.training, pipeline.evaluation
    train_sampler = DistributedSampler(train_view, runtime.world_size, runtime.rank, shuffle=True, seed=args.seed)
    val_sampler = DistributedSampler(val_view, runtime.world_size, runtime.rank, shuffle=False)
    eval_batch = data.even_batch_size(len(val_sampler), EVALUATION_BATCH_FACTOR * args.batch_size)
    val_loader = data.make_loader(val_view, val_sampler, eval_batch, args.workers, runtime.device, args.seed)

    def save(name: str) -> None:
        """Every process calls it at the same step: each one's random generators, by rank, into rank 0's checkpoint."""
        rng_by_rank = gather_objects(state.rng_state(), runtime)
        if runtime.is_main:
            checkpoint.save(state.to_checkpoint(args, rng_by_rank).to_dict(), os.path.join(folder, name))

    stop = StopRequest(runtime, args.log_every)
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
                train_view, remaining, args.batch_size, args.workers, runtime.device, args.seed, drop_last=True
            )
            train_metrics = train_one_epoch(
                ddp_model, state, train_loader, pipeline, args, runtime, stop, files, train_step
            )
            if position.batches_done < steps_per_epoch:  # stopped mid-epoch
                save("last.pt")
                return stopped(position, folder, runtime)
            metrics = evaluate(
                ddp_model, val_loader, args, runtime, ten_crop=False, pipeline=pipeline, forward=evaluation_pass
            )
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
            stop.agree()  # a stop asked during the evaluation, agreed now that every process has left it
            if stop.now or (args.max_steps is not None and position.global_step >= args.max_steps):
                return stopped(position, folder, runtime)
        # The paper's figure 4, as evaluation runs the network: its batch size, layout and autocast.
        with autocast(args.amp, runtime.device):
            files.figure4(
                state.model, train_set, val_set, state.stats, args.image_size, classes, eval_batch, args.channels_last
            )
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
        if runtime.is_main or not isinstance(error, NonFiniteLoss):  # an agreed error: every process has it
            print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        stop_runtime(runtime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
