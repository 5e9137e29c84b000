"""2-D convolution + bias + ReLU as implicit GEMMs in Triton, forward and backward.

No im2col buffer: each kernel computes the addresses of its GEMM tiles from the convolution's
geometry as it loads them. Per group g (Cin_g = C_in / groups, Cout_g = C_out / groups):

    forward  out[(n,oh,ow), co]    = relu(b[co] + sum_{(kh,kw,ci)} x[n, ci, oh*s-p+kh, ow*s-p+kw] * w[co, ci, kh, kw])
    dgrad    dx[(n,ih,iw), ci]     = sum_{(kh,kw,co)} g[n, co, (ih+p-kh)/s, (iw+p-kw)/s] * w[co, ci, kh, kw]
    wgrad    dw[co, (kh,kw,ci)]    = sum_{(n,oh,ow)} g[n, co, oh, ow] * x[n, ci, oh*s-p+kh, ow*s-p+kw]
    bgrad    db[co]                = sum_{(n,oh,ow)} g[n, co, oh, ow]

with g = grad_out * (out > 0), ReLU's mask, applied once from the saved output (conv_grad.py), which sums
the bias gradient on the way and writes g channels_last; the pre-activation is never stored.

The fast path is channels_last (activations NHWC, the weight as [C_out, KH*KW*C_in], which a
channels_last weight already is; anything else is copied once into that layout). The forward kernel's
reduction is one flat loop over (tap, channel block), taps outer: the tap's offsets are scalars, each
pixel's row address and the tap's spatial validity are per-row vectors, and each step loads a
[pixels x channels] tile contiguous along channels, which the compiler turns into 16-byte async
copies (cp.async) and pipelines. The same kernel computes the input gradient of a stride-1
convolution (a convolution of g with the flipped, transposed weights, padded by k-1-p), and a
convolution whose kernel covers its input (fc6, fc7) as a 1x1 convolution of the flattened input, and conv1 (3
channels, stride 4) as a stride-1 convolution of its input cut into 4x4 blocks of 48 channels (space_to_depth.py);
those, whose GEMM has only the batch as rows, split their reduction over several programs, the last of which to
finish sums the others' partial tiles and applies the epilogue (arrivals.py). A strided
convolution's input gradient (conv1's, which AlexNet never needs) keeps a gather kernel.

This file holds the forward kernel and its launchers; conv_grad.py the gradients; conv_tuning.py the tile
configs and how reductions are split.
"""

import torch
import triton
import triton.language as tl

from . import _common, arrivals, autotune, expected, space_to_depth
from . import conv_tuning as tuning

# The rows of a tile the program that finishes a split reduction sums at a time (sum_splits): 8 rows of a 128-wide
# tile are 8 values per thread at 4 warps, a few registers beside what the main loop holds. Every block a launch may
# pick is a multiple of it (tuning.SMALLEST_BLOCK). The census (bench/results/census-sm90.md) found 16 rows spilling 4
# bytes in the fp32 forward's 64x64 tile, 8 none.
SUM_ROWS = tl.constexpr(8)

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

@triton.jit
def split_arrive(arrival):
    """Called by every program of a split reduction after storing its partial tile: adds 1 to the tile's arrival
    counter (pointer `arrival`) and returns the count before it; the program that gets SPLITS - 1 finishes the tile.

    Memory ordering (PTX's model). Every thread of the program stores part of the partial tile, and one thread (Triton
    runs a scalar atomic on one thread, and hands its result to all through shared memory) makes the increment. The
    barrier orders every thread's stores before that thread's atomic, and the atomic releases at GPU scope: whatever
    is ordered before it (causality order is transitive: the whole tile) is visible to a program that acquires the
    value it wrote. The last program's atomic acquires the values its predecessors' released (the increments form one
    release sequence), and the barrier after it orders that acquire before every thread's loads of the partials, which
    bypass L1 (.cg, at the caller): L1 is not coherent across SMs, so no stale line can serve them."""
    tl.debug_barrier()
    arrived = tl.atomic_add(arrival, 1, sem="acq_rel", scope="gpu")
    tl.debug_barrier()
    return arrived


@triton.jit
def sum_splits(ptrs, mask, stride_split, splits):
    """The sum over s = 0, 1, ..., splits - 1 of the tile at ptrs + s * stride_split, in that order (so the result is
    the same bit for bit whichever program runs it), loading with .cg: from L2, never a stale line of L1 (split_arrive).
    The finishing program sums its tile SUM_ROWS rows at a time, so that this tile holds a few values per thread: a
    whole tile's pointers and sums at once (a 128x128 tile: 128 of each per thread) spilled registers."""
    total = tl.zeros(ptrs.shape, dtype=ptrs.dtype.element_ty)
    for _split in range(0, splits):
        total += tl.load(ptrs, mask=mask, other=0.0, cache_modifier=".cg")
        ptrs += stride_split
    return total


