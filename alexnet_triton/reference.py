"""The four ops in plain PyTorch: what the tests compare against, and what runs on a CPU when the
Triton interpreter is off. Same signatures as alexnet_triton.functional."""

import torch
import torch.nn.functional as F


def conv2d_relu(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    groups: int = 1,
) -> torch.Tensor:
    return F.relu(F.conv2d(input, weight, bias, stride=stride, padding=padding, groups=groups))
