"""Dropout whose mask is regenerated from a seed instead of stored: at.dropout."""

import torch
from torch import Tensor

from alexnet_triton import reference
from alexnet_triton.functional.dispatch import backend, fused_op, traced_as_one_call
from alexnet_triton.kernels import _common
from alexnet_triton.kernels import dropout as dropout_kernels
from alexnet_triton.validation import check_number, check_tensor


def _dropout_kernels(input: Tensor, seed: Tensor, p: float, channels_last: bool) -> Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return dropout_kernels.dropout(input, seed, p, memory_format)


def _dropout_setup_context(ctx, inputs, output):
    _, seed, p, channels_last = inputs
    ctx.save_for_backward(seed)  # 8 bytes: the mask is regenerated from it
    ctx.dropout = (p, channels_last)


def _dropout_grad(ctx, grad_out, *, backward):
    (seed,) = ctx.saved_tensors
    # The derivative of dropout is dropout with the same mask: the same op, the same seed.
    return backward(grad_out, seed, *ctx.dropout), None, None, None


_dropout = fused_op("dropout", _dropout_kernels, _dropout_setup_context, _dropout_grad)


@traced_as_one_call
def dropout(input: Tensor, p: float = 0.5, training: bool = True, *, seed: int | None = None) -> Tensor:
    """Dropout with ``F.dropout`` semantics and no stored mask.

    Training: each element is zeroed with probability p and the kept ones are scaled by 1 / (1 - p);
    p = 0 returns the input's values, p = 1 zeros. Not training: the input itself. The mask comes
    from Triton's Philox generator keyed by ``seed`` and each element's position in memory, and the
    backward regenerates it: 8 bytes saved per call instead of a byte per element. With seed=None the
    seed is drawn from PyTorch's generator for the input's device, so ``torch.manual_seed`` makes runs
    repeatable; the same seed gives the same mask for the same shape and layout.
    """
    check_tensor("input", input)
    p = check_number("p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
    if input.numel() > dropout_kernels.MAX_ELEMENTS:
        raise ValueError(f"input has {input.numel()} elements; dropout supports up to {dropout_kernels.MAX_ELEMENTS}")

    if not training:
        return input
    if p == 0.0:
        return input.clone()
    if backend(input.device) == "torch":
        return reference.dropout(input, p, training, seed=seed)
    if seed is None:
        seed_tensor = torch.randint(0, 2**62, (), device=input.device, dtype=torch.int64)
    else:
        seed_tensor = torch.full((), seed, device=input.device, dtype=torch.int64)
    channels_last = _common.suggest_memory_format(input) == torch.channels_last
    return _dropout(input, seed_tensor, p, channels_last)
