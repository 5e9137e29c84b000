"""Cross-channel Local Response Normalization in Triton, forward and backward, one pass each.

PyTorch's definition (alpha divided by the window size, zero padding at the channel edges):

    scale[c] = k + alpha / size * sum_{j = c - lo .. c + hi} x[j]^2        lo = size // 2, hi = (size - 1) // 2
    out[c]   = x[c] * scale[c] ^ -beta

Each program owns a block of pixels (of any images) and walks the channels in order. The squares of the
last `size` channels live in a ring of registers, so the window sum is exact (a ring, not a running
sum with subtraction, which would drift) and every input element is read from memory once.

Backward, from the same ring idea, with t[c] = g[c] * x[c] * scale[c]^(-beta-1):

    dx[i] = g[i] * scale[i]^-beta  -  2 * alpha * beta / size * x[i] * sum_{c = i - hi .. i + lo} t[c]

The scale is recomputed from x (one more ring), so only the input is saved for backward: 0 extra bytes
per element when the input is kept anyway (in AlexNet it is the fused conv's saved output), where
PyTorch's composite LRN keeps about five temporaries of the input's size.
"""

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Pixels per program. Each program loops over all channels, so a block must be small enough to give
# every SM a few programs (AlexNet at batch 128: 93k pixels after conv1, 21.6k after conv2) and large
# enough to keep loads wide. Not yet measured on a GPU for this project.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_S": 64}, num_warps=2),
    triton.Config({"BLOCK_S": 128}, num_warps=4),
    triton.Config({"BLOCK_S": 256}, num_warps=4),
    triton.Config({"BLOCK_S": 512}, num_warps=8),
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
def _ring_push(ring, slots, slot, values):
    """Write values into row `slot` of a [slots, BLOCK_S] register ring."""
    return tl.where(slots[:, None] == slot, values[None, :], ring)


@triton.jit
def _pow_neg(base, beta):
    """base ** -beta for base > 0 (the scale is at least k)."""
    return tl.exp2(-beta * tl.log2(base))


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


# stride_x_c in the key: it tells NCHW from channels_last.
@autotune.tuned(_GPU_CONFIGS, ["C", "P", "SIZE", "stride_x_c"], _interpreter_blocks, checked=["out_ptr"])
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
    # meta-parameters
    SIZE: tl.constexpr, SIZE_P2: tl.constexpr, BLOCK_S: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    HI: tl.constexpr = (SIZE - 1) // 2
    mask, n, h, w = _pixel_block(P, H, W, BLOCK_S)
    x_pix = x_ptr + n * stride_x_n + h * stride_x_h + w * stride_x_w  # channel 0 of each pixel
    o_pix = out_ptr + n * stride_out_n + h * stride_out_h + w * stride_out_w
    slots = tl.arange(0, SIZE_P2)

    squares = tl.zeros((SIZE_P2, BLOCK_S), dtype=ACC_DTYPE)
    # Channel e enters the window; channel c = e - HI then has its whole window [c - lo, c + hi].
    for e in range(0, C + HI):
        x_e = tl.load(x_pix + e * stride_x_c, mask=mask & (e < C), other=0.0).to(ACC_DTYPE)
        squares = _ring_push(squares, slots, e % SIZE, x_e * x_e)
        c = e - HI
        scale = k + alpha_over_size * tl.sum(squares, axis=0)
        x_c = tl.load(x_pix + c * stride_x_c, mask=mask & (c >= 0), other=0.0).to(ACC_DTYPE)  # cache hit
        out = x_c * _pow_neg(scale, beta)
        tl.store(o_pix + c * stride_out_c, out.to(out_ptr.dtype.element_ty), mask=mask & (c >= 0))


# stride_x_c in the key: it tells NCHW from channels_last.
@autotune.tuned(_GPU_CONFIGS, ["C", "P", "SIZE", "stride_x_c"], _interpreter_blocks, checked=["dx_ptr"])
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
    # meta-parameters
    SIZE: tl.constexpr, SIZE_P2: tl.constexpr, BLOCK_S: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    HI: tl.constexpr = (SIZE - 1) // 2
    mask, n, h, w = _pixel_block(P, H, W, BLOCK_S)
    x_pix = x_ptr + n * stride_x_n + h * stride_x_h + w * stride_x_w
    g_pix = grad_ptr + n * stride_grad_n + h * stride_grad_h + w * stride_grad_w
    d_pix = dx_ptr + n * stride_dx_n + h * stride_dx_h + w * stride_dx_w
    slots = tl.arange(0, SIZE_P2)

    squares = tl.zeros((SIZE_P2, BLOCK_S), dtype=ACC_DTYPE)  # x[j]^2, last SIZE channels entered
    ratios = tl.zeros((SIZE_P2, BLOCK_S), dtype=ACC_DTYPE)  # t[c] = g x scale^(-beta-1)
    direct = tl.zeros((SIZE_P2, BLOCK_S), dtype=ACC_DTYPE)  # g[c] scale[c]^-beta
    # Three channels in flight: e enters; c1 = e - HI gets its scale (window complete); c2 = c1 - lo
    # gets its gradient (all t[c] with c in [c2 - hi, c2 + lo] computed).
    for e in range(0, C + SIZE - 1):
        x_e = tl.load(x_pix + e * stride_x_c, mask=mask & (e < C), other=0.0).to(ACC_DTYPE)
        squares = _ring_push(squares, slots, e % SIZE, x_e * x_e)

        c1 = e - HI
        in_1 = mask & (c1 >= 0) & (c1 < C)
        scale = k + alpha_over_size * tl.sum(squares, axis=0)
        p = _pow_neg(scale, beta)
        x_1 = tl.load(x_pix + c1 * stride_x_c, mask=in_1, other=0.0).to(ACC_DTYPE)  # cache hit
        g_1 = tl.load(g_pix + c1 * stride_grad_c, mask=in_1, other=0.0).to(ACC_DTYPE)
        slot_1 = (c1 + SIZE) % SIZE  # c1 >= -HI > -SIZE
        ratios = _ring_push(ratios, slots, slot_1, tl.where(in_1, g_1 * x_1 * p / scale, 0.0))
        direct = _ring_push(direct, slots, slot_1, tl.where(in_1, g_1 * p, 0.0))

        c2 = e - (SIZE - 1)
        in_2 = mask & (c2 >= 0)
        x_2 = tl.load(x_pix + c2 * stride_x_c, mask=in_2, other=0.0).to(ACC_DTYPE)  # cache hit
        direct_2 = tl.sum(tl.where(slots[:, None] == (c2 + SIZE) % SIZE, direct, 0.0), axis=0)
        dx = direct_2 - two_alpha_beta_over_size * x_2 * tl.sum(ratios, axis=0)
        tl.store(d_pix + c2 * stride_dx_c, dx.to(dx_ptr.dtype.element_ty), mask=in_2)


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def _size_meta(size: int) -> dict:
    return {"SIZE": size, "SIZE_P2": _common.next_power_of_2(size)}


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
        **_size_meta(size),
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
        **_size_meta(size),
    )
    return dx
