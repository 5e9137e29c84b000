"""The trainer's command line: its options, grouped as --help shows them, and the defaults that depend on the
data (the built-in shapes dataset or ImageNet-like --data)."""

import argparse

from alexnet_triton import step_graph
from alexnet_triton.cli_help import HelpWithDefaults
from alexnet_triton.runtime import resolve_device

# Defaults for the built-in dataset, chosen so the default run finishes in about two and a half minutes on
# a 2-core CPU with 80% or more held-out accuracy (measured, seeds 0-3: 82-91%; see README). He
# initialisation there, because the paper's N(0, 0.01) needs far more than a few thousand steps to leave its
# plateau. --data runs get the paper's values.
BUILTIN = {
    "image_size": 67, "epochs": 10, "final_lr_epochs": 1, "batch_size": 64, "init": "kaiming",
    "train_size": 4000, "val_size": 1000,
}  # fmt: skip
PAPER = {"image_size": 227, "epochs": 90, "batch_size": 128, "init": "paper", "final_lr_epochs": 0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_triton.train",
        description="Train the 2012 AlexNet built from fused Triton kernels.",
        formatter_class=HelpWithDefaults,
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
    recipe.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    recipe.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
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
    run.add_argument(
        "--amp",
        choices=("none", "bf16", "fp16"),
        default="none",
        help="autocast precision; bf16 also on a CPU (1.5x the images/s of fp32 on an AVX512-BF16 CPU), fp16 on a "
        "GPU only",
    )
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
    run.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        help=f"after {step_graph.TRAINING_WARMUP} warm-up steps, replay each training step (forward, loss, backward, "
        "the SGD update) as one CUDA graph over static input buffers, and evaluation's forward pass likewise at its "
        "batch size; captured again when the learning rate changes and after --resume. Off, with a line saying why, "
        "for --devices, torchrun and --amp fp16; a capture that fails says why and the run goes on without graphs "
        "(default: on a GPU; a CPU has none)",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network, once for the training and once for the evaluation batch size; on a GPU "
        "each fused op stays one node of the compiled graph, on a CPU their reference math is compiled; works with "
        "--cuda-graphs",
    )
    run.add_argument("--seed", type=int, default=0, help="seeds data, augmentation, initialisation and dropout")
    run.add_argument(
        "--log-every",
        type=int,
        default=20,
        metavar="N",
        help="read the loss from the device every N steps (and at an epoch's first step, its end and a stop) and "
        "write those steps' rows to steps.csv then; a non-finite loss stops the run there (up to N - 1 steps late), "
        "naming its step, with no checkpoint saved after it",
    )
    run.add_argument("--max-steps", type=int, help="stop (resumably, as Ctrl-C does) after this many steps")
    run.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue from a run directory or checkpoint")
    run.add_argument("--evaluate", metavar="CHECKPOINT", help="only evaluate this checkpoint on the validation set")
    run.add_argument("--ten-crop", action="store_true", help="evaluate on ten crops, averaging the softmax")
    args = parser.parse_args(argv)
    defaults = PAPER if args.data else BUILTIN
    on_gpu = resolve_device(args.device).type == "cuda"
    if args.channels_last is None:
        args.channels_last = on_gpu
    if args.cuda_graphs is None:
        args.cuda_graphs = on_gpu
    elif args.cuda_graphs and not on_gpu:
        parser.error("--cuda-graphs needs a GPU (a CUDA graph replays GPU work); leave it out on a CPU")
    if args.amp == "fp16" and not on_gpu:
        parser.error("--amp fp16 needs a GPU (a CPU has no fast fp16, and no loss scaling runs there); use --amp bf16")
    for key in ("image_size", "epochs", "batch_size", "init", "final_lr_epochs"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    for key in ("epochs", "batch_size", "train_size", "val_size", "lr_patience", "final_lr_epochs", "log_every"):
        if getattr(args, key) < (0 if key in ("lr_patience", "final_lr_epochs") else 1):
            parser.error(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    return args
