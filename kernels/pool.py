"""2-D max-pool in Triton (AlexNet's overlapping 3x3 / stride 2, or any window), forward and backward.

Same rules as PyTorch: padding never wins, NaN wins (and the last NaN in the window is the one chosen), ties go to
the first maximum in row-major order, and a window of only -inf chooses its first element inside the image.

For backward the forward saves, per output element, the position of the maximum inside its window as
one byte (uint8, windows of up to 256 elements; int32 beyond), instead of PyTorch's int64 index into
the whole plane: 1 byte per output element instead of 8, and nothing of the input but its shape.

Each program owns a tile of pixels x channels: [pixels, channels] in channels_last, whose channels are contiguous
(a thread loads 16 bytes of neighbouring channels at once), [channels, pixels] in NCHW, whose pixels are; the last
axis, which neighbouring lanes share, is the one memory holds contiguous. A pixel's position (n, h, w) is
unflattened once for all its channels (the division and modulo by runtime sizes cost more than the max itself).

Forward: one output pixel per tile row, its window unrolled (kernel size and stride are compile-time constants).

Backward gathers, a cell of SH x SW input pixels per tile row: cell (a, b) holds the input pixels
(a*SH - PH + r, b*SW - PW + s), r < SH, s < SW, and the windows that contain any of them are (a - d, b - e),
d < ceil(KH / SH), e < ceil(KW / SW), in which pixel (r, s) sits at the constant position (r + d*SH, s + e*SW).
So each window's gradient and saved position are loaded once for the cell's SH*SW pixels (2x2 for 3x3 / stride 2,
four windows for four pixels) and compared with constants, and each pixel sums the gradients of the windows that
chose it, in a fixed order, without atomics: every dx element is written once, deterministically.
"""

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Tiles of BLOCK_P pixels (the backward's: cells) x BLOCK_C channels, 8 elements a thread at 4 warps: one 128-bit
# load per window tap in bf16 (two in fp32). sm_90 census at conv5's pool (128 x 128 x 13 x 13, channels_last,
# bench/memory_model.py): the three shapes issue alike, forward 600 instructions a program (bf16), modeled bound 1.00
# in bf16 and fp32 (0.60 and 1.00 with an element a lane and its own index arithmetic), backward 528, bound 1.00
# (0.13 and 0.25); 16 elements a thread (64 x 32) reaches 255 registers and spills in the padded backward. Wider
# channel blocks make a warp's loads whole 32-byte sectors in channels_last. Not yet measured on a GPU for this
# project.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 32}, num_warps=4),
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 16}, num_warps=4),
    triton.Config({"BLOCK_P": 128, "BLOCK_C": 8}, num_warps=4),
]


def _interpreter_blocks(args: dict) -> dict:
    """Under the interpreter: up to 2048 pixels (cells) and every channel up to 64 in a program; under TEST_TILES
    three programs or more each way."""
    return {
        "BLOCK_P": _common.program_block(args["P"], 16, 2048),
        "BLOCK_C": _common.program_block(args["C"], 1, 64),
    }


