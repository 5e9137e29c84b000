"""Cross-channel LRN followed by a 2-D max-pool, fused: one kernel each way.

Equal to ``F.max_pool2d(F.local_response_norm(x, size, alpha, beta, k), kernel, stride, padding)``, with the
rules of kernels/lrn.py (PyTorch's LRN: alpha divided by size) and kernels/pool.py (floor mode, padding never
wins, NaN wins, ties go to the first maximum in row-major order, 1-byte window positions for backward).

Forward: each program owns a tile of output pixels x channels. For every window tap it loads the tap's
channel window (SIZE channels) of the input, computes that element's LRN in registers and keeps the
running maximum and its position. Only the pooled output and the positions are written: the full-size
LRN map never reaches memory. An input element is read from memory once; the windows that share it
(the pool's overlap, and the SIZE channel windows around it) read it again from the L1/L2 cache. The
taps are recomputed rather than carried in a ring as kernels/lrn.py does: a ring per tap would need
KH*KW register rings, and without one the channels split freely across programs (no warm-up).

Backward, per input pixel, walking the channels as kernels/lrn.py's backward does (a ring of the
window's squares, exact):

    g[c]  = sum of the pooled gradients of the windows whose maximum (channel c) is this pixel
    t[c]  = g[c] * x[c] * scale[c]^(-beta-1)
    dx[i] = g[i] * scale[i]^-beta  -  2 * alpha * beta / size * x[i] * sum_{c = i - hi .. i + lo} t[c]

g is gathered from the saved positions (each pixel visits the few windows that contain it, as
kernels/pool.py's backward does) and the scale is recomputed from x. So only the input and the 1-byte
positions are saved, every dx element is written once, without atomics, and the result is deterministic.

Traffic per call (N C H W input, N C OH OW output, element size e): forward reads NCHW e and writes
NC OH OW (e + 1); backward reads NC OH OW (e + 1) and NCHW e and writes NCHW e. The two separate ops
also write and read back the full-size LRN map, and its gradient.
"""

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected
from .lrn import _pixel_block, _pow_neg, _ring_push

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Forward tiles: BLOCK_S output pixels x BLOCK_C channels, no loop, so the grid alone gives the
# parallelism (AlexNet per tower at batch 128: 93k pooled pixels x 48 channels after conv1, 21.6k x 128
# after conv2). Each output element keeps KH*KW*SIZE loads in flight (45 for AlexNet, mostly cache hits):
# offline sm_90 compiles give about 70 registers at one element per thread and 110-170 at two to four
# (fp32, no spills), so the tiles hold one or two elements per thread. Narrow pixel x wide channel tiles
# suit channels_last (channels contiguous). Not yet measured on a GPU for this project.
_FWD_GPU_CONFIGS = [
    triton.Config({"BLOCK_S": 64, "BLOCK_C": 2}, num_warps=4),
    triton.Config({"BLOCK_S": 32, "BLOCK_C": 4}, num_warps=4),
    triton.Config({"BLOCK_S": 16, "BLOCK_C": 8}, num_warps=4),
    triton.Config({"BLOCK_S": 8, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_S": 64, "BLOCK_C": 4}, num_warps=4),
]

# Backward: pixels per program, each program walking all channels (as kernels/lrn.py's backward; AlexNet
# at batch 128: 387k input pixels after conv1, 93k after conv2). Not yet measured on a GPU.
_BWD_GPU_CONFIGS = [
    triton.Config({"BLOCK_S": 64}, num_warps=2),
    triton.Config({"BLOCK_S": 128}, num_warps=4),
    triton.Config({"BLOCK_S": 256}, num_warps=4),
    triton.Config({"BLOCK_S": 512}, num_warps=8),
]


def _interpreter_fwd_blocks(args: dict) -> dict:
    """Under the interpreter: every channel and up to 1024 output pixels per program, few programs. Under
    TEST_TILES three programs or more each way, channel blocks no narrower than 4 (each program's cost hardly
    depends on its width, and a tiny shape's many calls, gradcheck's, stay quick)."""
    return {
        "BLOCK_S": _common.program_block(args["P"], 16, 1024),
        "BLOCK_C": _common.program_block(args["C"], 4 if _common.TEST_TILES else 1, 128),
    }


def _interpreter_bwd_blocks(args: dict) -> dict:
    return {"BLOCK_S": _common.program_block(args["P"], 16, 4096)}


# A window position fits in one byte up to this many elements per window (as in kernels/pool.py).
_MAX_UINT8_WINDOW = 256


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _lrn_at(tap, c, C, stride_x_c, inside, alpha_over_size, beta, k, SIZE: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """LRN of channel c at one tap of each window (tap: the pixel's channel-0 pointers), in ACC_DTYPE."""
    LO: tl.constexpr = SIZE // 2
    x_c = tl.load(tap + c * stride_x_c, mask=inside, other=0.0).to(ACC_DTYPE)
    squares = x_c * x_c
    for d in tl.static_range(SIZE):
        if d != LO:
            j = c + (d - LO)
            x_j = tl.load(tap + j * stride_x_c, mask=inside & (j >= 0) & (j < C), other=0.0).to(ACC_DTYPE)
            squares += x_j * x_j
    return x_c * _pow_neg(k + alpha_over_size * squares, beta)


@triton.jit
def _windows_containing(
    h, w, OH, OW,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    WINDOWS_P2: tl.constexpr,
):
    """The pooling windows that contain each input pixel (h, w), one row of a [WINDOWS_P2, pixels] tile per
    candidate (at most ceil(KH / SH) x ceil(KW / SW) of them; 2 x 2 for 3x3 / stride 2): whether it
    exists, its output row and column, and the pixel's position inside it, as the forward numbers them.
    Channel-independent, so computed once per pixel."""
    DH: tl.constexpr = (KH + SH - 1) // SH
    DW: tl.constexpr = (KW + SW - 1) // SW
    candidate = tl.arange(0, WINDOWS_P2)[:, None]
    # The last window (each way) that starts at or before the pixel, and those up to DH (DW) before it.
    oh = ((h + PH) // SH)[None, :] - candidate // DW
    ow = ((w + PW) // SW)[None, :] - candidate % DW
    kh = h[None, :] + PH - oh * SH  # the pixel's row inside window oh
    kw = w[None, :] + PW - ow * SW
    exists = (candidate < DH * DW) & (oh >= 0) & (oh < OH) & (kh < KH) & (ow >= 0) & (ow < OW) & (kw < KW)
    return exists, oh, ow, kh * KW + kw


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(
    _FWD_GPU_CONFIGS,
    ["C", "P", "SIZE", "KH", "KW", "CHANNELS_LAST"],
    _interpreter_fwd_blocks,
    checked=["out_ptr", "pos_ptr"],
)
@triton.jit
def _lrn_max_pool_fwd_kernel(
    # pointers
    x_ptr, out_ptr, pos_ptr,
    # sizes: C channels, P = N*OH*OW output pixels in all
    C, P, H, W, OH, OW,
    # strides (pos shares out's)
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    # LRN parameters
    alpha_over_size, beta, k,
    # meta-parameters: the LRN window, the pool window, the tile
    SIZE: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    mask_s, n, oh, ow = _pixel_block(P, OH, OW, BLOCK_S)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    # A [pixels, channels] tile in channels_last, [channels, pixels] in NCHW: the last axis, which
    # neighbouring lanes share, is the one memory holds contiguous.
    if CHANNELS_LAST:
        mask_s, n, oh, ow, c = mask_s[:, None], n[:, None], oh[:, None], ow[:, None], c[None, :]
    else:
        mask_s, n, oh, ow, c = mask_s[None, :], n[None, :], oh[None, :], ow[None, :], c[:, None]
    mask = mask_s & (c < C)
    x_img = x_ptr + n * stride_x_n
    h0 = oh * SH - PH
    w0 = ow * SW - PW

    best = tl.full(mask.shape, float("-inf"), dtype=out_ptr.dtype.element_ty)
    best_pos = tl.zeros(mask.shape, dtype=tl.int32)
    found = tl.zeros(mask.shape, dtype=tl.int1)
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            ih = h0 + kh
            iw = w0 + kw
            inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            tap = x_img + ih * stride_x_h + iw * stride_x_w
            lrn = _lrn_at(tap, c, C, stride_x_c, inside, alpha_over_size, beta, k, SIZE, ACC_DTYPE)
            # Compared as the separate ops compare it: rounded to the output's dtype.
            v = lrn.to(out_ptr.dtype.element_ty)
            # kernels/pool.py's rule: a larger value or a NaN replaces; the first element inside the
            # image is the default, so padding never wins.
            take = inside & ((v > best) | (v != v) | (found == 0))
            best = tl.where(take, v, best)
            best_pos = tl.where(take, kh * KW + kw, best_pos)
            found = found | inside

    out_offs = n * stride_out_n + c * stride_out_c + oh * stride_out_h + ow * stride_out_w
    tl.store(out_ptr + out_offs, best, mask=mask)
    tl.store(pos_ptr + out_offs, best_pos.to(pos_ptr.dtype.element_ty), mask=mask)


# stride_x_c in the key: it tells NCHW from channels_last.
@autotune.tuned(
    _BWD_GPU_CONFIGS, ["C", "P", "SIZE", "KH", "KW", "stride_x_c"], _interpreter_bwd_blocks, checked=["dx_ptr"]
)
@triton.jit
def _lrn_max_pool_bwd_kernel(
    # pointers
    x_ptr, grad_ptr, pos_ptr, dx_ptr,
    # sizes: C channels, P = N*H*W input pixels in all, OH x OW pooled
    C, P, H, W, OH, OW,
    # strides
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_pos_n, stride_pos_c, stride_pos_h, stride_pos_w,
    stride_dx_n, stride_dx_c, stride_dx_h, stride_dx_w,
    # LRN parameters
    alpha_over_size, beta, k, two_alpha_beta_over_size,
    # meta-parameters: the LRN window, the pool window, the block
    SIZE: tl.constexpr, SIZE_P2: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    WINDOWS_P2: tl.constexpr, BLOCK_S: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    HI: tl.constexpr = (SIZE - 1) // 2
    mask, n, h, w = _pixel_block(P, H, W, BLOCK_S)
    x_pix = x_ptr + n * stride_x_n + h * stride_x_h + w * stride_x_w
    d_pix = dx_ptr + n * stride_dx_n + h * stride_dx_h + w * stride_dx_w
    exists, oh, ow, inside_window = _windows_containing(h, w, OH, OW, KH, KW, SH, SW, PH, PW, WINDOWS_P2)
    exists = exists & mask[None, :]
    g_windows = grad_ptr + n[None, :] * stride_grad_n + oh * stride_grad_h + ow * stride_grad_w  # channel 0
    p_windows = pos_ptr + n[None, :] * stride_pos_n + oh * stride_pos_h + ow * stride_pos_w
    slots = tl.arange(0, SIZE_P2)

    squares = tl.zeros((SIZE_P2, BLOCK_S), dtype=ACC_DTYPE)  # x[j]^2, last SIZE channels entered
    ratios = tl.zeros((SIZE_P2, BLOCK_S), dtype=ACC_DTYPE)  # g[c] x[c] scale[c]^(-beta-1)
    direct = tl.zeros((SIZE_P2, BLOCK_S), dtype=ACC_DTYPE)  # g[c] scale[c]^-beta
    # As in kernels/lrn.py: e enters the window; c1 = e - HI gets its scale and its gathered gradient;
    # c2 = c1 - lo gets its input gradient (every c in [c2 - hi, c2 + lo] done).
    for e in range(0, C + SIZE - 1):
        x_e = tl.load(x_pix + e * stride_x_c, mask=mask & (e < C), other=0.0).to(ACC_DTYPE)
        squares = _ring_push(squares, slots, e % SIZE, x_e * x_e)

        c1 = e - HI
        in_1 = mask & (c1 >= 0) & (c1 < C)
        scale = k + alpha_over_size * tl.sum(squares, axis=0)
        p = _pow_neg(scale, beta)
        x_1 = tl.load(x_pix + c1 * stride_x_c, mask=in_1, other=0.0).to(ACC_DTYPE)  # cache hit
        # The pooled gradient reaching (c1, h, w): the sum over the windows that chose this pixel.
        window = exists & in_1[None, :]
        chosen = window & (tl.load(p_windows + c1 * stride_pos_c, mask=window, other=0).to(tl.int32) == inside_window)
        g_1 = tl.sum(tl.load(g_windows + c1 * stride_grad_c, mask=chosen, other=0.0).to(ACC_DTYPE), axis=0)
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


def _windows_per_pixel(kernel, stride) -> int:
    """The most pooling windows one input pixel lies in: ceil(K / S) each way."""
    return -(-kernel[0] // stride[0]) * -(-kernel[1] // stride[1])


def _window_meta(kernel, stride, padding) -> dict:
    return {"KH": kernel[0], "KW": kernel[1], "SH": stride[0], "SW": stride[1], "PH": padding[0], "PW": padding[1]}


@_common.bf16_in_fp32_under_interpreter
def lrn_max_pool_forward(
    x: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled LRN, window position of each maximum) for a 4-D x of any strides; outputs in x's layout."""
    N, C, H, W = x.shape
    OH = _common.output_size(H, kernel[0], stride[0], padding[0])
    OW = _common.output_size(W, kernel[1], stride[1], padding[1])
    memory_format = _common.suggest_memory_format(x)
    pos_dtype = torch.uint8 if kernel[0] * kernel[1] <= _MAX_UINT8_WINDOW else torch.int32
    out = _common.empty((N, C, OH, OW), like=x, memory_format=memory_format)
    pos = _common.empty((N, C, OH, OW), like=x, dtype=pos_dtype, memory_format=memory_format)
    if out.numel() == 0:
        return out, pos

    def grid(meta):
        return (_common.cdiv(N * OH * OW, meta["BLOCK_S"]), _common.cdiv(C, meta["BLOCK_C"]))

    def expect():
        return expected.lrn_max_pool(x, size, alpha, beta, k, kernel, stride, padding, results=lambda: [out, pos])

    _common.launcher(_lrn_max_pool_fwd_kernel, expect)[grid](
        x, out, pos,
        C, N * OH * OW, H, W, OH, OW,
        *x.stride(), *out.stride(),
        alpha / size, beta, k,
        SIZE=size, **_window_meta(kernel, stride, padding),
        CHANNELS_LAST=memory_format == torch.channels_last,
    )
    return out, pos


@_common.bf16_in_fp32_under_interpreter
def lrn_max_pool_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    pos: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> torch.Tensor:
    """Gradient of lrn_max_pool_forward with respect to x, in x's layout: the pooled gradient gathered
    through the saved positions, through LRN's backward (the scale recomputed from x)."""
    N, C, H, W = x.shape
    OH, OW = pos.shape[2], pos.shape[3]
    dx = _common.empty(x.shape, like=x, memory_format=_common.suggest_memory_format(x))
    if dx.numel() == 0:
        return dx

    def grid(meta):
        return (_common.cdiv(N * H * W, meta["BLOCK_S"]),)

    def expect():
        return expected.lrn_max_pool_grad(
            x, grad_out, pos, size, alpha, beta, k, kernel, stride, padding, results=lambda: [dx]
        )

    _common.launcher(_lrn_max_pool_bwd_kernel, expect)[grid](
        x, grad_out, pos, dx,
        C, N * H * W, H, W, OH, OW,
        *x.stride(), *grad_out.stride(), *pos.stride(), *dx.stride(),
        alpha / size, beta, k, 2.0 * alpha * beta / size,
        SIZE=size, SIZE_P2=_common.next_power_of_2(size), **_window_meta(kernel, stride, padding),
        WINDOWS_P2=_common.next_power_of_2(_windows_per_pixel(kernel, stride)),
    )
    return dx
