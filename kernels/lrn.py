"""Cross-channel Local Response Normalization in Triton, forward and backward, one pass each.

PyTorch's definition (alpha divided by the window size, zero padding at the channel edges):

    scale[c] = k + alpha / size * sum_{j = c - lo .. c + hi} x[j]^2        lo = size // 2, hi = (size - 1) // 2
    out[c]   = x[c] * scale[c] ^ -beta

Each program owns a block of pixels (of any images) and walks their channels in chunks of CH, a chunk a trip: in
channels_last a thread loads a pixel's CH channels with one 16-byte load (CH = 8 in bf16 / fp16, 4 in fp32) and
takes them apart in its registers; in NCHW it loads them one channel at a time, neighbouring pixels on neighbouring
lanes. A trip loads the next chunk, whose first channels complete the windows of the current one's last, and keeps
the squares of the current one's last for the next trip: every window is summed whole from its own squares (no
running sum with subtraction, which would drift), and every input element is read from memory once.

Backward, from the same walk, with t[c] = g[c] * x[c] * scale[c]^(-beta-1):

    dx[i] = g[i] * scale[i]^-beta  -  2 * alpha * beta / size * x[i] * sum_{c = i - hi .. i + lo} t[c]

A trip loads chunk j + 1, computes the scale, t and g scale^-beta of chunk j, and the input gradient of chunk j - 1,
whose t window reaches into chunk j: one trip more than there are chunks. The scale is recomputed from x, so only
the input is saved for backward: 0 extra bytes per element when the input is kept anyway (in AlexNet it is the
fused conv's saved output), where PyTorch's composite LRN keeps about five temporaries of the input's size.

On a GPU the scale's log2 is the approximate instruction (MUFU.LG2, relative error near 2^-22, as tl.exp2's
MUFU.EX2 already is): the exact log2 is some twenty instructions an element, most of the kernel. The interpreter has
no libdevice and runs tl.log2; fp64 always does.
"""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import _common, autotune, expected

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Pixels per program, one a thread. sm_90 census at AlexNet's LRNs (128 x 48 x 55 x 55 and 128 x 128 x 27 x 27,
# channels_last; bench/memory_model.py): forward 116 instructions a trip of 8 channels in bf16 (62 a trip of 4 in
# fp32), 1,036 a program at conv1, modeled bound 1.00 in bf16 and fp32 (0.41 and 0.86 walking a channel a trip with
# a ring of 8 slots and the exact log2); backward 234 a trip in bf16, bound 1.00 (0.31 and 0.63); 32 and 74
# registers, no spills. Two pixels a thread (256 at 4 warps) issues alike at 166 registers in the backward. Not yet
# measured on a GPU for this project.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_S": 128}, num_warps=4),
    triton.Config({"BLOCK_S": 256}, num_warps=8),
    triton.Config({"BLOCK_S": 64}, num_warps=2),
]


