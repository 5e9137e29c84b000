"""Argument checks shared by the functional ops: each failure names the argument and what was expected."""

from collections.abc import Sequence

import torch

from alexnet_triton.kernels._common import PLAIN_TENSORS, SUPPORTED_DTYPES


def check_tensor(name: str, value, *, ndims: Sequence[int] | None = None, min_ndim: int = 0) -> None:
    """A floating tensor with one of the ranks in ndims (any rank when None) and at least min_ndim."""
    if type(value) not in PLAIN_TENSORS and not isinstance(value, torch.Tensor):  # isinstance: ~1 us on a Tensor
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() < min_ndim:
        raise ValueError(f"{name} must be at least {min_ndim}-D, got shape {tuple(value.shape)}")
    if ndims is not None and value.dim() not in ndims:
        expected = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {expected}, got a {value.dim()}-D tensor of shape {tuple(value.shape)}")
    if value.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise TypeError(f"{name} must have a floating dtype ({names}), got {value.dtype}")


def check_same(name: str, value: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    """value must live on like's device and have like's dtype (no silent casts or copies)."""
    if value.device != like.device:
        raise ValueError(f"{name} is on {value.device} but {like_name} is on {like.device}; move both to one device")
    if value.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {value.dtype} but {like_name} has {like.dtype}; cast one to match")


def check_number(name: str, value) -> float:
    """A real number (int or float, not bool), returned as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def lrn_parameters(size, alpha, beta, k) -> tuple[int, float, float, float]:
    """LRN's window and constants, checked (the functional op and the module share this check)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int (channels in the window), got {size!r}")
    return size, check_number("alpha", alpha), check_number("beta", beta), check_number("k", k)


def check_pair(name: str, value, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum, as a (height, width) tuple."""
    # What layers pass, checked first in a few type tests (every call of an op checks its pairs).
    if type(value) is int and value >= minimum:
        return (value, value)
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if value[0] >= minimum and value[1] >= minimum:
            return value
    items = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, Sequence) else None
    if items is None or len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return items


def check_pool_window(kernel_size, stride=None, padding=0) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A max-pool's (kernel, stride, padding) as pairs (stride None: the kernel), each checked; padding at most
    half the kernel, as F.max_pool2d requires. max_pool2d, the fused LRN + pool op and its module share it."""
    kernel = check_pair("kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None or stride == [] else check_pair("stride", stride, minimum=1)
    padding = check_pair("padding", padding, minimum=0)
    for axis, k, p in zip(("height", "width"), kernel, padding, strict=True):
        if p > k // 2:
            raise ValueError(f"padding {p} must be at most half the kernel's {axis} {k}")
    return kernel, stride, padding