# A window position fits in one byte up to this many elements per window.
_MAX_UINT8_WINDOW = 256


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _pixel_block(P, H, W, BLOCK_P: tl.constexpr):
    """This program's block of the N*H*W pixels (P < 2**31, the launchers check): (in range, n as int64, h, w)."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return p < P, (p // (H * W)).to(tl.int64), (p // W) % H, p % W


@triton.jit
def _tile(pixel_values, channel_values, CHANNELS_LAST: tl.constexpr):
    """A per-pixel and a per-channel vector as the tile's two axes: [pixels, channels] in channels_last, [channels,
    pixels] in NCHW (the last axis is the contiguous one)."""
    if CHANNELS_LAST:
        return pixel_values[:, None], channel_values[None, :]
    else:
        return pixel_values[None, :], channel_values[:, None]


@triton.jit
def _per_pixel(values, CHANNELS_LAST: tl.constexpr):
    """A per-pixel vector as a tile axis (see _tile)."""
    if CHANNELS_LAST:
        return values[:, None]
    else:
        return values[None, :]


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(_GPU_CONFIGS, ["P", "C", "CHANNELS_LAST"], _interpreter_blocks, checked=["out_ptr", "pos_ptr"])
@triton.jit
def _max_pool_fwd_kernel(
    # pointers
    x_ptr, out_ptr, pos_ptr,
    # sizes: P = N*OH*OW output pixels
    P, C, H, W, OH, OW,
    # strides (out and pos share out's)
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    # meta-parameters: the window, the layout, the tile
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Without padding every tap of a window is inside the image (floor mode), tap 0 first: it replaces the initial
    # -inf unless it is -inf itself, when position 0 is already right.
    PADDED: tl.constexpr = PH > 0 or PW > 0
    in_p, n, oh, ow = _pixel_block(P, OH, OW, BLOCK_P)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    in_p, c = _tile(in_p, tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C), CHANNELS_LAST)
    mask = in_p & (c < C)
    x_base = x_ptr + _per_pixel(n * stride_x_n, CHANNELS_LAST) + c * stride_x_c

    best = tl.full(mask.shape, float("-inf"), dtype=x_ptr.dtype.element_ty)
    best_pos = tl.zeros(mask.shape, dtype=tl.int32)
    found = tl.zeros(in_p.shape, dtype=tl.int1)  # per pixel: a tap inside the image seen
    for kh in tl.static_range(KH):
        for kw in tl.static_range(KW):
            ih = h0 + kh
            iw = w0 + kw
            tap = x_base + _per_pixel(ih * stride_x_h + iw * stride_x_w, CHANNELS_LAST)
            if PADDED:
                inside = _per_pixel((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W), CHANNELS_LAST)
                v = tl.load(tap, mask=mask & inside, other=float("-inf"))
                # PyTorch's rule: a larger value or a NaN replaces; the first element inside the image
                # is the default, so a window of only -inf still points into the image.
                take = inside & ((v > best) | (v != v) | (found == 0))
                found = found | inside
            else:
                v = tl.load(tap, mask=mask, other=float("-inf"))
                take = (v > best) | (v != v)
            best = tl.where(take, v, best)
            best_pos = tl.where(take, kh * KW + kw, best_pos)

    out_offs = _per_pixel(n * stride_out_n + oh * stride_out_h + ow * stride_out_w, CHANNELS_LAST) + c * stride_out_c
    tl.store(out_ptr + out_offs, best, mask=mask)
    tl.store(pos_ptr + out_offs, best_pos.to(pos_ptr.dtype.element_ty), mask=mask)


@autotune.tuned(_GPU_CONFIGS, ["P", "C", "CHANNELS_LAST"], _interpreter_blocks, checked=["dx_ptr"])
@triton.jit
def _max_pool_bwd_kernel(
    # pointers
    grad_ptr, pos_ptr, dx_ptr,
    # sizes: P = N*A*B cells of SH x SW input pixels, A = ceil((H + PH) / SH), B = ceil((W + PW) / SW)
    P, C, H, W, OH, OW, A, B,
    # strides
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_pos_n, stride_pos_c, stride_pos_h, stride_pos_w,
    stride_dx_n, stride_dx_c, stride_dx_h, stride_dx_w,
    # meta-parameters: the window, the layout, the tile
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    CHANNELS_LAST: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    DH: tl.constexpr = (KH + SH - 1) // SH  # windows reaching a cell, each way
    DW: tl.constexpr = (KW + SW - 1) // SW
    in_p, n, a, b = _pixel_block(P, A, B, BLOCK_P)
    in_p, c = _tile(in_p, tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C), CHANNELS_LAST)
    mask = in_p & (c < C)

    # The windows (a - d, b - e): each one's saved position and gradient, loaded once for the cell.
    g_base = grad_ptr + _per_pixel(n * stride_grad_n, CHANNELS_LAST) + c * stride_grad_c
    p_base = pos_ptr + _per_pixel(n * stride_pos_n, CHANNELS_LAST) + c * stride_pos_c
    positions = ()
    gradients = ()
    for d in tl.static_range(DH):
        for e in tl.static_range(DW):
            oh = a - d
            ow = b - e
            window = mask & _per_pixel((oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW), CHANNELS_LAST)
            pos_offs = _per_pixel(oh * stride_pos_h + ow * stride_pos_w, CHANNELS_LAST)
            grad_offs = _per_pixel(oh * stride_grad_h + ow * stride_grad_w, CHANNELS_LAST)
            positions += (tl.load(p_base + pos_offs, mask=window),)
            gradients += (tl.load(g_base + grad_offs, mask=window, other=0).to(ACC_DTYPE),)

    dx_base = dx_ptr + _per_pixel(n * stride_dx_n, CHANNELS_LAST) + c * stride_dx_c
    for r in tl.static_range(SH):
        ih = a * SH - PH + r
        for s in tl.static_range(SW):
            iw = b * SW - PW + s
            acc = tl.zeros(mask.shape, dtype=ACC_DTYPE)
            for d in tl.static_range(DH):
                for e in tl.static_range(DW):
                    if r + d * SH < KH and s + e * SW < KW:  # pixel (r, s) lies in window (a - d, b - e)
                        chosen = positions[d * DW + e] == (r + d * SH) * KW + (s + e * SW)
                        acc += tl.where(chosen, gradients[d * DW + e], 0.0)
            inside = _per_pixel((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W), CHANNELS_LAST)
            dx_offs = _per_pixel(ih * stride_dx_h + iw * stride_dx_w, CHANNELS_LAST)
            tl.store(dx_base + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=mask & inside)


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def _window_meta(kernel, stride, padding, channels_last: bool) -> dict:
    return {
        "KH": kernel[0], "KW": kernel[1], "SH": stride[0], "SW": stride[1], "PH": padding[0], "PW": padding[1],
        "CHANNELS_LAST": channels_last,
    }


def _check_pixels(count: int) -> int:
    """count, after checking that pixel indices fit the kernels' int32 arithmetic."""
    if count >= 2**31:
        raise ValueError(f"max-pool: {count:,} pixels (or cells) in one launch, past 2**31 - 1: split the batch")
    return count


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
    pixels = _check_pixels(N * OH * OW)
    if out.numel() == 0:
        return out, pos

    def grid(meta):
        return (_common.cdiv(pixels, meta["BLOCK_P"]), _common.cdiv(C, meta["BLOCK_C"]))

    def expect():
        return expected.max_pool(x, kernel, stride, padding, results=lambda: [out, pos])

    _common.launcher(_max_pool_fwd_kernel, expect)[grid](
        x, out, pos,
        pixels, C, H, W, OH, OW,
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
    if dx.numel() == 0:
        return dx
    A = _common.cdiv(H + padding[0], stride[0])  # cells of stride[0] x stride[1] input pixels
    B = _common.cdiv(W + padding[1], stride[1])
    cells = _check_pixels(N * A * B)

    def grid(meta):
        return (_common.cdiv(cells, meta["BLOCK_P"]), _common.cdiv(C, meta["BLOCK_C"]))

    def expect():
        return expected.max_pool_grad(grad_out, pos, input_shape, kernel, stride, padding, results=lambda: [dx])

    _common.launcher(_max_pool_bwd_kernel, expect)[grid](
        grad_out, pos, dx,
        cells, C, H, W, OH, OW, A, B,
        *grad_out.stride(), *pos.stride(), *dx.stride(),
        **_window_meta(kernel, stride, padding, memory_format == torch.channels_last),
    )
    return dx
