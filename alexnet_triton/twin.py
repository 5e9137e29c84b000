"""The two-tower AlexNet's twin in plain torch.nn: one stack, with groups=2 where the towers stay apart
(conv2, conv4, conv5) and full connections where they exchange (conv3, fc6, fc7, fc8).

Given the same weights it computes exactly what ``AlexNet`` computes: the tests use it to check the
towers, placement and exchange, and the benchmarks use it as the eager PyTorch baseline. LRN too stays
within a tower (each GPU normalizes over its own kernel maps), so the twin normalizes each half of the
channels on its own. Built from the same table as the towers, ``model.LAYERS``.
"""

import torch
from torch import nn

from alexnet_triton.model import DROPOUT_P, LAYERS, PAPER_LRN, AlexNet, layer_shapes, pool_window

TOWERS = 2


class GroupedLocalResponseNorm(nn.Module):
    """nn.LocalResponseNorm applied to each of `groups` equal blocks of channels separately."""

    def __init__(self, groups: int, **lrn):
        super().__init__()
        self.groups = groups
        self.norm = nn.LocalResponseNorm(**lrn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.norm(block) for block in x.chunk(self.groups, dim=1)], dim=1)


class GroupedAlexNet(nn.Module):
    """features: conv1-conv5 with their ReLU, LRN and pools; classifier: fc6-fc8 as nn.Linear layers on the
    flattened map, with their ReLU and dropout. Both towers' channels in one tensor, the first tower's first."""

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        image_size: int = 227,
        lrn: bool = True,
        overlapping_pool: bool = True,
        dropout: bool = True,
    ):
        super().__init__()
        pool_kernel, pool_stride = pool_window(overlapping_pool)
        features: list[nn.Module] = []
        classifier: list[nn.Module] = [nn.Flatten()]
        for shape in layer_shapes(image_size, towers=TOWERS, overlapping_pool=overlapping_pool):
            layer = shape.layer
            # A layer that reads its own tower is one convolution whose groups are the towers.
            groups = TOWERS if layer.reads == "own tower" else 1
            in_channels = groups * shape.in_channels
            out_channels = num_classes if shape.out_channels is None else TOWERS * shape.out_channels
            if layer.fully_connected:
                stack = classifier
                main = nn.Linear(in_channels * shape.input_size**2, out_channels)
            else:
                stack = features
                main = nn.Conv2d(in_channels, out_channels, shape.kernel, layer.stride, layer.padding, groups=groups)
            stack.append(main)
            if layer.relu:
                stack.append(nn.ReLU())
            if layer.lrn:
                stack.append(GroupedLocalResponseNorm(TOWERS, **PAPER_LRN) if lrn else nn.Identity())
            if layer.pool:
                stack.append(nn.MaxPool2d(pool_kernel, pool_stride))
            if layer.dropout:
                stack.append(nn.Dropout(DROPOUT_P) if dropout else nn.Identity())
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(*classifier)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))

    @classmethod
    def from_towers(cls, model: AlexNet) -> "GroupedAlexNet":
        """A twin of a two-tower AlexNet holding copies of its weights, on the first tower's device."""
        if len(model.towers) != TOWERS:
            raise ValueError("the grouped twin exists for the two-tower network only")
        first = model.towers[0]
        twin = cls(
            model.num_classes,
            image_size=model.image_size,
            lrn=not isinstance(first.norm1, nn.Identity),
            # pool5 has every pool's window, and is never fused with an LRN (pool1 may be an Identity).
            overlapping_pool=(first.pool5.kernel_size, first.pool5.stride) == pool_window(overlapping=True),
            dropout=not isinstance(first.drop6, nn.Identity),
        ).to(model.devices[0])
        layers = [layer for layer in [*twin.features, *twin.classifier] if isinstance(layer, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            for table_row, layer in zip(LAYERS, layers, strict=True):
                # Each tower holds a block of output units; stacking them gives the grouped layer.
                halves = [getattr(tower, table_row.name) for tower in model.towers]
                weight = torch.cat([h.weight.to(layer.weight.device) for h in halves])
                layer.weight.copy_(weight.reshape(layer.weight.shape))
                layer.bias.copy_(torch.cat([h.bias.to(layer.bias.device) for h in halves]))
        return twin
