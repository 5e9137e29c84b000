"""The gradients of conv2d + bias + ReLU (the math is in conv.py's docstring): ReLU's mask applied once with the
bias gradient summed on the way (_relu_grad_kernel), the weight gradient as per-tap GEMMs over the batch's pixels
(_conv_wgrad_kernel), and the input gradient: conv.py's forward kernel for stride 1 and for layers whose kernel
covers their input, a gather kernel for strided convolutions (conv1's, which AlexNet never needs).
"""

import torch
import triton
import triton.language as tl

from . import _common, arrivals, autotune, expected, space_to_depth
from . import conv_tuning as tuning
from .conv import SUM_ROWS, convolve, covers_input, dense_channels, flatten_to_1x1, split_arrive, sum_splits
from .conv_tuning import MASK_CONFIGS

# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

@autotune.tuned(
    MASK_CONFIGS,
    ["PIXELS_PER_PROGRAM", "C", "HAS_BIAS", "stride_grad_c", "stride_out_c"],
    tuning.interpreter_mask_blocks,
    checked=["masked_ptr", "db_ptr"],
)
@triton.jit(do_not_specialize=["PIXELS"])  # the batch's pixels: only masks read it
def _relu_grad_kernel(
    # pointers: masked [N, OH, OW, C] dense, db [C]; with HAS_BIAS and more than one pixel chunk (programs along axis
    # 0), partial_db [chunks, C] in ACC_DTYPE and an int32 arrival counter per channel block (arrivals.py), zero at
    # launch
    grad_ptr, out_ptr, masked_ptr, db_ptr, partial_db_ptr, arrivals_ptr,
    # sizes: each program masks PIXELS_PER_PROGRAM pixels of one channel block
    PIXELS, PIXELS_PER_PROGRAM, C, OH, OW,
    # strides
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    stride_partial_db_chunk,
    # meta-parameters
    HAS_BIAS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    chunk = tl.program_id(0)
    chunks = tl.num_programs(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = c < C
    p_start = chunk * PIXELS_PER_PROGRAM
    p_end = tl.minimum(p_start + PIXELS_PER_PROGRAM, PIXELS)
    db = tl.zeros((BLOCK_C,), dtype=ACC_DTYPE)
    for p0 in range(p_start, p_end, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)  # output pixels (n, oh, ow)
        ow = p % OW
        oh = (p // OW) % OH
        n = (p // (OW * OH)).to(tl.int64)
        mask = (p < p_end)[:, None] & mask_c[None, :]
        grad_rows = n * stride_grad_n + oh * stride_grad_h + ow * stride_grad_w
        out_rows = n * stride_out_n + oh * stride_out_h + ow * stride_out_w
        dy = tl.load(grad_ptr + grad_rows[:, None] + (c * stride_grad_c)[None, :], mask=mask, other=0.0)
        y = tl.load(out_ptr + out_rows[:, None] + (c * stride_out_c)[None, :], mask=mask, other=0.0)
        g = tl.where(y <= 0, tl.zeros_like(dy), dy)  # ReLU backward: a NaN output passes dy, as in PyTorch
        tl.store(masked_ptr + p.to(tl.int64)[:, None] * C + c[None, :], g, mask=mask)
        if HAS_BIAS:
            db += tl.sum(g.to(ACC_DTYPE), axis=0)
    if HAS_BIAS:
        if chunks > 1:
            # The last chunk to arrive at its channel block sums every chunk's partial, in a fixed order (chunk r into
            # row r % BLOCK_P of a tile, chunk after chunk; then the tile's rows by tl.sum's fixed tree).
            tl.store(partial_db_ptr + chunk * stride_partial_db_chunk + c, db, mask=mask_c)
            arrival = arrivals_ptr + tl.program_id(1)
            arrived = split_arrive(arrival)
            if arrived == chunks - 1:
                rows = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC_DTYPE)
                for r0 in range(0, chunks, BLOCK_P):
                    r = r0 + tl.arange(0, BLOCK_P)
                    rows += tl.load(
                        partial_db_ptr + (r * stride_partial_db_chunk)[:, None] + c[None, :],
                        mask=(r < chunks)[:, None] & mask_c[None, :],
                        other=0.0,
                        cache_modifier=".cg",
                    )
                tl.store(arrival, 0)  # for the next launch on this stream (or the graph's next replay)
                tl.store(db_ptr + c, tl.sum(rows, axis=0).to(db_ptr.dtype.element_ty), mask=mask_c)
        else:
            tl.store(db_ptr + c, db.to(db_ptr.dtype.element_ty), mask=mask_c)


@autotune.tuned(
    tuning.TUNED_CONFIGS["_conv_dgrad_gather_kernel"],
    ["GEMM_M", "GEMM_N", "GEMM_K", "TF32", "stride_grad_c"],
    tuning.interpreter_gather_blocks,
    prune=tuning.prune(tuning.GATHER_CONFIGS, "grad_ptr", {}),
    checked=["dx_ptr"],
)
@triton.jit(do_not_specialize=["GEMM_M"])  # the batch's pixels: only masks read it
def _conv_dgrad_gather_kernel(
    # pointers: grad is the masked gradient g
    grad_ptr, weight_ptr, dx_ptr,
    # sizes: GEMM_M = N*H*W, GEMM_N = Cin_g, GEMM_K = Cout_g*KH*KW
    GEMM_M, GEMM_N, GEMM_K, C_out_g, H, W, OH, OW, KW,
    # convolution
    conv_stride_h, conv_stride_w, pad_h, pad_w,
    # strides
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_weight_cout, stride_weight_cin, stride_weight_kh, stride_weight_kw,
    stride_dx_n, stride_dx_c, stride_dx_h, stride_dx_w,
    # meta-parameters
    TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    # Gather form: each input pixel sums over the (kh, kw, co) that read it, so every dx element is
    # written once, without atomics. With stride s only 1/s^2 of the (kh, kw) pairs hit an output
    # pixel; the others are masked. It serves strided convolutions only (conv1, stride 4, whose input
    # gradient AlexNet never needs); stride 1 runs the forward kernel.
    pid = tl.program_id(0)
    num_n_tiles = tl.cdiv(GEMM_N, BLOCK_N)
    pid_m = pid // num_n_tiles
    pid_n = pid % num_n_tiles
    group = tl.program_id(1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # input pixels (n, ih, iw)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # input channels within the group
    mask_m = offs_m < GEMM_M
    mask_n = offs_n < GEMM_N
    iw = offs_m % W
    ih = (offs_m // W) % H
    n = (offs_m // (W * H)).to(tl.int64)
    co_base = group * C_out_g
    g_rows = grad_ptr + n * stride_grad_n + co_base.to(tl.int64) * stride_grad_c  # [BLOCK_M]
    ci = group * GEMM_N + offs_n
    weight_cols = (  # [BLOCK_N]
        weight_ptr + offs_n.to(tl.int64) * stride_weight_cin + co_base.to(tl.int64) * stride_weight_cout
    )

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, GEMM_K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # reduction index (kh, kw, co), co fastest
        mask_k = offs_k < GEMM_K
        co = offs_k % C_out_g
        kw = (offs_k // C_out_g) % KW
        kh = offs_k // (C_out_g * KW)
        th = ih[:, None] + pad_h - kh[None, :]
        tw = iw[:, None] + pad_w - kw[None, :]
        oh = th // conv_stride_h
        ow = tw // conv_stride_w
        hits = (
            (th >= 0) & (tw >= 0) & (th % conv_stride_h == 0) & (tw % conv_stride_w == 0) & (oh < OH) & (ow < OW)
        )
        dy = tl.load(
            g_rows[:, None] + co[None, :] * stride_grad_c + oh * stride_grad_h + ow * stride_grad_w,
            mask=mask_m[:, None] & mask_k[None, :] & hits,
            other=0.0,
        )
        w = tl.load(
            weight_cols[None, :]
            + (co * stride_weight_cout + kh * stride_weight_kh + kw * stride_weight_kw)[:, None],
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = tl.dot(dy, w, acc, input_precision="tf32" if TF32 else "ieee", out_dtype=ACC_DTYPE)

    dx_ptrs = (
        dx_ptr
        + (n * stride_dx_n + ih * stride_dx_h + iw * stride_dx_w)[:, None]
        + (ci.to(tl.int64) * stride_dx_c)[None, :]
    )
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@autotune.tuned(
    tuning.TUNED_CONFIGS["_conv_wgrad_kernel"],
    ["C_out_g", "COLUMNS", "KW", "PIXELS_PER_SPLIT", "PACKED", "INSIDE", "TF32", "stride_x_c"],
    tuning.interpreter_wgrad_blocks,
    prune=tuning.prune(
        tuning.WGRAD_CONFIGS,
        "x_ptr",
        {"BLOCK_M": "C_out_g", "BLOCK_N": "COLUMNS"},
        tuning.WGRAD_PACKED_CONFIGS,
        gathers=tuning.wgrad_gathers,
    ),
    checked=["dw_ptr"],
)
@triton.jit(do_not_specialize=["PIXELS", "PIXELS_PER_SPLIT"])  # the batch's pixels: loop bounds and masks
def _conv_wgrad_kernel(
    # pointers: grad is the masked gradient g, dense [pixels, C_out]; dw [C_out, KH, KW, Cin_g] through its strides
    # (the launch's taps and columns); with more than one split (programs along axis 1), partial_dw [splits, C_out, KH,
    # KW, Cin_g] in ACC_DTYPE and an int32 arrival counter per output tile (arrivals.py), zero at launch
    grad_ptr, x_ptr, dw_ptr, partial_dw_ptr, arrivals_ptr,
    # sizes: per tap a GEMM of C_out_g rows, COLUMNS = C_in_g columns (TAPS*C_in_g when PACKED: every tap at once)
    # and the pixels N*OH*OW as reduction, split into PIXELS_PER_SPLIT chunks
    C_out_g, C_in_g, COLUMNS, H, W, OH, OW, KW, PIXELS, PIXELS_PER_SPLIT,
    # convolution
    conv_stride_h, conv_stride_w, pad_h, pad_w,
    # strides
    stride_grad_pixel, stride_grad_c,
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_dw_cout, stride_dw_kh, stride_dw_kw, stride_dw_cin,
    stride_partial_dw_split, stride_partial_dw_cout, stride_partial_dw_kh, stride_partial_dw_kw,
    stride_partial_dw_cin,
    # meta-parameters; PACKED: the columns are (tap, channel) pairs of every tap: narrow channels (see
    # tuning.PACK_CHANNELS_BELOW), each element with its own address and bounds, or with INSIDE a convolution whose
    # windows all lie in the image (stride 1, no padding) and whose channels are dense runs of 16 (conv1 blocked: 3x3
    # taps of 48), so that its 432 columns fill 128-wide tiles without bounds, loaded 16 channels at a time
    PACKED: tl.constexpr, INSIDE: tl.constexpr, TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    # Taps outer: neighbouring programs share a tap (and so the input rows they read) and differ in
    # output channels, then input channels.
    pid = tl.program_id(0)
    num_m_tiles = tl.cdiv(C_out_g, BLOCK_M)
    num_n_tiles = tl.cdiv(COLUMNS, BLOCK_N)
    pid_m = pid % num_m_tiles
    pid_n = (pid // num_m_tiles) % num_n_tiles
    split = tl.program_id(1)
    group = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels within the group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # columns: input channels within the group, or (tap, channel)
    mask_m = offs_m < C_out_g
    mask_n = offs_n < COLUMNS
    if PACKED:
        tap = offs_n // C_in_g  # [BLOCK_N]
        ci = offs_n - tap * C_in_g
    else:
        tap = pid // (num_m_tiles * num_n_tiles)  # a scalar
        ci = offs_n
    kh = tap // KW
    kw = tap - kh * KW
    co = group * C_out_g + offs_m
    g_cols = grad_ptr + co.to(tl.int64) * stride_grad_c  # [BLOCK_M]
    x_offsets = kh * stride_x_h + kw * stride_x_w  # [BLOCK_N] (or a scalar tap's): each column's tap offset
    if INSIDE:
        tl.static_assert(PACKED, "INSIDE lays out PACKED columns")
        tl.static_assert(stride_x_c == 1, "INSIDE's runs are channels one after another")
        # A run of 16 columns never straddles a tap (C_in_g and the strides are multiples of 16): tell the compiler,
        # which cannot see through the division by C_in_g, so that it loads each run as whole 16-byte vectors.
        x_offsets = tl.max_contiguous(tl.multiple_of(x_offsets + group * C_in_g + ci, 16), 16)
        x_cols = x_ptr + x_offsets
    else:
        x_cols = x_ptr + (group * C_in_g + ci).to(tl.int64) * stride_x_c + x_offsets

    # Each of the BLOCK_K pixel lanes keeps its (n, oh, ow) and steps it by BLOCK_K pixels per trip with
    # carries, so the loop divides nothing.
    p_start = split * PIXELS_PER_SPLIT
    p_end = tl.minimum(p_start + PIXELS_PER_SPLIT, PIXELS)
    lanes = tl.arange(0, BLOCK_K)
    ow = (p_start + lanes) % OW
    oh = ((p_start + lanes) // OW) % OH
    n = (p_start + lanes) // (OW * OH)
    step_w = BLOCK_K % OW
    step_h = (BLOCK_K // OW) % OH
    step_n = BLOCK_K // (OW * OH)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for p0 in range(p_start, p_end, BLOCK_K):
        p = p0 + lanes
        mask_p = p < p_end
        dy = tl.load(
            g_cols[:, None] + (p.to(tl.int64) * stride_grad_pixel)[None, :],
            mask=mask_m[:, None] & mask_p[None, :],
            other=0.0,
        )
        ih0 = oh * conv_stride_h - pad_h  # the window's corner of each pixel lane
        iw0 = ow * conv_stride_w - pad_w
        if INSIDE:  # every window in the image: only the batch's end and the columns' mask
            in_image = mask_p[:, None] & mask_n[None, :]
        elif PACKED:  # per lane and column: ih0 + kh in [0, H), iw0 + kw in [0, W)
            in_image = (
                ((kh[None, :] >= -ih0[:, None]) & (kh[None, :] < (H - ih0)[:, None]))
                & ((kw[None, :] >= -iw0[:, None]) & (kw[None, :] < (W - iw0)[:, None]))
                & (mask_p[:, None] & mask_n[None, :])
            )
        else:
            ih = ih0 + kh
            iw = iw0 + kw
            in_image = (mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & mask_n[None, :]
        x_rows = n.to(tl.int64) * stride_x_n + ih0 * stride_x_h + iw0 * stride_x_w
        x = tl.load(x_cols[None, :] + x_rows[:, None], mask=in_image, other=0.0)
        acc = tl.dot(dy, x, acc, input_precision="tf32" if TF32 else "ieee", out_dtype=ACC_DTYPE)
        ow += step_w
        carry = ow >= OW
        ow = tl.where(carry, ow - OW, ow)
        oh += step_h + carry.to(tl.int32)
        carry = oh >= OH
        oh = tl.where(carry, oh - OH, oh)
        n += step_n + carry.to(tl.int32)

    dw_columns = kh * stride_dw_kh + kw * stride_dw_kw + ci * stride_dw_cin  # [BLOCK_N], or a scalar tap's part
    splits = tl.num_programs(1)
    if splits > 1:
        # The last of the tile's splits to arrive adds up their partial tiles in split order (bit-reproducible
        # whichever arrives last), SUM_ROWS rows at a time, and stores the weight gradient in its dtype.
        partial_columns = kh * stride_partial_dw_kh + kw * stride_partial_dw_kw + ci * stride_partial_dw_cin
        partial_rows = partial_dw_ptr + split.to(tl.int64) * stride_partial_dw_split
        partial_rows += co.to(tl.int64) * stride_partial_dw_cout
        tl.store(partial_rows[:, None] + partial_columns[None, :], acc, mask=mask_m[:, None] & mask_n[None, :])
        arrival = arrivals_ptr + group * tl.num_programs(0) + pid
        tl.static_assert(SUM_ROWS <= BLOCK_M, "the finishing program's rows stay in its tile (both powers of two)")
        if split_arrive(arrival) == splits - 1:
            for r0 in range(0, BLOCK_M, SUM_ROWS):
                rows = pid_m * BLOCK_M + r0 + tl.arange(0, SUM_ROWS)  # output channels within the group
                mask = (rows < C_out_g)[:, None] & mask_n[None, :]
                rows = (group * C_out_g + rows).to(tl.int64)
                partial_tile = (partial_dw_ptr + rows * stride_partial_dw_cout)[:, None] + partial_columns[None, :]
                total = sum_splits(partial_tile, mask, stride_partial_dw_split, splits)
                dw_ptrs = dw_ptr + (rows * stride_dw_cout)[:, None] + dw_columns[None, :]
                tl.store(dw_ptrs, total.to(dw_ptr.dtype.element_ty), mask=mask)
            tl.store(arrival, 0)  # for the next launch on this stream (or the graph's next replay)
    else:
        dw_ptrs = dw_ptr + (co.to(tl.int64) * stride_dw_cout)[:, None] + dw_columns[None, :]
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------

@_common.bf16_in_fp32_under_interpreter
def relu_grad(grad_out: torch.Tensor, out: torch.Tensor, with_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(g, the bias gradient or None): g = grad_out * (out > 0) as a dense channels_last tensor, the operand of both
    gradient products, and its sum over pixels, the bias gradient, in one pass."""
    N, C, OH, OW = out.shape
    masked = _common.empty((N, C, OH, OW), like=grad_out, memory_format=torch.channels_last)
    acc_dtype = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    pixels = N * OH * OW
    if pixels == 0:
        return masked, _common.empty((C,), like=grad_out).zero_() if with_bias else None
    per_program = tuning.mask_pixels_per_program(pixels)
    chunks = _common.cdiv(pixels, per_program)
    db = partial_db = counters = masked  # written or read only with the bias (partial_db, counters: and chunks)
    capacity = 0
    if with_bias:
        # The partial sums and counters are read only with several chunks, but passed in their dtypes either way, so
        # that a launch of one chunk (fc6 and fc7: a pixel per image) compiles nothing more than one of several.
        db = _common.empty((C,), like=grad_out)
        partial_db = _common.empty((chunks, C), like=grad_out, dtype=acc_dtype)
        counters = arrivals.counters(grad_out, _common.cdiv(C, tuning.SMALLEST_MASK_BLOCK))
        capacity = counters.numel() if chunks > 1 else 0

    def grid(meta):
        blocks = _common.cdiv(C, meta["BLOCK_C"])
        if capacity:
            tuning.check_counters(blocks, capacity)
        return (chunks, blocks)

    def expect():
        results = (lambda: [masked, db]) if with_bias else (lambda: [masked])
        if capacity:
            results = arrivals.settled(counters, results)
        return expected.relu_grad(grad_out, out, with_bias, results=results)

    _common.launcher(_relu_grad_kernel, expect)[grid](
        grad_out, out, masked, db, partial_db, counters,
        pixels, per_program, C, OH, OW,
        *grad_out.stride(), *out.stride(), partial_db.stride(0),
        HAS_BIAS=with_bias,
    )
    return masked, db if with_bias else None


@_common.bf16_in_fp32_under_interpreter
def conv_relu_input_grad(
    masked: torch.Tensor,
    weight: torch.Tensor,
    input_shape: list[int],
    input_memory_format: torch.memory_format,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Gradient of relu(conv2d(x, weight, bias)) with respect to x, given the masked gradient g (relu_grad)."""
    N, C_in, H, W = input_shape
    C_out, C_in_g, KH, KW = weight.shape
    OH, OW = masked.shape[2], masked.shape[3]
    C_out_g = C_out // groups
    dx = _common.empty((N, C_in, H, W), like=masked, memory_format=input_memory_format)
    if N * H * W == 0:  # empty batch: nothing to launch
        return dx
    weight = dense_channels(weight)
    if covers_input((H, W), (KH, KW), padding, groups):
        # dx[n, (kh, kw, ci)] = sum_co g[n, co] w[co, (kh, kw, ci)]: a 1x1 convolution of g by the flat weight's
        # transpose (a view), written into a dense channels_last dx seen as [N, KH*KW*C_in, 1, 1].
        channels_last = dx.is_contiguous(memory_format=torch.channels_last)
        dense = dx if channels_last else _common.empty(input_shape, like=dx, memory_format=torch.channels_last)
        transposed = flatten_to_1x1(weight)[:, :, 0, 0].t()[:, :, None, None]  # [KH*KW*C_in, C_out, 1, 1]
        convolve(dense_channels(masked), transposed, None, flatten_to_1x1(dense), (1, 1), (0, 0), 1, relu=False)
        if dense is not dx:
            dx.copy_(dense)
        return dx
    if tuple(stride) == (1, 1):
        # A stride-1 convolution's input gradient is a convolution of g by the weights flipped in space and with
        # in and out channels swapped (per group), padded by k-1-p; that weight is small, so it is made once.
        padding = (KH - 1 - padding[0], KW - 1 - padding[1])
        convolve(dense_channels(masked), flipped_weight(weight, groups), None, dx, (1, 1), padding, groups, relu=False)
        return dx
    gemm_m, gemm_k = N * H * W, C_out_g * KH * KW

    def grid(meta):
        return (_common.cdiv(gemm_m, meta["BLOCK_M"]) * _common.cdiv(C_in_g, meta["BLOCK_N"]), groups)

    tf32 = _common.use_tf32(masked.dtype)

    def expect():
        return expected.conv_input_grad(
            masked, weight, input_shape, stride, padding, groups, tf32=tf32, out_dtype=dx.dtype, results=lambda: [dx]
        )

    _common.launcher(_conv_dgrad_gather_kernel, expect)[grid](
        masked, weight, dx,
        gemm_m, C_in_g, gemm_k, C_out_g, H, W, OH, OW, KW,
        stride[0], stride[1], padding[0], padding[1],
        *masked.stride(), *weight.stride(), *dx.stride(),
        TF32=tf32,
    )
    return dx


@_common.bf16_in_fp32_under_interpreter
def conv_relu_weight_grad(
    masked: torch.Tensor,
    x: torch.Tensor,
    weight_shape: list[int],
    weight_memory_format: torch.memory_format,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Gradient of relu(conv2d(x, weight, bias)) with respect to weight, given the masked gradient g (relu_grad)."""
    C_out, C_in_g, KH, KW = weight_shape
    if not space_to_depth.applies(C_in_g, stride, groups):
        return weight_grad(masked, x, weight_shape, weight_memory_format, stride, padding, groups)
    # conv1: the gradient of the blocked stride-1 convolution the forward ran (space_to_depth.py), mapped back.
    out_size = (masked.shape[2], masked.shape[3])
    blocked_x = space_to_depth.space_to_depth(x, (KH, KW), stride, padding, out_size)
    blocked_shape = [C_out, blocked_x.shape[1], _common.cdiv(KH, stride[0]), _common.cdiv(KW, stride[1])]
    blocked = weight_grad(masked, blocked_x, blocked_shape, torch.channels_last, (1, 1), (0, 0), 1)
    dw = _common.empty(weight_shape, like=blocked, memory_format=weight_memory_format)
    return dw.copy_(space_to_depth.depth_to_space_weight(blocked, (KH, KW), stride))


def weight_grad(
    masked: torch.Tensor,
    x: torch.Tensor,
    weight_shape: list[int],
    weight_memory_format: torch.memory_format,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """conv_relu_weight_grad by the weight-gradient kernel itself, for any convolution."""
    N, C_in, H, W = x.shape
    C_out, C_in_g, KH, KW = weight_shape
    OH, OW = masked.shape[2], masked.shape[3]
    C_out_g = C_out // groups
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    masked = masked.contiguous(memory_format=torch.channels_last)  # pixels apart by C_out, channels by 1
    x = dense_channels(x)
    dw = _common.empty(weight_shape, like=x, memory_format=weight_memory_format)
    written = dw  # what the kernel writes: dw, or where it cannot address dw's columns, a channels_last stand-in
    reference_x, kernel, conv_stride, conv_padding, taps_shape = x, (KH, KW), stride, padding, (KH, KW)
    if covers_input((H, W), (KH, KW), padding, groups):  # one tap over the flattened input
        x, kernel, conv_stride, taps_shape = flatten_to_1x1(x), (1, 1), (1, 1), (1, 1)
        H = W = 1
        if KH * KW > 1 and not dw.is_contiguous(memory_format=torch.channels_last):
            written = _common.empty(weight_shape, like=x, memory_format=torch.channels_last)
        # the columns are (kh, kw, ci), which a channels_last (or 1x1) dw lays out one after another
        dw_strides = (written.stride(0), 0, 0, written.stride(1))
    else:
        dw_strides = (written.stride(0), written.stride(2), written.stride(3), written.stride(1))
    channels = x.shape[1] // groups
    taps = kernel[0] * kernel[1]
    inside = tuning.wgrad_inside(channels, taps, conv_stride, conv_padding, x.stride())
    # then one program's columns are (tap, channel) pairs of every tap
    packed = channels < tuning.PACK_CHANNELS_BELOW or inside
    columns = taps * channels if packed else channels
    pixels = N * OH * OW
    tiles = _common.cdiv(C_out_g, 64) * _common.cdiv(taps * channels, 64) * groups
    splits = tuning.wgrad_splits(pixels, tiles, x.device)
    pixels_per_split = max(_common.cdiv(pixels, splits), 1)
    # Partial sums and a counter per output tile (however small the tiles the launch picks), read only when the
    # reduction is split, but passed in their dtypes and layout either way, so that a launch of one split (a small
    # batch) compiles nothing more than a split one.
    # Unsplit, they are one-element stand-ins with the strides a split launch would have (Triton specializes on the
    # strides, not the storage): fc6's partial buffer alone would be 75 MB a tower per step, never read.
    partial_shape = (splits, C_out, *taps_shape, channels)
    partial_dw = _common.empty(partial_shape if splits > 1 else (1,), like=x, dtype=acc_dtype)
    partial_strides = _common.contiguous_strides(partial_shape)
    tiles_needed = tuning.most_tiles(C_out_g, columns) * (1 if packed else taps) * groups
    counters = arrivals.counters(masked, tiles_needed if splits > 1 else 1)
    capacity = counters.numel() if splits > 1 else 0

    def grid(meta):
        rows, column_tiles = _common.cdiv(C_out_g, meta["BLOCK_M"]), _common.cdiv(columns, meta["BLOCK_N"])
        tiles = rows * column_tiles * (1 if packed else taps)
        if capacity:
            tuning.check_counters(tiles * groups, capacity)
        return (tiles, splits, groups)

    tf32 = _common.use_tf32(x.dtype)

    def expect():
        results = arrivals.settled(counters, lambda: [written]) if capacity else (lambda: [written])
        return expected.conv_weight_grad(reference_x, masked, weight_shape, stride, padding, groups, tf32=tf32,
                                         out_dtype=written.dtype, results=results)  # fmt: skip

    _common.launcher(_conv_wgrad_kernel, expect)[grid](
        masked, x, written, partial_dw, counters,
        C_out_g, channels, columns, H, W, OH, OW, kernel[1], pixels, pixels_per_split,
        conv_stride[0], conv_stride[1], conv_padding[0], conv_padding[1],
        C_out, 1,  # dense NHWC: pixel p at p * C_out (not stride(3), which is arbitrary where OW is 1)
        *x.stride(),
        *dw_strides,
        *partial_strides,
        PACKED=packed,
        INSIDE=inside,
        TF32=tf32,
    )
    if written is not dw:
        dw.copy_(written)
    return dw


# The index of each element of flipped_weight's result in the weight it is made from, by (device, weight shape,
# groups): made on a layer's first backward, a weight's size in int64.
_flip_indices: dict[tuple, torch.Tensor] = {}


def flipped_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """[C_in, C_out_g, KH, KW], channels_last: per group, the weight flipped in space with its in and out channels
    swapped (the stride-1 input gradient's weight), in one launch: torch.take of the weight at a cached index (flip
    and the transposing copy would be two)."""
    C_out, C_in_g, KH, KW = weight.shape
    if _common.traced((weight,)) or _common.capturing(weight.device):
        # The trace's or the graph's own index: a cached one is a real tensor, not the trace's, and one made during a
        # capture holds its values only once the graph replays (warm-up makes the cache's before any capture).
        index = _flip_index(C_out, C_in_g, KH, KW, groups, weight.device)
    else:
        key = (weight.device, C_out, C_in_g, KH, KW, groups)
        index = _flip_indices.get(key)
        if index is None:
            index = _flip_indices[key] = _flip_index(C_out, C_in_g, KH, KW, groups, weight.device)
    return torch.take(weight, index).permute(0, 3, 1, 2)


def _flip_index(C_out: int, C_in_g: int, KH: int, KW: int, groups: int, device: torch.device) -> torch.Tensor:
    """[C_in, KH, KW, C_out_g] int64: element (g * C_in_g + ci, kh, kw, co) is the row-major position (torch.take's)
    of the weight's element (g * C_out_g + co, ci, KH - 1 - kh, KW - 1 - kw)."""
    C_out_g = C_out // groups

    def axis(size: int, at: int) -> torch.Tensor:  # arange(size) along dimension `at` of 5
        return torch.arange(size, device=device).reshape([size if d == at else 1 for d in range(5)])

    g, ci, kh, kw, co = (axis(size, at) for at, size in enumerate((groups, C_in_g, KH, KW, C_out_g)))
    index = (((g * C_out_g + co) * C_in_g + ci) * KH + (KH - 1 - kh)) * KW + (KW - 1 - kw)
    return index.reshape(groups * C_in_g, KH, KW, C_out_g)
