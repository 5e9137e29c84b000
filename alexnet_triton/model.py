"""The 2012 network (Krizhevsky, Sutskever, Hinton; section 3.5 and figure 2) from the fused ops.

Two towers, one per GPU in the paper. A tower's layers 1, 2, 4 and 5 read only that tower's features;
layer 3 and the fully-connected layers 6, 7 and 8 read both towers', through an explicit exchange that
copies the other tower's features across (a no-op copy when both live on one device).

`LAYERS` below is the network, one row per layer: everything else (the towers here, the plain-torch
twin, the benchmarks' shapes, the tests' shapes and compile specs) is derived from it.

fc6 and fc7 are written as convolutions whose kernel covers the whole feature map (6x6, then 1x1):
the same arithmetic as a linear layer on the flattened map, and it lets bias and ReLU fuse into the
same kernel as every conv layer. LRN is the paper's (k=2, n=5, alpha=1e-4, beta=0.75), which in
PyTorch's convention (alpha divided by n) is alpha=5e-4.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from alexnet_triton import functional as at_functional
from alexnet_triton import nn as fused
from alexnet_triton.kernels._common import output_size

# Section 3.3, in PyTorch's convention (alpha divided by size).
PAPER_LRN = {"size": 5, "alpha": 5e-4, "beta": 0.75, "k": 2.0}
# Section 3.4: (kernel, stride) of the overlapping pool, and of the non-overlapping one it is compared with.
OVERLAPPING_POOL = (3, 2)
NON_OVERLAPPING_POOL = (2, 2)
# Section 4.2.
DROPOUT_P = 0.5


@dataclass(frozen=True)
class Layer:
    """One layer of a tower and what follows it. Every layer but fc8 is a convolution with ReLU (fc6 and
    fc7 too, see above); fc8 is a linear layer that gives the tower's share of the logits."""

    name: str  # the tower's attribute, hence its state_dict keys (towers.0.conv1.weight, ...)
    width: int | None  # output channels per tower in the two-tower net; None: a share of the classes
    one_tower_width: int | None  # in the one-GPU net of section 3.2
    kernel: int | None  # square; None: the whole feature map it reads
    stride: int = 1
    padding: int = 0
    reads: Literal["image", "own tower", "both towers"] = "own tower"  # "both towers": after an exchange
    relu: bool = True  # False: a linear layer on the flattened map, giving logits
    lrn: bool = False  # followed by the paper's LRN (section 3.3), when the network has LRN
    pool: bool = False  # followed by max-pool (section 3.4)
    dropout: bool = False  # followed by dropout (section 4.2), when the network has dropout
    paper_bias: float = 0.0  # initial bias with init="paper" (section 5)

    @property
    def number(self) -> int:
        """1 for conv1 ... 8 for fc8: it names the modules that follow (norm1, pool5, drop6)."""
        return int(self.name[-1])

    @property
    def fully_connected(self) -> bool:
        return self.name.startswith("fc")


# The two-tower net of figure 2, per tower. "The net with half as many kernels in each convolutional
# layer trained on one GPU" (section 3.2) keeps, per its footnote, the last conv layer and the
# fully-connected layers at full size: one_tower_width. Comments: a tower's output for N images at
# 227x227, N x channels x height x width, then after the pool.
# fmt: off
LAYERS = (
    #     name     width  one tower  kernel
    Layer("conv1",    48,   48,   11, stride=4, reads="image", lrn=True, pool=True),        # 48 x 55 x 55 -> 27 x 27
    Layer("conv2",   128,  128,    5, padding=2, lrn=True, pool=True, paper_bias=1.0),      # 128 x 27 x 27 -> 13 x 13
    Layer("conv3",   192,  192,    3, padding=1, reads="both towers"),                      # 192 x 13 x 13
    Layer("conv4",   192,  192,    3, padding=1, paper_bias=1.0),                           # 192 x 13 x 13
    Layer("conv5",   128,  256,    3, padding=1, pool=True, paper_bias=1.0),                # 128 x 13 x 13 -> 6 x 6
    Layer("fc6",    2048, 4096, None, reads="both towers", dropout=True, paper_bias=1.0),   # 2048 x 1 x 1
    Layer("fc7",    2048, 4096,    1, reads="both towers", dropout=True, paper_bias=1.0),   # 2048 x 1 x 1
    Layer("fc8",    None, None,    1, reads="both towers", relu=False),                     # classes / 2
)
# fmt: on