@triton.jit
def _bias_relu_store(acc, bias_ptr, co, mask_n, out_ptrs, mask, HAS_BIAS: tl.constexpr, RELU: tl.constexpr):
    """The forward's epilogue on the fp32 (fp64) accumulator: bias, then ReLU, then the one rounding to out's dtype.
    `acc < 0` is false for NaN, so NaN propagates as in F.relu."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=mask_n, other=0.0).to(acc.dtype)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    tl.store(out_ptrs, acc.to(out_ptrs.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@autotune.tuned(
    tuning.TUNED_CONFIGS["_conv_fwd_kernel"],
    [
        *["M", "C_in_g", "C_out_g", "TAPS", "SPLITS", "PACKED", "TF32"],
        *["stride_x_c", "stride_weight_cin", "stride_weight_cout"],
    ],
    tuning.interpreter_fwd_blocks,
    prune=tuning.prune(
        tuning.FWD_CONFIGS,
        "x_ptr",
        {"BLOCK_M": "M", "BLOCK_N": "C_out_g", "BLOCK_K": tuning.fwd_reduction_block},
        tuning.FWD_PACKED_CONFIGS,
    ),
    checked=["out_ptr"],
)
@triton.jit(do_not_specialize=["M"])  # the batch's pixels: only masks read it, so a new batch size compiles nothing
def _conv_fwd_kernel(
    # pointers; out is [N, C_out, OH, OW] through its strides. When SPLITS > 1 (Triton compiles SPLITS == 1 as a
    # constant, and then neither is read): partial [SPLITS, M, C_out] in ACC_DTYPE, channels contiguous, and one int32
    # arrival counter per output tile (arrivals.py), zero at launch
    x_ptr, weight_ptr, bias_ptr, out_ptr, partial_ptr, arrivals_ptr,
    # sizes: the GEMM is M = N*OH*OW rows, C_out_g columns, TAPS*C_in_g reduction (TAPS = KH*KW)
    M, C_in_g, C_out_g, H, W, OH, OW, KW, TAPS, SPLITS,
    # convolution
    conv_stride_h, conv_stride_w, pad_h, pad_w,
    # strides; the weight is read as [C_out, KH, KW, C_in_g]
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_weight_cout, stride_weight_cin, stride_weight_kh, stride_weight_kw,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    stride_partial_split, stride_partial_m,
    # meta-parameters; PACKED: narrow channels, whose taps share a reduction block (see tuning.PACK_CHANNELS_BELOW)
    HAS_BIAS: tl.constexpr, RELU: tl.constexpr, PACKED: tl.constexpr, TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    # Neighbouring programs share a pixel tile and differ in output channels, so the input tile
    # they all read is fetched from DRAM once and then served from L2.
    pid = tl.program_id(0)
    num_n_tiles = tl.cdiv(C_out_g, BLOCK_N)
    pid_m = pid // num_n_tiles
    pid_n = pid % num_n_tiles
    group = tl.program_id(1)
    split = tl.program_id(2)

    # Per output pixel, once: its image, its window's corner, the taps that stay inside the image (kh in
    # [top, bottom), kw in [left, right); none for rows past M), and the addresses of its tap (0, 0).
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)
    ih0 = oh * conv_stride_h - pad_h
    iw0 = ow * conv_stride_w - pad_w
    top = tl.where(mask_m, -ih0, TAPS)
    bottom = H - ih0
    left = -iw0
    right = W - iw0
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels within the group
    mask_n = offs_n < C_out_g
    co = group * C_out_g + offs_n
    offs_c = tl.arange(0, BLOCK_K)
    x_rows = (
        n.to(tl.int64) * stride_x_n
        + ih0.to(tl.int64) * stride_x_h
        + iw0.to(tl.int64) * stride_x_w
        + (group * C_in_g).to(tl.int64) * stride_x_c
    )
    weight_cols = weight_ptr + co.to(tl.int64) * stride_weight_cout
    if PACKED:
        # The reduction index k = (tap, channel), channel fastest, BLOCK_K of them per step across taps.
        steps = tl.cdiv(TAPS * C_in_g, BLOCK_K)
    else:
        # One flat loop over (tap, channel block), taps outer; each step's offsets are scalars added to the
        # pointers of tap (0, 0).
        channel_blocks = tl.cdiv(C_in_g, BLOCK_K)
        steps = TAPS * channel_blocks
        a_ptrs = x_ptr + x_rows[:, None] + (offs_c * stride_x_c)[None, :]  # [BLOCK_M, BLOCK_K]
        b_ptrs = weight_cols[None, :] + (offs_c * stride_weight_cin)[:, None]  # [BLOCK_K, BLOCK_N]
    per_split = tl.cdiv(steps, SPLITS)  # this split's share of the steps
    first = split * per_split
    last = tl.minimum(first + per_split, steps)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for step in range(first, last):
        if PACKED:
            k = step * BLOCK_K + offs_c
            mask_k = k < TAPS * C_in_g
            tap = k // C_in_g
            c = k - tap * C_in_g
            kh = tap // KW
            kw = tap - kh * KW
            in_image = (  # zero padding = masked load, per pixel and tap
                (kh[None, :] >= top[:, None])
                & (kh[None, :] < bottom[:, None])
                & (kw[None, :] >= left[:, None])
                & (kw[None, :] < right[:, None])
                & mask_k[None, :]
            )
            a = tl.load(
                x_ptr + x_rows[:, None] + (kh * stride_x_h + kw * stride_x_w + c * stride_x_c)[None, :],
                mask=in_image,
                other=0.0,
            )
            b = tl.load(
                weight_cols[None, :] + (kh * stride_weight_kh + kw * stride_weight_kw + c * stride_weight_cin)[:, None],
                mask=mask_k[:, None] & mask_n[None, :],
                other=0.0,
            )
        else:
            tap = step // channel_blocks
            c0 = (step - tap * channel_blocks) * BLOCK_K
            kh = tap // KW
            kw = tap - kh * KW
            in_image = (kh >= top) & (kh < bottom) & (kw >= left) & (kw < right)  # zero padding = masked load
            mask_c = offs_c < C_in_g - c0
            a = tl.load(
                a_ptrs + (kh * stride_x_h + kw * stride_x_w + c0 * stride_x_c),
                mask=in_image[:, None] & mask_c[None, :],
                other=0.0,
            )
            b = tl.load(
                b_ptrs + (kh * stride_weight_kh + kw * stride_weight_kw + c0 * stride_weight_cin),
                mask=mask_c[:, None] & mask_n[None, :],
                other=0.0,
            )
        acc = tl.dot(a, b, acc, input_precision="tf32" if TF32 else "ieee", out_dtype=ACC_DTYPE)

    if SPLITS > 1:
        # The reduction is split: each program writes its partial tile, and the last of the tile's SPLITS programs to
        # arrive adds them up in split order (0, 1, 2, ...: bit-reproducible whichever arrives last), SUM_ROWS rows at a
        # time, and stores.
        partial_rows = partial_ptr + offs_m.to(tl.int64) * stride_partial_m + split.to(tl.int64) * stride_partial_split
        tl.store(partial_rows[:, None] + co[None, :], acc, mask=mask_m[:, None] & mask_n[None, :])
        arrival = arrivals_ptr + group * tl.num_programs(0) + pid
        tl.static_assert(SUM_ROWS <= BLOCK_M, "the finishing program's rows stay in its tile (both powers of two)")
        if split_arrive(arrival) == SPLITS - 1:
            for r0 in range(0, BLOCK_M, SUM_ROWS):
                rows = pid_m * BLOCK_M + r0 + tl.arange(0, SUM_ROWS)
                mask = (rows < M)[:, None] & mask_n[None, :]
                partial_tile = (partial_ptr + rows.to(tl.int64) * stride_partial_m)[:, None] + co[None, :]
                total = sum_splits(partial_tile, mask, stride_partial_split, SPLITS)
                out_rows = (
                    (rows // (OW * OH)).to(tl.int64) * stride_out_n
                    + (rows // OW) % OH * stride_out_h
                    + rows % OW * stride_out_w
                )
                out_ptrs = out_ptr + out_rows[:, None] + (co.to(tl.int64) * stride_out_c)[None, :]
                _bias_relu_store(total, bias_ptr, co, mask_n, out_ptrs, mask, HAS_BIAS, RELU)
            tl.store(arrival, 0)  # for the next launch on this stream (or the graph's next replay)
    else:
        out_ptrs = (
            out_ptr
            + (n.to(tl.int64) * stride_out_n + oh * stride_out_h + ow * stride_out_w)[:, None]
            + (co.to(tl.int64) * stride_out_c)[None, :]
        )
        _bias_relu_store(acc, bias_ptr, co, mask_n, out_ptrs, mask_m[:, None] & mask_n[None, :], HAS_BIAS, RELU)


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------

def output_memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout of the output and of both gradients, chosen as PyTorch's convolutions choose it:
    channels_last when the input's or the weight's strides suggest it (views included), else NCHW."""
    formats = (_common.suggest_memory_format(x), _common.suggest_memory_format(weight))
    return torch.channels_last if torch.channels_last in formats else torch.contiguous_format


