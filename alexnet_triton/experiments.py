"""The paper's findings as commands, on the built-in dataset (nothing is downloaded).

    python -m alexnet_triton.experiments relu-vs-tanh   # figure 1: epochs to 25% training error, ReLU vs tanh
    python -m alexnet_triton.experiments ablations      # LRN, overlapping pools, dropout, two towers: the table

Each writes its figure, a JSON of what it measured and (ablations) a markdown table into --out. The size
options default to what finishes within about half an hour each on a 2-core CPU (measured: 26 and 40
minutes on one shared with other jobs, far less idle; see README); on a GPU, raise them.
relu_vs_tanh.py and ablations.py hold the experiments; this file is the command line.
"""

import argparse
import sys
from dataclasses import fields

import torch

from alexnet_triton import ablations, checkpoint, relu_vs_tanh
from alexnet_triton.cli_help import HelpWithDefaults
from alexnet_triton.runtime import resolve_device

SETTING_HELP = {
    "epochs": "epochs each net (or run) trains",
    "seeds": "runs of each net (or variant), seeded 0, 1, ...",
    "train_size": "built-in training images",
    "val_size": "built-in held-out images",
    "batch_size": "images per step",
    "lr": "learning rate, the same for both nets",
    "momentum": "SGD momentum",
}


def add_settings(parser: argparse.ArgumentParser, settings_class) -> None:
    """An option per field of a Settings dataclass, its default the field's."""
    for f in fields(settings_class):
        name = f"--{f.name.replace('_', '-')}"
        parser.add_argument(name, type=type(f.default), default=f.default, help=SETTING_HELP[f.name])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_triton.experiments",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpWithDefaults,
    )
    commands = parser.add_subparsers(dest="experiment", required=True)
    figure1 = commands.add_parser(
        "relu-vs-tanh",
        help="figure 1: a four-layer net with ReLUs against the same net with tanh units",
        description=relu_vs_tanh.__doc__.split("\n\n")[0] + " " + relu_vs_tanh.Settings.__doc__,
        formatter_class=HelpWithDefaults,
    )
    add_settings(figure1, relu_vs_tanh.Settings)
    table = commands.add_parser(
        "ablations",
        help="the default run and one each without LRN, overlapping pools, dropout, and with one tower",
        description=ablations.__doc__.split("\n\n")[0] + " " + ablations.Settings.__doc__,
        formatter_class=HelpWithDefaults,
    )
    add_settings(table, ablations.Settings)
    for command in (figure1, table):
        command.add_argument("--out", default="experiments", help="folder for the figure, table and JSON")
        command.add_argument("--device", help="cuda or cpu; cuda when available if not given")
    args = parser.parse_args(argv)
    for f in fields(relu_vs_tanh.Settings if args.experiment == "relu-vs-tanh" else ablations.Settings):
        if getattr(args, f.name) <= 0:
            parser.error(f"--{f.name.replace('_', '-')} must be positive, got {getattr(args, f.name)}")
    return args


def settings_from(args: argparse.Namespace, settings_class):
    return settings_class(**{f.name: getattr(args, f.name) for f in fields(settings_class)})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.experiment == "relu-vs-tanh":
            device = resolve_device(args.device)
            torch.set_flush_denormal(True)  # as the trainer does: denormals make CPUs ~10x slower
            relu_vs_tanh.run(settings_from(args, relu_vs_tanh.Settings), args.out, device)
        else:
            ablations.run(settings_from(args, ablations.Settings), args.out, args.device)
    except (checkpoint.CheckpointError, ValueError, RuntimeError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