def pool_window(overlapping: bool) -> tuple[int, int]:
    """(kernel, stride) of every max-pool: overlapping as in the paper, or the ablation's."""
    return OVERLAPPING_POOL if overlapping else NON_OVERLAPPING_POOL


@dataclass(frozen=True)
class LayerShape:
    """A layer of one tower in a network of a given input size: what it reads and what it writes."""

    layer: Layer
    in_channels: int  # the image's 3, its own tower's previous output, or both towers' after an exchange
    out_channels: int | None  # None: fc8, the tower's share of the classes
    kernel: int  # fc6's covers the whole map
    input_size: int  # side of the square map it reads
    output_size: int  # side of its output
    pooled_size: int  # after its pool; the output size when it has none


def layer_shapes(image_size: int = 227, *, towers: int = 2, overlapping_pool: bool = True) -> tuple[LayerShape, ...]:
    """Every layer's shape in a tower, in LAYERS' order, for square images of side image_size."""
    pool_kernel, pool_stride = pool_window(overlapping_pool)
    shapes = []
    channels, size = 3, image_size
    for layer in LAYERS:
        kernel = size if layer.kernel is None else layer.kernel
        out = output_size(size, kernel, layer.stride, layer.padding)
        pooled = output_size(out, pool_kernel, pool_stride, 0) if layer.pool else out
        if min(out, pooled) < 1:
            raise ValueError(f"image_size={image_size} is too small: the feature maps vanish at {layer.name}")
        width = layer.width if towers == 2 else layer.one_tower_width
        in_channels = towers * channels if layer.reads == "both towers" else channels
        shapes.append(LayerShape(layer, in_channels, width, kernel, size, out, pooled))
        channels, size = width, pooled
    return tuple(shapes)


def feature_map_sizes(image_size: int, overlapping_pool: bool = True) -> tuple[int, ...]:
    """Spatial size after each pool (pool1, pool2 and pool5) for a square input."""
    return tuple(s.pooled_size for s in layer_shapes(image_size, overlapping_pool=overlapping_pool) if s.layer.pool)


def _stages() -> tuple[tuple[Layer, ...], ...]:
    """LAYERS cut into the runs between exchanges: a stage starts at each layer that reads both towers."""
    stages: list[list[Layer]] = []
    for layer in LAYERS:
        if not stages or layer.reads == "both towers":
            stages.append([])
        stages[-1].append(layer)
    return tuple(tuple(stage) for stage in stages)


# (conv1, conv2), (conv3, conv4, conv5), (fc6,), (fc7,), (fc8,)
STAGES = _stages()


