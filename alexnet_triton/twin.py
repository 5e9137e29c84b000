"""The two-tower AlexNet's twin in plain torch.nn: one stack, with groups=2 where the towers stay apart
(conv2, conv4, conv5) and full connections where they exchange (conv3, fc6, fc7, fc8).

Given the same weights it computes exactly what ``AlexNet`` computes: the tests use it to check the
towers, placement and exchange, and the benchmarks use it as the eager PyTorch baseline. LRN too stays
within a tower (each GPU normalizes over its own kernel maps), so the twin normalizes each half of the
channels on its own.
"""

import torch
from torch import nn

from alexnet_triton.model import PAPER_LRN, TOWER_WIDTHS, AlexNet, feature_map_sizes


class GroupedLocalResponseNorm(nn.Module):
    """nn.LocalResponseNorm applied to each of `groups` equal blocks of channels separately."""

    def __init__(self, groups: int, **lrn):
        super().__init__()
        self.groups = groups
        self.norm = nn.LocalResponseNorm(**lrn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.norm(block) for block in x.chunk(self.groups, dim=1)], dim=1)


class GroupedAlexNet(nn.Module):
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
        c1, c2, c3, c4, c5, f6, f7 = (2 * w for w in TOWER_WIDTHS)
        pool5 = feature_map_sizes(image_size, overlapping_pool)[2]
        pool_kernel, pool_stride = (3, 2) if overlapping_pool else (2, 2)

        def norm() -> nn.Module:
            return GroupedLocalResponseNorm(2, **PAPER_LRN) if lrn else nn.Identity()

        def drop() -> nn.Module:
            return nn.Dropout(0.5) if dropout else nn.Identity()

        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 11, stride=4), nn.ReLU(), norm(), nn.MaxPool2d(pool_kernel, pool_stride),
            nn.Conv2d(c1, c2, 5, padding=2, groups=2), nn.ReLU(), norm(), nn.MaxPool2d(pool_kernel, pool_stride),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1, groups=2), nn.ReLU(),
            nn.Conv2d(c4, c5, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(pool_kernel, pool_stride),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c5 * pool5 * pool5, f6), nn.ReLU(), drop(),
            nn.Linear(f6, f7), nn.ReLU(), drop(),
            nn.Linear(f7, num_classes),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))

    @classmethod
    def from_towers(cls, model: AlexNet) -> "GroupedAlexNet":
        """A twin of a two-tower AlexNet holding copies of its weights, on the first tower's device."""
        if len(model.towers) != 2:
            raise ValueError("the grouped twin exists for the two-tower network only")
        first = model.towers[0]
        twin = cls(
            model.num_classes,
            image_size=model.image_size,
            lrn=not isinstance(first.norm1, nn.Identity),
            overlapping_pool=first.pool1.kernel_size == 3,
            dropout=not isinstance(first.drop6, nn.Identity),
        ).to(model.devices[0])
        layers = [layer for layer in [*twin.features, *twin.classifier] if isinstance(layer, (nn.Conv2d, nn.Linear))]
        names = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
        with torch.no_grad():
            for name, layer in zip(names, layers, strict=True):
                # Each tower holds a block of output units; stacking them gives the grouped layer.
                halves = [getattr(tower, name) for tower in model.towers]
                weight = torch.cat([h.weight.to(layer.weight.device) for h in halves])
                layer.weight.copy_(weight.reshape(layer.weight.shape))
                layer.bias.copy_(torch.cat([h.bias.to(layer.bias.device) for h in halves]))
        return twin
