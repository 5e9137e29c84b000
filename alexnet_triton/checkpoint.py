"""Training checkpoints: what one holds, defined once here, and how it reaches the disk durably.

A checkpoint is a `TrainingCheckpoint`. On disk it is a plain dict of tensors, numbers, strings, lists
and dicts (its fields, the nested dataclasses as dicts), so it opens with ``torch.load(weights_only=True)``
and never runs code. `save` writes it as databases write their files (durable.write_atomically): to a
temporary file in the same folder, flushed and fsynced, renamed over the old one, then the folder
fsynced so the rename itself survives a power cut. A crash or a full disk before the rename leaves the
previous checkpoint intact, and no temporary file behind. `save_same_as` gives a saved checkpoint a
second name (best.pt for last.pt) the same way, without writing it twice.
"""

import argparse
import os
import shutil
from dataclasses import MISSING, dataclass, field, fields

import torch

from alexnet_triton import durable

# The on-disk layout; raise it when a field changes meaning. 2: rng holds each process's generators by rank (format 1
# held one process's, which every process restored).
FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, or made for another configuration."""


# ---------------------------------------------------------------------------------------------
# What a checkpoint holds
# ---------------------------------------------------------------------------------------------


@dataclass
class Position:
    """Where a run is: the next epoch to run and how many of its batches are done."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0


@dataclass
class ModelConfig:
    """What the network was built from; the checkpoint's weights fit only this network."""

    num_classes: int
    image_size: int
    lrn: bool
    overlapping_pool: bool
    dropout: bool
    towers: int
    init: str
    channels_last: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace, num_classes: int) -> "ModelConfig":
        return cls(num_classes, **{f.name: getattr(args, f.name) for f in fields(cls) if f.name != "num_classes"})


@dataclass
class Recipe:
    """The settings a resumed run takes from its checkpoint whatever the command line says (the data, the
    schedule, the network and the seed), so that it continues exactly as it began. Named as the trainer's
    command-line options (argparse destinations)."""

    data: str | None
    train_size: int
    val_size: int
    image_size: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_patience: int
    lrn: bool
    overlapping_pool: bool
    dropout: bool
    towers: int
    init: str
    seed: int
    amp: str
    channels_last: bool
    # Settings added later, with the value that reproduces runs saved before they existed:
    final_lr_epochs: int = 0

    @classmethod
    def from_args(cls, args: argparse.Namespace | dict) -> "Recipe":
        values = args if isinstance(args, dict) else vars(args)
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values or f.default is MISSING})

    def apply_to(self, args: argparse.Namespace) -> None:
        for f in fields(self):
            setattr(args, f.name, getattr(self, f.name))