class Tower(nn.Module):
    """One tower's layers, one per row of LAYERS (conv1 ... fc8), each followed by the modules its row
    names: normN (LRN, or nn.Identity without LRN), poolN, dropN (dropout, or nn.Identity without).

    Where an LRN is followed by the paper's overlapping pool (layers 1 and 2), normN computes both in one
    pass (at.nn.LRNMaxPool2d) and poolN is an nn.Identity, as swap_fused_ops leaves a fused pair; the
    ablations without LRN or with the non-overlapping pool keep the separate modules."""

    def __init__(self, shapes: Sequence[LayerShape], classes: int, *, lrn: bool, overlapping_pool: bool, dropout: bool):
        super().__init__()
        pool_kernel, pool_stride = pool_window(overlapping_pool)
        fuse_lrn_and_pool = lrn and overlapping_pool
        for shape in shapes:
            layer = shape.layer
            if layer.relu:
                main = fused.Conv2dReLU(
                    shape.in_channels, shape.out_channels, shape.kernel, stride=layer.stride, padding=layer.padding
                )
            else:
                main = nn.Linear(shape.in_channels * shape.input_size**2, classes)
            self.add_module(layer.name, main)
            if layer.lrn and layer.pool and fuse_lrn_and_pool:
                norm = fused.LRNMaxPool2d(kernel_size=pool_kernel, stride=pool_stride, **PAPER_LRN)
                self.add_module(f"norm{layer.number}", norm)
                self.add_module(f"pool{layer.number}", nn.Identity())
            else:
                if layer.lrn:
                    norm = fused.LocalResponseNorm(**PAPER_LRN) if lrn else nn.Identity()
                    self.add_module(f"norm{layer.number}", norm)
                if layer.pool:
                    self.add_module(f"pool{layer.number}", fused.MaxPool2d(pool_kernel, pool_stride))
            if layer.dropout:
                self.add_module(f"drop{layer.number}", fused.Dropout(DROPOUT_P) if dropout else nn.Identity())

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def run(self, stage: Sequence[Layer], x: Tensor, *, first_done: bool = False) -> Tensor:
        """One stage (a run of layers between two exchanges), each layer with what follows it. first_done: x is the
        stage's first layer's output already (conv1, run for both towers at once: AlexNet.conv1_together)."""
        for i, layer in enumerate(stage):
            if not (first_done and i == 0):
                x = getattr(self, layer.name)(x if layer.relu else x.flatten(1))
            for follower, present in (("norm", layer.lrn), ("pool", layer.pool), ("drop", layer.dropout)):
                if present:
                    x = getattr(self, f"{follower}{layer.number}")(x)
        return x


