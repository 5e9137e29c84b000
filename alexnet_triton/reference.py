"""The ops in plain PyTorch: what the tests compare against, and what runs on a CPU when the
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
    if groups == 1 and padding in (0, (0, 0), [0, 0]) and input.dim() == 4 and input.shape[2:] == weight.shape[2:]:
        # A kernel that covers the whole map is a fully-connected layer; CPU GEMM runs it ~4x faster
        # than the convolution path.
        out = F.linear(input.flatten(1), weight.flatten(1), bias)
        return F.relu(out)[:, :, None, None]
    return F.relu(F.conv2d(input, weight, bias, stride=stride, padding=padding, groups=groups))


def local_response_norm(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
    """F.local_response_norm's formula, with the channel window summed as `size` shifted slices of the
    padded squares instead of F's avg_pool3d: the same values to rounding, and forward plus backward
    about 3x faster on a CPU at AlexNet's layers 1 and 2 (the CPU trainer's largest cost after the matrix
    products)."""
    squares = F.pad(input * input, (0, 0) * (input.dim() - 2) + (size // 2, (size - 1) // 2))
    channels = input.shape[1]
    window = squares[:, :channels]
    for first in range(1, size):
        window = window + squares[:, first : first + channels]
    return input / (window * (alpha / size) + k).pow(beta)


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0) -> torch.Tensor:
    return F.max_pool2d(input, kernel_size, stride, padding)


def lrn_max_pool2d(
    input: torch.Tensor, size: int, kernel_size, stride=None, padding=0, *, alpha=1e-4, beta=0.75, k=1.0
) -> torch.Tensor:
    return F.max_pool2d(local_response_norm(input, size, alpha, beta, k), kernel_size, stride, padding)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, *, seed: int | None = None) -> torch.Tensor:
    """F.dropout; with a seed, the mask comes from a generator seeded with it (not Philox's mask)."""
    if seed is None or not training:
        return F.dropout(input, p, training)
    generator = torch.Generator(device=input.device).manual_seed(seed)
    keep = torch.rand(input.shape, generator=generator, device=input.device) >= p
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    return torch.where(keep, input * scale, torch.zeros((), dtype=input.dtype, device=input.device))
