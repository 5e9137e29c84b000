"""Evaluation on held-out images (section 4.1 at test time): the loss and top-1 / top-5 error of the
center crop, or of the softmax averaged over the ten crops, summed over every process; and the trainer's
--evaluate mode, which measures a saved checkpoint that way."""

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from alexnet_triton import checkpoint, data, input_pipeline, step_graph
from alexnet_triton.runtime import Runtime, all_reduce_sum, autocast, compiled, to_device
from alexnet_triton.training_state import build_model


def forward_pass(model, amp: str, device: torch.device, ten_crop: bool) -> Callable[[Tensor], tuple[Tensor]]:
    """images -> (probabilities,): the network's softmax under autocast; for ten crops, (N, 10, 3, s, s) images and
    the softmax averaged over each image's crops (section 4.1). A function of its input alone, as a CUDA graph
    captures it (step_graph.GraphedStep)."""

    def probabilities_of(images: Tensor) -> tuple[Tensor]:
        with autocast(amp, device):
            if ten_crop:
                n, crops = images.shape[:2]
                return (model(images.flatten(0, 1)).float().softmax(-1).view(n, crops, -1).mean(1),)
            return (model(images).float().softmax(-1),)

    return probabilities_of


@torch.no_grad()
def evaluate(model, val_loader: DataLoader, args, runtime: Runtime, ten_crop: bool, pipeline=None,
             forward: Callable[[Tensor], tuple[Tensor]] | None = None) -> dict:  # fmt: skip
    """Loss and top-1 / top-5 error on the validation set (summed over all processes). pipeline (see
    input_pipeline.py) turns a loader batch into crops on the device; None: the batch is the crops. forward: the
    pass that gives a batch's probabilities (forward_pass, or a step_graph.GraphedStep of it: its output changes at
    the next batch, and is read at once); None: forward_pass of model.

    The network sees every batch at val_loader's batch size: the last, partial one is padded up to it
    (data.pad_rows) and the padding's outputs are left out before anything is counted, so on a GPU the
    kernels tune and compile for one evaluation size only (and one CUDA graph replays every batch), and the numbers
    are those of the real images. The sums stay on the device until the end: one read, not three per batch."""
    model.eval()
    forward = forward or forward_pass(model, args.amp, runtime.device, ten_crop)
    size = val_loader.batch_size  # None for a loader with its own batch sampler: its batches as they come
    sums = torch.zeros(3, dtype=torch.float64, device=runtime.device)  # loss, top-1 and top-5 hits
    count = 0
    for batch in val_loader:
        if pipeline is None:
            images, labels = to_device(*batch, runtime.device, args.channels_last)
        else:
            images, labels = pipeline.evaluation_batch(batch, runtime.device, args.channels_last)
        real = len(labels)
        if size is not None:
            images = data.pad_rows(images, size)
        (probabilities,) = forward(images)
        probabilities = probabilities[:real]  # the padding's rows are no images
        top5 = probabilities.topk(min(5, probabilities.shape[1]), dim=1).indices
        sums += torch.stack([
            F.nll_loss(probabilities.clamp_min(1e-12).log(), labels, reduction="sum").double(),
            (top5[:, 0] == labels).sum().double(),
            (top5 == labels[:, None]).any(dim=1).sum().double(),
        ])  # fmt: skip
        count += real
    loss_sum, correct1, correct5, count = all_reduce_sum([*sums.tolist(), count], runtime)
    return {
        "val_loss": loss_sum / count,
        "val_top1_error": 1 - correct1 / count,
        "val_top5_error": 1 - correct5 / count,
    }


def evaluate_checkpoint(args: argparse.Namespace, runtime: Runtime) -> dict:
    """--evaluate CHECKPOINT: its network on the validation images (the run's own held-out images for
    the built-in dataset), center crop or --ten-crop."""
    state = checkpoint.read(args.evaluate)
    if args.data is None:  # the built-in dataset: draw the run's own held-out images again
        for key in ("seed", "train_size", "val_size"):
            setattr(args, key, state.args[key])
    image_size = state.config.image_size
    _, val, classes = data.load_datasets(args.data, image_size, args.train_size, args.val_size, args.seed, state.resize)
    state.check_classes(len(classes), args.evaluate)
    model = build_model(state.config, runtime.device, args.devices)
    model.load_state_dict(state.model)
    forward = forward_pass(compiled(model) if args.compile else model, args.amp, runtime.device, args.ten_crop)
    graphs = step_graph.graphs_for(args.cuda_graphs, runtime.device, args.amp, args.devices, runtime.world_size,
                                   runtime.is_main)  # fmt: skip
    if graphs is not None:
        forward = step_graph.GraphedStep(forward, graphs, name="evaluation pass", warmup=step_graph.EVALUATION_WARMUP)
    stats = {key: value.cpu() for key, value in state.stats.items()}
    pipeline = input_pipeline.choose(
        val, val, image_size, stats, args.seed, runtime.device, args.ten_crop, args.augment
    )
    sampler = DistributedSampler(pipeline.evaluation, runtime.world_size, runtime.rank, shuffle=False)
    batch = data.even_batch_size(len(sampler), args.batch_size)  # images per pass (x10 crops with --ten-crop)
    val_loader = data.make_loader(pipeline.evaluation, sampler, batch, args.workers, runtime.device, args.seed)
    metrics = evaluate(model, val_loader, args, runtime, args.ten_crop, pipeline, forward)
    if runtime.is_main:
        crops = "ten crops" if args.ten_crop else "center crop"
        print(
            f"{args.evaluate} ({crops}, {len(val)} images): top-1 error {metrics['val_top1_error']:.4f}, "
            f"top-5 error {metrics['val_top5_error']:.4f}, loss {metrics['val_loss']:.4f}"
        )
    return metrics