def dense_channels(t: torch.Tensor) -> torch.Tensor:
    """t with contiguous channels (the fast path's loads run along them): itself when they are, else a
    channels_last copy."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous(memory_format=torch.channels_last)


def covers_input(input_size: tuple[int, int], kernel: tuple[int, int], padding: tuple[int, int], groups: int) -> bool:
    """Whether the kernel covers the whole unpadded input (fc6; fc7 is 1x1 on a 1x1 map): then the convolution is one
    matrix product of the flattened NHWC input and weight, run as a 1x1 convolution."""
    return tuple(input_size) == tuple(kernel) and tuple(padding) == (0, 0) and groups == 1


def flatten_to_1x1(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] as [N, H*W*C, 1, 1] in (h, w, c) order: a view of a dense channels_last tensor, else a copy."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, 1, 1)


def convolve(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
    *,
    relu: bool,
) -> None:
    """out = [relu](conv2d(x, weight) + bias), written through out's strides by the forward kernel. x and weight
    as they are (any strides; contiguous channels, resp. input channels, are the fast path)."""
    N, _, H, W = x.shape
    C_out, C_in_g, KH, KW = weight.shape
    OH, OW = out.shape[2], out.shape[3]
    C_out_g = C_out // groups
    M = N * OH * OW
    tf32 = _common.use_tf32(x.dtype)
    tiles = _common.cdiv(M, 64) * _common.cdiv(C_out_g, 64) * groups
    splits = tuning.reduction_splits(tiles, KH * KW * C_in_g, x.device)
    partial = counters = out  # read only when the reduction is split
    capacity = 0
    if splits > 1:  # partial sums and a counter per output tile, however small the tiles the launch picks
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        partial = _common.empty((splits, M, C_out), like=x, dtype=acc_dtype)
        counters = arrivals.counters(x, tuning.most_tiles(M, C_out_g) * groups)
        capacity = counters.numel()

    def grid(meta):
        tiles = _common.cdiv(M, meta["BLOCK_M"]) * _common.cdiv(C_out_g, meta["BLOCK_N"])
        if splits > 1:
            tuning.check_counters(tiles * groups, capacity)
        return (tiles, groups, splits)

    def expect():
        results = (lambda: [out]) if splits == 1 else arrivals.settled(counters, lambda: [out])
        return expected.conv(x, weight, bias, stride, padding, groups, relu=relu, tf32=tf32, out_dtype=out.dtype,
                             results=results)  # fmt: skip

    _common.launcher(_conv_fwd_kernel, expect)[grid](
        x, weight, bias if bias is not None else weight, out, partial, counters,
        M, C_in_g, C_out_g, H, W, OH, OW, KW, KH * KW, splits,
        stride[0], stride[1], padding[0], padding[1],
        *x.stride(), weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3),
        *out.stride(),
        partial.stride(0) if splits > 1 else 0, partial.stride(1) if splits > 1 else 0,
        HAS_BIAS=bias is not None,
        RELU=relu,
        PACKED=C_in_g < tuning.PACK_CHANNELS_BELOW,
        TF32=tf32,
    )


@_common.bf16_in_fp32_under_interpreter
def conv_relu_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """relu(conv2d(x, weight, bias)) for a 4-D x; arguments already validated by the caller."""
    N, C_in, H, W = x.shape
    C_out, C_in_g, KH, KW = weight.shape
    OH = _common.output_size(H, KH, stride[0], padding[0])
    OW = _common.output_size(W, KW, stride[1], padding[1])
    out = _common.empty((N, C_out, OH, OW), like=x, memory_format=output_memory_format(x, weight))
    if N * OH * OW == 0:  # empty batch: nothing to launch
        return out
    if space_to_depth.applies(C_in_g, stride, groups):  # conv1: dense channels, stride 1 (space_to_depth.py)
        x = space_to_depth.space_to_depth(x, (KH, KW), stride, padding, (OH, OW))
        weight, stride, padding = space_to_depth.space_to_depth_weight(weight, stride), (1, 1), (0, 0)
    else:
        x, weight = dense_channels(x), dense_channels(weight)
    if covers_input(x.shape[2:], weight.shape[2:], padding, groups):
        x, weight, stride = flatten_to_1x1(x), flatten_to_1x1(weight), (1, 1)
    convolve(x, weight, bias, out, stride, padding, groups, relu=True)
    return out