class AlexNet(nn.Module):
    """The paper's network, built from the fused ops.

    num_classes: output classes (fc8 gives each tower half of them).
    devices: None keeps both towers on the module's device (move it with ``.to``); a pair such as
        ("cuda:0", "cuda:1") puts one tower on each and returns logits on the first.
    image_size: side of the square input, 227 by default; smaller inputs shrink the maps (the fc6
        kernel, hence its fan-in, follows) so that demos and tests can run small.
    lrn, overlapping_pool, dropout, towers: the paper's ablations, defaults as in the paper. lrn=False
        drops both LRN layers (section 3.3); overlapping_pool=False pools 2x2 with stride 2 instead of
        3x3 with stride 2 (section 3.4); dropout=False removes dropout (section 4.2); towers=1 is the
        one-GPU net with half as many kernels (section 3.2, LAYERS' one_tower_width).
    tower_streams: on a single CUDA device, run the two towers' tower-local layers on two CUDA streams
        so that their kernels can overlap. Off by default; bench/ measures whether it pays.
    init: "paper" (section 5: N(0, 0.01) weights, some biases 1; made for centered raw pixel values,
        and slow to start) or "kaiming" (He et al. 2015: N(0, 2 / fan_in) weights, zero biases; for
        standardized inputs; leaves its early plateau far sooner, which short runs need).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        devices: Sequence[str | torch.device] | None = None,
        *,
        image_size: int = 227,
        lrn: bool = True,
        overlapping_pool: bool = True,
        dropout: bool = True,
        towers: int = 2,
        tower_streams: bool = False,
        init: str = "paper",
    ):
        super().__init__()
        if init not in ("paper", "kaiming"):
            raise ValueError(f"init must be 'paper' or 'kaiming', got {init!r}")
        if towers not in (1, 2):
            raise ValueError(f"towers must be 1 or 2, got {towers!r}")
        if not isinstance(num_classes, int) or num_classes < towers:
            raise ValueError(
                f"num_classes must be an int >= {towers} (a class per tower at least), got {num_classes!r}"
            )
        shapes = layer_shapes(image_size, towers=towers, overlapping_pool=overlapping_pool)
        self.image_size = image_size
        self.num_classes = num_classes
        self.tower_streams = tower_streams

        # fc8's classes split between the towers: the first takes the extra one when num_classes is odd.
        splits = [num_classes - num_classes // 2, num_classes // 2] if towers == 2 else [num_classes]
        self.towers = nn.ModuleList(
            Tower(shapes, classes, lrn=lrn, overlapping_pool=overlapping_pool, dropout=dropout) for classes in splits
        )
        self._initialize(init)
        if devices is not None:
            self.place(devices)

    def _initialize(self, init: str) -> None:
        """ "paper", section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fc
        layers ("accelerates the early stages of learning by providing the ReLUs with positive
        inputs"), 0 elsewhere (LAYERS' paper_bias). "kaiming": N(0, 2 / fan_in) weights, zero biases."""
        for tower in self.towers:
            for layer in LAYERS:
                module = getattr(tower, layer.name)
                if init == "paper":
                    nn.init.normal_(module.weight, mean=0.0, std=0.01)
                    nn.init.constant_(module.bias, layer.paper_bias)
                else:
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                    nn.init.zeros_(module.bias)

    def place(self, devices: Sequence[str | torch.device]) -> "AlexNet":
        """Put tower i on devices[i] (one device per tower); returns self."""
        if isinstance(devices, (str, torch.device)) or len(devices) != len(self.towers):
            raise ValueError(f"devices must name one device per tower ({len(self.towers)}), got {devices!r}")
        for i, (tower, device) in enumerate(zip(self.towers, devices, strict=True)):
            tower.to(_existing_device(f"devices[{i}]", device))
        return self

    @property
    def devices(self) -> list[torch.device]:
        return [tower.device for tower in self.towers]

    def exchange(self, features: list[Tensor]) -> list[Tensor]:
        """Every tower gets all towers' features, concatenated along channels in tower order: the
        other tower's are copied to this tower's device (asynchronously where the devices allow). Towers on one
        device share one concatenation (one launch, and one gradient sum in the backward, instead of two)."""
        if len(features) == 1:
            return features
        # The parameters' own devices: under torch.fx tracing `tower.device` is a new Proxy at every access.
        devices = [next(tower.parameters()).device for tower in self.towers]
        joined: dict[torch.device, Tensor] = {}
        for device in devices:
            if device not in joined:
                joined[device] = torch.cat([f.to(device, non_blocking=True) for f in features], dim=1)
        return [joined[device] for device in devices]

    def conv1_together(self, images: Tensor) -> list[Tensor] | None:
        """Both towers' conv1 as one convolution of their 96 kernels, each tower's 48 channels of it as a view; None
        unless two towers share a device (or a conv1 is hooked or replaced). Both read the same image: one launch cuts
        it into blocks once (kernels/space_to_depth.py, forward and weight gradient), and 96 output channels fill the
        conv kernels' 128-wide tiles, which 48 leave with the 64-wide ones (issue bound 0.59 forward, 0.50 weight
        gradient in bf16, against 1.00 and 1.00 together: bench/results/census-sm90.md). The price: the backward joins
        the towers' conv1 gradients into one tensor (a copy of 2 x 37 MB at batch 128 in bf16), about what the second
        blocking saves."""
        if len(self.towers) != 2:
            return None
        # The parameters' own devices: under torch.fx tracing `tower.device` is a new Proxy at every access.
        if len({next(tower.parameters()).device for tower in self.towers}) != 1:
            return None
        convs = [tower.conv1 for tower in self.towers]
        # A hooked or replaced conv1 runs as its module: a joint call would skip what the module does.
        if any(type(conv) is not fused.Conv2dReLU or conv._forward_hooks or conv._forward_pre_hooks for conv in convs):
            return None
        weight, bias = torch.cat([conv.weight for conv in convs]), torch.cat([conv.bias for conv in convs])
        first = convs[0]
        out = at_functional.conv2d_relu(images, weight, bias, first.stride, first.padding, first.groups)
        parts = out.split([conv.out_channels for conv in convs], dim=1)  # one gradient join in the backward
        return [parts[0], parts[1]]  # indexed, not iterated: a torch.fx trace's Proxy cannot be

    def _each_tower(self, stage: tuple[Layer, ...], inputs: list[Tensor], *, first_done: bool = False) -> list[Tensor]:
        """Run one stage on every tower; on one GPU with tower_streams, each tower on its own stream. first_done: the
        inputs are the stage's first layer's outputs (Tower.run)."""
        if not self._use_streams(inputs):
            return [tower.run(stage, x, first_done=first_done) for tower, x in zip(self.towers, inputs, strict=True)]
        main = torch.cuda.current_stream(inputs[0].device)
        outputs = []
        for stream, tower, x in zip(self._streams(inputs[0].device), self.towers, inputs, strict=True):
            stream.wait_stream(main)  # x was made on the main stream
            x.record_stream(stream)  # keep x's memory until the side stream is done with it
            with torch.cuda.stream(stream):
                outputs.append(tower.run(stage, x, first_done=first_done))
        for stream, y in zip(self._streams(inputs[0].device), outputs, strict=True):
            main.wait_stream(stream)
            y.record_stream(main)  # y is read on the main stream from here on
        return outputs

    def _use_streams(self, inputs: list[Tensor]) -> bool:
        return (
            self.tower_streams
            and len(inputs) == 2
            and inputs[0].is_cuda
            and inputs[0].device == inputs[1].device
            and not torch.compiler.is_compiling()
        )

    def _streams(self, device: torch.device) -> list[torch.cuda.Stream]:
        cache = self.__dict__.setdefault("_stream_cache", {})
        if device not in cache:
            cache[device] = [torch.cuda.Stream(device) for _ in self.towers]
        return cache[device]

    def _first_stage(self, images: Tensor) -> list[Tensor]:
        """conv1 and conv2 with what follows them, per tower: the stage before the first exchange."""
        _check_images(images, self.image_size)
        together = self.conv1_together(images.to(next(self.towers[0].parameters()).device, non_blocking=True))
        if together is not None:
            return self._each_tower(STAGES[0], together, first_done=True)
        x = [images.to(tower.device, non_blocking=True) for tower in self.towers]
        return self._each_tower(STAGES[0], x)

    def forward(self, images: Tensor) -> Tensor:
        """images: (N, 3, image_size, image_size) -> logits (N, num_classes) on the first tower's device."""
        x = self._first_stage(images)
        for stage in STAGES[1:]:  # exchange, conv3-5 | exchange, fc6 | exchange, fc7 | exchange, fc8
            x = self._each_tower(stage, self.exchange(x))
        return torch.cat([logits.to(self.devices[0], non_blocking=True) for logits in x], dim=1)

    def features(self, images: Tensor) -> Tensor:
        """images: (N, 3, image_size, image_size) -> fc7's activations (N, 4096 at full width; both towers'
        2048, first tower first) on the first tower's device: the last hidden layer, after its ReLU and
        before its dropout, which section 6.1 compares in Euclidean distance to find similar images.

        Call .eval() first for the features of the trained network: in training mode dropout still acts
        on fc6's output, which fc7 reads."""
        x = self._first_stage(images)
        _first, *hidden, last_hidden, _output = STAGES  # (conv1, conv2), ..., (fc7,), (fc8,)
        for stage in hidden:
            x = self._each_tower(stage, self.exchange(x))
        (fc7,) = last_hidden  # run without what follows it (drop7)
        x = [getattr(tower, fc7.name)(t) for tower, t in zip(self.towers, self.exchange(x), strict=True)]
        return torch.cat([f.flatten(1).to(self.devices[0], non_blocking=True) for f in x], dim=1)


@torch.fx.wrap  # a symbolic trace records the check as one call, which runs on real images
def _check_images(images: Tensor, image_size: int) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[-2:] != (image_size, image_size):
        size = tuple(images.shape[-2:])
        raise ValueError(f"images are {size} but this AlexNet was built for image_size={image_size}")


def _existing_device(name: str, device: str | torch.device) -> torch.device:
    """The device, after checking that this machine has it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"{name}={device!r} is not a device: {error}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if device.index is None and count else device.index
        if count == 0 or index >= count:
            raise ValueError(f"{name}={str(device)!r} does not exist: this machine has {count} CUDA device(s)")
        device = torch.device("cuda", index)  # guards and set_device need the index
    return device
