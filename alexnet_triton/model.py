"""The 2012 network (Krizhevsky, Sutskever, Hinton; section 3.5 and figure 2) from the fused ops.

Two towers, one per GPU in the paper. A tower's layers 1, 2, 4 and 5 read only that tower's features;
layer 3 and the fully-connected layers 6, 7 and 8 read both towers', through an explicit exchange that
copies the other tower's features across (a no-op copy when both live on one device).

    per tower                                   shape per tower at 227x227 (N = batch)
    conv1  48 @ 11x11 stride 4, ReLU, LRN, pool   N x  48 x 27 x 27      reads the whole image
    conv2 128 @ 5x5 pad 2,     ReLU, LRN, pool    N x 128 x 13 x 13      own tower
    -- exchange --
    conv3 192 @ 3x3 pad 1,     ReLU               N x 192 x 13 x 13      both towers
    conv4 192 @ 3x3 pad 1,     ReLU               N x 192 x 13 x 13      own tower
    conv5 128 @ 3x3 pad 1,     ReLU, pool         N x 128 x  6 x  6      own tower
    -- exchange --
    fc6  2048, ReLU, dropout                      N x 2048               both towers
    -- exchange --
    fc7  2048, ReLU, dropout                      N x 2048               both towers
    -- exchange --
    fc8  half of the classes                      N x classes / 2        both towers; halves joined

fc6 and fc7 are written as convolutions whose kernel covers the whole feature map (6x6, then 1x1):
the same arithmetic as a linear layer on the flattened map, and it lets bias and ReLU fuse into the
same kernel as every conv layer. LRN is the paper's (k=2, n=5, alpha=1e-4, beta=0.75), which in
PyTorch's convention (alpha divided by n) is alpha=5e-4.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from alexnet_triton import nn as fused

# Per-tower widths of the two-tower net (figure 2): conv1..conv5, fc6, fc7.
TOWER_WIDTHS = (48, 128, 192, 192, 128, 2048, 2048)
# "The net with half as many kernels in each convolutional layer trained on one GPU" (section 3.2),
# whose footnote keeps the last conv layer and the fully-connected layers at full size.
ONE_TOWER_WIDTHS = (48, 128, 192, 192, 256, 4096, 4096)

PAPER_LRN = {"size": 5, "alpha": 5e-4, "beta": 0.75, "k": 2.0}


def feature_map_sizes(image_size: int, overlapping_pool: bool = True) -> tuple[int, int, int]:
    """Spatial size after pool1, pool2 and pool5 for a square input."""
    kernel, stride = (3, 2) if overlapping_pool else (2, 2)

    def pool(size: int) -> int:
        return (size - kernel) // stride + 1

    conv1 = (image_size - 11) // 4 + 1
    after_pool1 = pool(conv1)
    after_pool2 = pool(after_pool1)  # conv2 keeps the size (5x5, padding 2)
    after_pool5 = pool(after_pool2)  # conv3-5 keep it (3x3, padding 1)
    return after_pool1, after_pool2, after_pool5


class Tower(nn.Module):
    """One tower's layers. Those of layers 3 and 6-8 take both towers' features as input."""

    def __init__(
        self, widths: Sequence[int], towers: int, classes: int, pool5_size: int, lrn: bool, overlapping_pool: bool
    ):
        super().__init__()
        c1, c2, c3, c4, c5, f6, f7 = widths
        pool_kernel, pool_stride = (3, 2) if overlapping_pool else (2, 2)

        def norm() -> nn.Module:
            return fused.LocalResponseNorm(**PAPER_LRN) if lrn else nn.Identity()

        self.conv1 = fused.Conv2dReLU(3, c1, 11, stride=4)
        self.norm1, self.pool1 = norm(), fused.MaxPool2d(pool_kernel, pool_stride)
        self.conv2 = fused.Conv2dReLU(c1, c2, 5, padding=2)
        self.norm2, self.pool2 = norm(), fused.MaxPool2d(pool_kernel, pool_stride)
        self.conv3 = fused.Conv2dReLU(towers * c2, c3, 3, padding=1)
        self.conv4 = fused.Conv2dReLU(c3, c4, 3, padding=1)
        self.conv5 = fused.Conv2dReLU(c4, c5, 3, padding=1)
        self.pool5 = fused.MaxPool2d(pool_kernel, pool_stride)
        self.fc6 = fused.Conv2dReLU(towers * c5, f6, pool5_size)
        self.drop6 = fused.Dropout(0.5)
        self.fc7 = fused.Conv2dReLU(towers * f6, f7, 1)
        self.drop7 = fused.Dropout(0.5)
        self.fc8 = nn.Linear(towers * f7, classes)

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    # Each stage is the run of layers between two exchanges.
    def layers_1_2(self, image: Tensor) -> Tensor:
        x = self.pool1(self.norm1(self.conv1(image)))
        return self.pool2(self.norm2(self.conv2(x)))

    def layers_3_5(self, both: Tensor) -> Tensor:
        return self.pool5(self.conv5(self.conv4(self.conv3(both))))

    def layer_6(self, both: Tensor) -> Tensor:
        return self.drop6(self.fc6(both))

    def layer_7(self, both: Tensor) -> Tensor:
        return self.drop7(self.fc7(both))

    def layer_8(self, both: Tensor) -> Tensor:
        return self.fc8(both.flatten(1))


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
        one-GPU net with half as many kernels (section 3.2, ONE_TOWER_WIDTHS).
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
        pool5_size = feature_map_sizes(image_size, overlapping_pool)[2]
        if pool5_size < 1:
            raise ValueError(f"image_size={image_size} is too small: the feature maps vanish before fc6")
        self.image_size = image_size
        self.num_classes = num_classes
        self.tower_streams = tower_streams

        widths = TOWER_WIDTHS if towers == 2 else ONE_TOWER_WIDTHS
        # fc8's classes split between the towers: the first takes the extra one when num_classes is odd.
        splits = [num_classes - num_classes // 2, num_classes // 2] if towers == 2 else [num_classes]
        self.towers = nn.ModuleList(
            Tower(widths, towers, classes, pool5_size, lrn, overlapping_pool) for classes in splits
        )
        if not dropout:
            for tower in self.towers:
                tower.drop6, tower.drop7 = nn.Identity(), nn.Identity()
        self._initialize(init)
        if devices is not None:
            self.place(devices)

    def _initialize(self, init: str) -> None:
        """ "paper", section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fc
        layers ("accelerates the early stages of learning by providing the ReLUs with positive
        inputs"), 0 elsewhere. "kaiming": N(0, 2 / fan_in) weights, zero biases."""
        for tower in self.towers:
            for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
                layer = getattr(tower, name)
                if init == "paper":
                    nn.init.normal_(layer.weight, mean=0.0, std=0.01)
                    bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
                else:
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                    bias = 0.0
                nn.init.constant_(layer.bias, bias)

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
        other tower's are copied to this tower's device (asynchronously where the devices allow)."""
        if len(features) == 1:
            return features
        return [torch.cat([f.to(tower.device, non_blocking=True) for f in features], dim=1) for tower in self.towers]

    def _each_tower(self, stage: str, inputs: list[Tensor]) -> list[Tensor]:
        """Run one stage on every tower; on one GPU with tower_streams, each tower on its own stream."""
        if not self._use_streams(inputs):
            return [getattr(tower, stage)(x) for tower, x in zip(self.towers, inputs, strict=True)]
        main = torch.cuda.current_stream(inputs[0].device)
        outputs = []
        for stream, tower, x in zip(self._streams(inputs[0].device), self.towers, inputs, strict=True):
            stream.wait_stream(main)  # x was made on the main stream
            x.record_stream(stream)  # keep x's memory until the side stream is done with it
            with torch.cuda.stream(stream):
                outputs.append(getattr(tower, stage)(x))
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

    def forward(self, images: Tensor) -> Tensor:
        """images: (N, 3, image_size, image_size) -> logits (N, num_classes) on the first tower's device."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} but this AlexNet was built for image_size={self.image_size}"
            )
        x = [images.to(tower.device, non_blocking=True) for tower in self.towers]
        x = self._each_tower("layers_1_2", x)
        x = self._each_tower("layers_3_5", self.exchange(x))
        x = self._each_tower("layer_6", self.exchange(x))
        x = self._each_tower("layer_7", self.exchange(x))
        x = self._each_tower("layer_8", self.exchange(x))
        return torch.cat([logits.to(self.devices[0], non_blocking=True) for logits in x], dim=1)


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
    return device
