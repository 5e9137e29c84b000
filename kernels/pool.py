"""2-D max-pool in Triton (AlexNet's overlapping 3x3 / stride 2, or any window), forward and backward.

Forward: one output element per lane; the window is unrolled (kernel size and stride are compile-time
constants). Same rules as PyTorch: padding never wins, NaN wins (and the last NaN in the window is
the one chosen), ties go to the first maximum in row-major order, and a window of only -inf chooses
its first element inside the image.

For backward the forward saves, per output element, the position of the maximum inside its window as
one byte (uint8, windows of up to 256 elements; int32 beyond), instead of PyTorch's int64 index into
the whole plane: 1 byte per output element instead of 8, and nothing of the input but its shape.

Backward gathers: each input element visits the few windows that contain it (2x2 for 3x3 / stride 2)
and sums the gradients of those that chose it. Every dx element is written once, in a fixed order,
without atomics, so the result is deterministic.

Elements are numbered in the tensor's memory order (W fastest for NCHW, C fastest for channels_last),
so consecutive lanes touch consecutive addresses in both layouts.
"""

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Elements per program: an elementwise-style kernel, so wide blocks and several warps to keep enough
# loads in flight. Not yet measured on a GPU for this project.
_GPU_CONFIGS = [
    triton.Config({"BLOCK": 256}, num_warps=4),
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 1024}, num_warps=8),
]


def _interpreter_blocks(args: dict) -> dict:
    return {"BLOCK": _common.program_block(args["TOTAL"], 16, 8192)}


