"""Dropout whose mask is never stored: Triton's counter-based Philox generator regenerates it from a
seed and each element's position (Triton tutorial 04, "low-memory dropout").

    keep[i] = uniform(seed, i) >= p          out[i] = x[i] / (1 - p) if keep[i] else 0

One Philox call gives four 32-bit numbers: element i takes number i % 4 of the call whose counter is i // 4, so
four elements share a call (tl.rand draws one number a call, and the ten Philox rounds were most of the kernel's
instructions) and the mask still depends on the seed and each element's position alone, whatever the block.

The backward is the same kernel applied to the incoming gradient with the same seed, so the state kept
for backward is one int64 seed: 8 bytes per call instead of PyTorch's one-byte-per-element mask.
Positions are indices into the tensor's memory (contiguous or channels_last), so one seed gives one
mask per shape and layout.
"""

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Elements per program for a purely bandwidth-bound kernel (tutorial 01 uses 1024). sm_90 census at fc6/fc7's
# 128 x 2048 (bench/memory_model.py): 232 instructions a program at 1,024 elements and 4 warps (512 with a Philox
# call per element), modeled bound 1.00 in bf16 and fp32 (0.55 before); 4,096 a program issues 424. Not yet measured
# on a GPU for this project.
_GPU_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 4096}, num_warps=8),
]


def _interpreter_blocks(args: dict) -> dict:
    return {"BLOCK": _common.program_block(args["numel"], 16, 65536)}


# Philox counters here are 32-bit: a counter per four element positions.
MAX_ELEMENTS = 2**31 - 1


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(_GPU_CONFIGS, ["numel"], _interpreter_blocks, checked=["out_ptr"])
@triton.jit
def _dropout_kernel(
    # pointers: seed_ptr holds one int64
    x_ptr, out_ptr, seed_ptr,
    # sizes
    numel,
    # dropout parameters: scale = 1 / (1 - p), or 0 when p = 1
    p, scale,
    # meta-parameters: BLOCK, a multiple of 4
    BLOCK: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # past 2^31 in the last block of MAX_ELEMENTS
    mask = offs < numel
    # Counter g draws the numbers of elements 4g .. 4g + 3: a [BLOCK / 4, 4] tile of them, read in memory order.
    counters = tl.program_id(0) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
    u0, u1, u2, u3 = tl.rand4x(tl.load(seed_ptr), counters)  # uniform in [0, 1)
    uniform = tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), [BLOCK])  # (g, j, i) holds number 2j + i
    keep = uniform >= p  # kept with probability 1 - p
    x = tl.load(x_ptr + offs, mask=mask)
    out = tl.where(keep, x.to(ACC_DTYPE) * scale, 0.0)  # scaled in fp32, as PyTorch does
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


@_common.bf16_in_fp32_under_interpreter
def dropout(x: torch.Tensor, seed: torch.Tensor, p: float, memory_format: torch.memory_format) -> torch.Tensor:
    """Dropout of x with the mask drawn from `seed` (an int64 tensor of one element on x's device).

    x is laid out in `memory_format` first (a no-op when it already is), so that a gradient arriving in
    any layout meets the mask its forward used."""
    x = x.contiguous(memory_format=memory_format)
    out = _common.empty(x.shape, like=x, memory_format=memory_format)
    numel = x.numel()
    if numel == 0:
        return out
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)

    def grid(meta):
        return (_common.cdiv(numel, meta["BLOCK"]),)

    def expect():
        return expected.DropoutMask(x, p, scale, results=lambda: [out])

    _common.launcher(_dropout_kernel, expect)[grid](x, out, seed, numel, p, scale)
    return out