@dataclass
class TrainingCheckpoint:
    """Everything a run needs to continue, or to be evaluated, from where it was saved."""

    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict
    position: Position
    best_top1_error: float
    history: list[dict]  # the rows of metrics.jsonl so far
    rng: dict  # {"ranks": [rng_state() of each process, by rank]} (format 1: one rng_state(), for every process)
    stats: dict[str, torch.Tensor]  # augmentation.rgb_statistics of the training set
    config: ModelConfig
    classes: list[str]
    args: dict  # the whole command line (vars(args)); its Recipe part is what a resume restores
    format: int = field(default=FORMAT)
    # What the images were cut from (data.image_source): {"resize": side, "store_side": a store's side or None};
    # empty in checkpoints saved before it was kept, whose runs used data.resize_size(image_size).
    images: dict = field(default_factory=dict)

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_args(self.args)

    @property
    def resize(self) -> int | None:
        """The side the run's images were rescaled to before cropping (None for checkpoints that predate it)."""
        return self.images.get("resize")

    def to_dict(self) -> dict:
        """The on-disk form: plain containers only (no dataclasses, which weights_only refuses)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        state["position"], state["config"] = vars(self.position).copy(), vars(self.config).copy()
        return state

    @classmethod
    def from_dict(cls, state: dict, path: str) -> "TrainingCheckpoint":
        required = [f for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [f.name for f in required if f.name not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path!r} is not an alexnet_triton training checkpoint (no {missing})")
        if state["format"] > FORMAT:
            raise CheckpointError(f"checkpoint {path!r} has format {state['format']}; this version reads {FORMAT}")
        values = {f.name: state[f.name] for f in fields(cls) if f.name in state}
        values["position"], values["config"] = Position(**state["position"]), ModelConfig(**state["config"])
        return cls(**values)

    @property
    def processes(self) -> int | None:
        """How many processes wrote the checkpoint (None for format 1, which did not say)."""
        return len(self.rng["ranks"]) if "ranks" in self.rng else None

    def check_processes(self, world_size: int, path: str) -> None:
        """A resume runs as many processes as the run it continues: each process's share of the data and its random
        generators are its own (a different number would train other batches on other dropout streams)."""
        count = self.processes
        if count is not None and count != world_size:
            fix = f"torchrun --nproc-per-node {count} (or nodes x processes per node = {count})"
            raise CheckpointError(
                f"checkpoint {path!r} was written by {count} process{'es' if count > 1 else ''}, this run has "
                f"{world_size}; resume it with {'one process (no torchrun)' if count == 1 else fix}"
            )

    def check_classes(self, num_classes: int, path: str) -> None:
        if self.config.num_classes != num_classes:
            raise CheckpointError(
                f"checkpoint {path!r} was trained for {self.config.num_classes} classes, but the data has {num_classes}"
            )


def read(path: str) -> TrainingCheckpoint:
    """A training checkpoint from a file, or from a run directory's last.pt; CheckpointError if unusable."""
    path = os.path.join(path, "last.pt") if os.path.isdir(path) else path
    return TrainingCheckpoint.from_dict(load(path), path)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def save(state: dict, path: str) -> None:
    """Write state to path atomically and durably (durable.write_atomically: temp file, fsync, rename,
    fsync the folder)."""
    durable.write_atomically(path, lambda file: torch.save(state, file))


def save_same_as(source: str, path: str) -> None:
    """Make path hold the checkpoint already saved at source, atomically and durably, without writing it
    again (a second name for its file: a later save replaces source's name, not the file). Where the
    filesystem has no hard links, the bytes are copied."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        os.link(source, temporary)
    except OSError:  # no hard links here (FAT, some network filesystems)
        with open(source, "rb") as original:
            durable.write_atomically(path, lambda file: shutil.copyfileobj(original, file))
        return
    try:
        os.replace(temporary, path)
    except BaseException:
        os.remove(temporary)
        raise
    durable.sync_folder(folder)


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by save; CheckpointError if it is missing or unreadable."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"checkpoint {path!r} cannot be read (corrupt or not a checkpoint): {error}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path!r} is not an alexnet_triton training checkpoint")
    return state


# ---------------------------------------------------------------------------------------------
# Random generators
# ---------------------------------------------------------------------------------------------


def rng_state(devices=()) -> dict:
    """This process's random generators a training step draws from (dropout's seeds): PyTorch's CPU generator
    ("torch"), and ("cuda", where the network runs on CUDA) the generator of each CUDA device in devices, in that
    order: this process's device, or --devices' two. A checkpoint holds one of these per process, by rank."""
    state = {"torch": torch.get_rng_state()}
    cuda = [torch.device(device) for device in devices if torch.device(device).type == "cuda"]
    if cuda:
        state["cuda"] = [torch.cuda.get_rng_state(device) for device in cuda]
    return state


def set_rng_state(rng: dict, rank: int = 0, world_size: int = 1, devices=(), path: str = "checkpoint") -> None:
    """Restore this process's generators from a checkpoint's rng: rank's own (rng_state()), each saved CUDA state to
    the CUDA device at the same place in devices (a device with none saved, or a run now on the CPU, keeps what it
    was seeded with). A checkpoint written by another number of processes is refused (CheckpointError). Format 1
    (one process's generators, every CUDA device's) restores as it did: the same into every process, the CUDA
    states into the devices this machine has."""
    if "ranks" not in rng:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            for index, state in enumerate(rng["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, index)
        return
    if len(rng["ranks"]) != world_size:
        raise CheckpointError(f"checkpoint {path!r} holds the random generators of {len(rng['ranks'])} process(es), "
                              f"this run has {world_size}")  # fmt: skip
    own = rng["ranks"][rank]
    torch.set_rng_state(own["torch"])
    cuda = [torch.device(device) for device in devices if torch.device(device).type == "cuda"]
    for device, state in zip(cuda, own.get("cuda", []), strict=False):
        torch.cuda.set_rng_state(state, device)
