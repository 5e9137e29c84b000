"""What a training run builds, updates and saves: the network, its optimizer, learning-rate schedule and
gradient scaler (the paper's recipe, section 5), where the run is, and the conversion to and from the
checkpoint that holds them all."""

import argparse
import math
from dataclasses import dataclass, field

import torch

from alexnet_triton import checkpoint
from alexnet_triton.checkpoint import ModelConfig, Position, TrainingCheckpoint
from alexnet_triton.model import AlexNet


def build_model(config: ModelConfig, device: torch.device, devices: str | None) -> AlexNet:
    """The network of config on device, or (devices "cuda:0,cuda:1") one tower on each."""
    model = AlexNet(
        config.num_classes,
        devices.split(",") if devices else None,
        image_size=config.image_size,
        lrn=config.lrn,
        overlapping_pool=config.overlapping_pool,
        dropout=config.dropout,
        towers=config.towers,
        init=config.init,
    )
    if not devices:
        model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


@dataclass
class TrainingState:
    model: AlexNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    config: ModelConfig
    classes: list[str]
    stats: dict[str, torch.Tensor]  # augmentation.rgb_statistics of the training set, on the CPU
    images: dict  # what the images were cut from (data.image_source)
    position: Position = field(default_factory=Position)
    best_top1_error: float = math.inf
    history: list[dict] = field(default_factory=list)  # the rows of metrics.jsonl so far
    final_lr_epochs: int = 0  # the last epochs that run at a tenth of the learning rate

    @classmethod
    def start(cls, args: argparse.Namespace, device: torch.device, classes: list[str], stats: dict,
              images: dict) -> "TrainingState":  # fmt: skip
        """A fresh run of args's recipe on images (data.image_source); initialise torch's seed first for the same
        weights everywhere."""
        config = ModelConfig.from_args(args, len(classes))
        model = build_model(config, device, args.devices)
        # fused: one pass over the weights per step instead of four; on a 2-core CPU 10 ms instead of 53
        # for the built-in run's 20 M parameters, 13% of its step.
        optimizer = torch.optim.SGD(
            model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, fused=True
        )
        # Section 5: divide the learning rate by 10 when the validation error stops improving.
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.1, patience=args.lr_patience
        )
        scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16" and device.type == "cuda")
        stats = {key: value.cpu() for key, value in stats.items()}
        return cls(model, optimizer, scheduler, scaler, config, classes, stats, images,
                   final_lr_epochs=args.final_lr_epochs)  # fmt: skip

    def schedule(self, val_top1_error: float, epochs_done: int, epochs: int) -> None:
        """The learning rate for the next epoch. Section 5: divided by 10 when the validation error stops
        improving; and once more as the last final_lr_epochs begin, which a run of a few epochs needs,
        since the plateau rule rarely fires in so few (the built-in run gains ~6 points from it)."""
        self.scheduler.step(val_top1_error)
        if epochs_done == epochs - self.final_lr_epochs:
            for group in self.optimizer.param_groups:
                group["lr"] *= 0.1

    @property
    def devices(self) -> list[torch.device]:
        """The devices this process's network lives on, in its layers' order: one, or --devices' two."""
        return list(dict.fromkeys(parameter.device for parameter in self.model.parameters()))

    def rng_state(self) -> dict:
        """This process's random generators (checkpoint.rng_state): the CPU's and its network's CUDA devices'."""
        return checkpoint.rng_state(self.devices)

    def restore(self, saved: TrainingCheckpoint, path: str, rank: int = 0, world_size: int = 1) -> None:
        """Continue where saved stopped: weights, optimizer, schedule, position and this process's (rank's) random
        generators; a checkpoint written by another number of processes is refused (CheckpointError)."""
        saved.check_classes(len(self.classes), path)
        saved.check_processes(world_size, path)
        self.model.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict(saved.scheduler)
        self.scaler.load_state_dict(saved.scaler)
        self.position, self.best_top1_error, self.history = saved.position, saved.best_top1_error, saved.history
        checkpoint.set_rng_state(saved.rng, rank, world_size, self.devices, path)

    def to_checkpoint(self, args: argparse.Namespace, rng_by_rank: list[dict] | None = None) -> TrainingCheckpoint:
        """The checkpoint of this state; rng_by_rank: every process's rng_state(), by rank (runtime.gather_objects),
        default this process's alone (a single process)."""
        return TrainingCheckpoint(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            position=Position(**vars(self.position)),
            best_top1_error=self.best_top1_error,
            history=self.history,
            rng={"ranks": rng_by_rank if rng_by_rank is not None else [self.rng_state()]},
            stats=self.stats,
            config=self.config,
            classes=self.classes,
            args=vars(args).copy(),
            images=dict(self.images),
        )