def _interpreter_blocks(args: dict) -> dict:
    """Under the interpreter: up to 4096 pixels per program, few programs (three or more under TEST_TILES; the
    channel walk is a loop already)."""
    return {"BLOCK_S": _common.program_block(args["P"], 16, 4096)}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _pixel_block(P, H, W, BLOCK_S: tl.constexpr):
    """This program's block of the N*H*W pixels: (in range, n, h, w)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    return offs < P, offs // (W * H), (offs // W) % H, offs % W


@triton.jit
def _columns(tile, CH: tl.constexpr):
    """A [pixels, CH] tile as a tuple of its CH columns in channel order; halving it (reshape, then split) moves
    nothing when a thread holds a pixel's CH channels, as a 16-byte load gives them."""
    if CH == 1:
        return (tl.reshape(tile, [tile.shape[0]]),)
    else:
        low, high = tl.split(tl.permute(tl.reshape(tile, [tile.shape[0], 2, CH // 2]), [0, 2, 1]))
        return _columns(low, CH // 2) + _columns(high, CH // 2)


@triton.jit
def _stack(columns, FIRST: tl.constexpr, CH: tl.constexpr):
    """columns[FIRST], ..., columns[FIRST + CH - 1] as a [pixels, CH] tile: _columns' inverse."""
    if CH == 1:
        return tl.reshape(columns[FIRST], [columns[FIRST].shape[0], 1])
    else:
        low = _stack(columns, FIRST, CH // 2)
        high = _stack(columns, FIRST + CH // 2, CH // 2)
        return tl.reshape(tl.permute(tl.join(low, high), [0, 2, 1]), [low.shape[0], CH])


@triton.jit
def _load_chunk(pixels, c0, C, stride_c, mask, CH: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr):
    """Channels c0 .. c0 + CH - 1 of each pixel (pixels: channel 0's pointers) as a tuple of CH columns in ACC, 0
    past C."""
    if CHANNELS_LAST:
        c = c0 + tl.arange(0, CH)
        tile = tl.load(pixels[:, None] + c[None, :], mask=mask[:, None] & (c < C)[None, :], other=0.0)
        return _columns(tile.to(ACC), CH)
    else:
        columns = ()
        for i in tl.static_range(CH):
            columns += (tl.load(pixels + (c0 + i) * stride_c, mask=mask & (c0 + i < C), other=0.0).to(ACC),)
        return columns


@triton.jit
def _store_chunk(pixels, c0, C, stride_c, mask, columns, CH: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Store a tuple of CH columns as channels c0 .. c0 + CH - 1 of each pixel, those in [0, C)."""
    if CHANNELS_LAST:
        c = c0 + tl.arange(0, CH)
        tile = _stack(columns, 0, CH).to(pixels.dtype.element_ty)
        tl.store(pixels[:, None] + c[None, :], tile, mask=mask[:, None] & ((c >= 0) & (c < C))[None, :])
    else:
        for i in tl.static_range(CH):
            in_range = (c0 + i >= 0) & (c0 + i < C)
            tl.store(pixels + (c0 + i) * stride_c, columns[i].to(pixels.dtype.element_ty), mask=mask & in_range)


@triton.jit
def _squares(columns, CH: tl.constexpr):
    squares = ()
    for i in tl.static_range(CH):
        squares += (columns[i] * columns[i],)
    return squares


@triton.jit
def _at(before, current, after, j: tl.constexpr, CH: tl.constexpr):
    """Channel j of current (-CH <= j < 2 CH), counting into its neighbouring chunks."""
    if j < 0:
        return before[j + CH]
    elif j >= CH:
        return after[j - CH]
    else:
        return current[j]


@triton.jit
def _window_sums(before, current, after, LO: tl.constexpr, HI: tl.constexpr, CH: tl.constexpr):
    """For each of the CH channels of current, the sum of the values from LO channels before it to HI after, in
    channel order, from three neighbouring chunks (LO, HI <= CH)."""
    sums = ()
    for i in tl.static_range(CH):
        s = _at(before, current, after, i - LO, CH)
        for j in tl.static_range(i - LO + 1, i + HI + 1):
            s += _at(before, current, after, j, CH)
        sums += (s,)
    return sums


@triton.jit
def _log2(x, FAST: tl.constexpr):
    """log2 of the scale (> 0): the GPU's approximate instruction where FAST, else exact."""
    if FAST:
        return libdevice.fast_log2f(x)
    else:
        return tl.log2(x)


@triton.jit
def _zeros(like, CH: tl.constexpr):
    columns = ()
    for _ in tl.static_range(CH):
        columns += (tl.zeros_like(like),)
    return columns


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(_GPU_CONFIGS, ["C", "P", "SIZE", "CHANNELS_LAST"], _interpreter_blocks, checked=["out_ptr"])
@triton.jit
def _lrn_fwd_kernel(
    # pointers
    x_ptr, out_ptr,
    # sizes: C channels, P = N*H*W pixels in all
    C, P, H, W,
    # strides
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    # LRN parameters
    alpha_over_size, beta, k,
    # meta-parameters: the window, channels per trip (>= the window's halves), unit channel strides, the log2
    SIZE: tl.constexpr, CH: tl.constexpr, CHANNELS_LAST: tl.constexpr, FAST_LOG2: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    LO: tl.constexpr = SIZE // 2
    HI: tl.constexpr = (SIZE - 1) // 2
    mask, n, h, w = _pixel_block(P, H, W, BLOCK_S)
    x_pix = x_ptr + n * stride_x_n + h * stride_x_h + w * stride_x_w  # channel 0 of each pixel
    o_pix = out_ptr + n * stride_out_n + h * stride_out_h + w * stride_out_w

    x_cur = _load_chunk(x_pix, 0, C, stride_x_c, mask, CH, CHANNELS_LAST, ACC)
    sq_cur = _squares(x_cur, CH)
    sq_before = _zeros(sq_cur[0], CH)  # channels -CH .. -1: the zero padding
    for c0 in range(0, C, CH):
        x_next = _load_chunk(x_pix, c0 + CH, C, stride_x_c, mask, CH, CHANNELS_LAST, ACC)
        sq_next = _squares(x_next, CH)
        sums = _window_sums(sq_before, sq_cur, sq_next, LO, HI, CH)
        out = ()
        for i in tl.static_range(CH):
            out += (x_cur[i] * tl.exp2(-beta * _log2(k + alpha_over_size * sums[i], FAST_LOG2)),)
        _store_chunk(o_pix, c0, C, stride_out_c, mask, out, CH, CHANNELS_LAST)
        sq_before, sq_cur, x_cur = sq_cur, sq_next, x_next


@autotune.tuned(_GPU_CONFIGS, ["C", "P", "SIZE", "CHANNELS_LAST"], _interpreter_blocks, checked=["dx_ptr"])
@triton.jit
def _lrn_bwd_kernel(
    # pointers
    x_ptr, grad_ptr, dx_ptr,
    # sizes: C channels, P = N*H*W pixels in all
    C, P, H, W,
    # strides
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_dx_n, stride_dx_c, stride_dx_h, stride_dx_w,
    # LRN parameters
    alpha_over_size, beta, k, two_alpha_beta_over_size,
    # meta-parameters: the window, channels per trip (>= the window's halves), unit channel strides, the log2
    SIZE: tl.constexpr, CH: tl.constexpr, CHANNELS_LAST: tl.constexpr, FAST_LOG2: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    LO: tl.constexpr = SIZE // 2
    HI: tl.constexpr = (SIZE - 1) // 2
    mask, n, h, w = _pixel_block(P, H, W, BLOCK_S)
    x_pix = x_ptr + n * stride_x_n + h * stride_x_h + w * stride_x_w
    g_pix = grad_ptr + n * stride_grad_n + h * stride_grad_h + w * stride_grad_w
    d_pix = dx_ptr + n * stride_dx_n + h * stride_dx_h + w * stride_dx_w

    # Chunk j - 1 ("before"), j ("cur") and j + 1 ("next") of x and its squares; g of chunk j; t of chunks j - 2 and
    # j - 1, and g scale^-beta of chunk j - 1, from the trips before.
    x_cur = _load_chunk(x_pix, 0, C, stride_x_c, mask, CH, CHANNELS_LAST, ACC)
    g_cur = _load_chunk(g_pix, 0, C, stride_grad_c, mask, CH, CHANNELS_LAST, ACC)
    sq_cur = _squares(x_cur, CH)
    zeros = _zeros(sq_cur[0], CH)
    x_before, sq_before, t_before2, t_before, direct_before = zeros, zeros, zeros, zeros, zeros
    for c0 in range(0, C + CH, CH):
        x_next = _load_chunk(x_pix, c0 + CH, C, stride_x_c, mask, CH, CHANNELS_LAST, ACC)
        g_next = _load_chunk(g_pix, c0 + CH, C, stride_grad_c, mask, CH, CHANNELS_LAST, ACC)
        sq_next = _squares(x_next, CH)
        sums = _window_sums(sq_before, sq_cur, sq_next, LO, HI, CH)
        t_cur = ()
        direct_cur = ()
        for i in tl.static_range(CH):
            log_scale = _log2(k + alpha_over_size * sums[i], FAST_LOG2)
            # 0 past C (where g and x are 0, and with k = 0 the scale: 0 x inf there would be NaN)
            t_cur += (tl.where(c0 + i < C, g_cur[i] * x_cur[i] * tl.exp2((-beta - 1.0) * log_scale), 0.0),)
            direct_cur += (g_cur[i] * tl.exp2(-beta * log_scale),)
        # Chunk j - 1's gradient: its t window [i - HI, i + LO] reaches chunks j - 2 and j.
        t_sums = _window_sums(t_before2, t_before, t_cur, HI, LO, CH)
        dx = ()
        for i in tl.static_range(CH):
            dx += (direct_before[i] - two_alpha_beta_over_size * x_before[i] * t_sums[i],)
        _store_chunk(d_pix, c0 - CH, C, stride_dx_c, mask, dx, CH, CHANNELS_LAST)
        x_before, sq_before, x_cur, sq_cur, g_cur = x_cur, sq_cur, x_next, sq_next, g_next
        t_before2, t_before, direct_before = t_before, t_cur, direct_cur


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def fast_log2(x: torch.Tensor) -> bool:
    """Whether the kernels take the GPU's approximate log2 (_log2): compiled, for fp16 / bf16 / fp32; the interpreter
    has no libdevice, and fp64 keeps the exact one."""
    return not _common.INTERPRET and x.dtype != torch.float64


def _walk_meta(size: int, x: torch.Tensor, *tensors: torch.Tensor) -> dict:
    """The window, the channels a trip takes (16 bytes of x's, and at least each half of the window), whether every
    tensor's channels are contiguous (channels_last: one vector load or store a chunk), and the log2."""
    need = _common.next_power_of_2(max(size // 2, 1))
    return {
        "SIZE": size,
        "CH": max(16 // x.element_size(), need),
        "CHANNELS_LAST": all(t.stride(1) == 1 for t in (x, *tensors)),
        "FAST_LOG2": fast_log2(x),
    }


@_common.bf16_in_fp32_under_interpreter
def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """PyTorch-semantics LRN of a 4-D (N, C, H, W) tensor of any strides; output in x's layout."""
    N, C, H, W = x.shape
    out = _common.empty(x.shape, like=x, memory_format=_common.suggest_memory_format(x))
    if out.numel() == 0:
        return out

    def grid(meta):
        return (_common.cdiv(N * H * W, meta["BLOCK_S"]),)

    def expect():
        return expected.lrn(x, size, alpha, beta, k, results=lambda: [out])

    _common.launcher(_lrn_fwd_kernel, expect)[grid](
        x, out,
        C, N * H * W, H, W,
        *x.stride(), *out.stride(),
        alpha / size, beta, k,
        **_walk_meta(size, x, out),
    )
    return out


@_common.bf16_in_fp32_under_interpreter
def lrn_backward(
    grad_out: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """Gradient of lrn_forward with respect to x, recomputing the scale from x."""
    N, C, H, W = x.shape
    dx = _common.empty(x.shape, like=x, memory_format=_common.suggest_memory_format(x))
    if dx.numel() == 0:
        return dx

    def grid(meta):
        return (_common.cdiv(N * H * W, meta["BLOCK_S"]),)

    def expect():
        return expected.lrn_grad(x, grad_out, size, alpha, beta, k, results=lambda: [dx])

    _common.launcher(_lrn_bwd_kernel, expect)[grid](
        x, grad_out, dx,
        C, N * H * W, H, W,
        *x.stride(), *grad_out.stride(), *dx.stride(),
        alpha / size, beta, k, 2.0 * alpha * beta / size,
        **_walk_meta(size, x, grad_out, dx),
    )
    return dx