# A window position fits in one byte up to this many elements per window.
_MAX_UINT8_WINDOW = 256


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _unflatten(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """Linear index in memory order -> (n, c, h, w)."""
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
        n = offs // (W * H * C)
    return n, c, h, w


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(_GPU_CONFIGS, ["TOTAL", "CHANNELS_LAST"], _interpreter_blocks, checked=["out_ptr", "pos_ptr"])
@triton.jit
def _max_pool_fwd_kernel(
    # pointers
    x_ptr, out_ptr, pos_ptr,
    # sizes: TOTAL = N*C*OH*OW output elements
    TOTAL, C, H, W, OH, OW,
    # strides (out and pos share out's)
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    # meta-parameters: the window
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    n, c, oh, ow = _unflatten(offs, C, OH, OW, CHANNELS_LAST)
    x_base = x_ptr + n * stride_x_n + c * stride_x_c
    h0 = oh * SH - PH
    w0 = ow * SW - PW

    best = tl.full((BLOCK,), float("-inf"), dtype=x_ptr.dtype.element_ty)
    best_pos = tl.zeros((BLOCK,), dtype=tl.int32)
    found = tl.zeros((BLOCK,), dtype=tl.int1)
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            ih = h0 + kh
            iw = w0 + kw
            inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(x_base + ih * stride_x_h + iw * stride_x_w, mask=inside, other=float("-inf"))
            # PyTorch's rule: a larger value or a NaN replaces; the first element inside the image
            # is the default, so a window of only -inf still points into the image.
            take = inside & ((v > best) | (v != v) | (found == 0))
            best = tl.where(take, v, best)
            best_pos = tl.where(take, kh * KW + kw, best_pos)
            found = found | inside

    out_offs = n * stride_out_n + c * stride_out_c + oh * stride_out_h + ow * stride_out_w
    tl.store(out_ptr + out_offs, best, mask=mask)
    tl.store(pos_ptr + out_offs, best_pos.to(pos_ptr.dtype.element_ty), mask=mask)


@autotune.tuned(_GPU_CONFIGS, ["TOTAL", "CHANNELS_LAST"], _interpreter_blocks, checked=["dx_ptr"])
@triton.jit
def _max_pool_bwd_kernel(
    # pointers
    grad_ptr, pos_ptr, dx_ptr,
    # sizes: TOTAL = N*C*H*W input elements
    TOTAL, C, H, W, OH, OW,
    # strides
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_pos_n, stride_pos_c, stride_pos_h, stride_pos_w,
    stride_dx_n, stride_dx_c, stride_dx_h, stride_dx_w,
    # meta-parameters: the window
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < TOTAL
    n, c, ih, iw = _unflatten(offs, C, H, W, CHANNELS_LAST)
    g_base = grad_ptr + n * stride_grad_n + c * stride_grad_c
    p_base = pos_ptr + n * stride_pos_n + c * stride_pos_c
    # The last window (in each direction) that starts at or before this element; the ones before it
    # start SH (SW) earlier, and at most ceil(K / S) of them still reach it.
    oh_last = (ih + PH) // SH
    ow_last = (iw + PW) // SW

    acc = tl.zeros((BLOCK,), dtype=ACC_DTYPE)
    for dh in tl.static_range((KH + SH - 1) // SH):
        oh = oh_last - dh
        kh = ih + PH - oh * SH  # this element's row inside window oh
        for dw in tl.static_range((KW + SW - 1) // SW):
            ow = ow_last - dw
            kw = iw + PW - ow * SW
            window = mask & (oh >= 0) & (oh < OH) & (kh < KH) & (ow >= 0) & (ow < OW) & (kw < KW)
            pos = tl.load(p_base + oh * stride_pos_h + ow * stride_pos_w, mask=window, other=0).to(tl.int32)
            chosen = window & (pos == kh * KW + kw)
            g = tl.load(g_base + oh * stride_grad_h + ow * stride_grad_w, mask=chosen, other=0.0)
            acc += g.to(ACC_DTYPE)

    dx_offs = n * stride_dx_n + c * stride_dx_c + ih * stride_dx_h + iw * stride_dx_w
    tl.store(dx_ptr + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def _window_meta(kernel, stride, padding, channels_last: bool) -> dict:
    return {
        "KH": kernel[0], "KW": kernel[1], "SH": stride[0], "SW": stride[1], "PH": padding[0], "PW": padding[1],
        "CHANNELS_LAST": channels_last,
    }


@_common.bf16_in_fp32_under_interpreter
def max_pool_forward(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, window position of each maximum) for a 4-D x of any strides; outputs in x's layout."""
    N, C, H, W = x.shape
    OH = _common.output_size(H, kernel[0], stride[0], padding[0])
    OW = _common.output_size(W, kernel[1], stride[1], padding[1])
    memory_format = _common.suggest_memory_format(x)
    pos_dtype = torch.uint8 if kernel[0] * kernel[1] <= _MAX_UINT8_WINDOW else torch.int32
    out = _common.empty((N, C, OH, OW), like=x, memory_format=memory_format)
    pos = _common.empty((N, C, OH, OW), like=x, dtype=pos_dtype, memory_format=memory_format)
    total = out.numel()
    if total == 0:
        return out, pos

    def grid(meta):
        return (_common.cdiv(total, meta["BLOCK"]),)

    def expect():
        return expected.max_pool(x, kernel, stride, padding, results=lambda: [out, pos])

    _common.launcher(_max_pool_fwd_kernel, expect)[grid](
        x, out, pos,
        total, C, H, W, OH, OW,
        *x.stride(), *out.stride(),
        **_window_meta(kernel, stride, padding, memory_format == torch.channels_last),
    )
    return out, pos


@_common.bf16_in_fp32_under_interpreter
def max_pool_backward(
    grad_out: torch.Tensor,
    pos: torch.Tensor,
    input_shape: list[int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> torch.Tensor:
    """Gradient with respect to the input, laid out like the saved positions (i.e. like the input)."""
    N, C, H, W = input_shape
    OH, OW = pos.shape[2], pos.shape[3]
    memory_format = _common.suggest_memory_format(pos)
    dx = _common.empty((N, C, H, W), like=grad_out, memory_format=memory_format)
    total = dx.numel()
    if total == 0:
        return dx

    def grid(meta):
        return (_common.cdiv(total, meta["BLOCK"]),)

    def expect():
        return expected.max_pool_grad(grad_out, pos, input_shape, kernel, stride, padding, results=lambda: [dx])

    _common.launcher(_max_pool_bwd_kernel, expect)[grid](
        grad_out, pos, dx,
        total, C, H, W, OH, OW,
        *grad_out.stride(), *pos.stride(), *dx.stride(),
        **_window_meta(kernel, stride, padding, memory_format == torch.channels_last),
    )
    return dx
