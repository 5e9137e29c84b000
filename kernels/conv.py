"""2-D convolution + bias + ReLU as implicit GEMMs in Triton, forward and backward.

No im2col buffer: each kernel computes the addresses of its GEMM tiles from the convolution's
geometry as it loads them. Per group g (Cin_g = C_in / groups, Cout_g = C_out / groups):

    forward  out[(n,oh,ow), co]    = relu(b[co] + sum_{(kh,kw,ci)} x[n, ci, oh*s-p+kh, ow*s-p+kw] * w[co, ci, kh, kw])
    dgrad    dx[(n,ih,iw), ci]     = sum_{(kh,kw,co)} g[n, co, (ih+p-kh)/s, (iw+p-kw)/s] * w[co, ci, kh, kw]
    wgrad    dw[co, (kh,kw,ci)]    = sum_{(n,oh,ow)} g[n, co, oh, ow] * x[n, ci, oh*s-p+kh, ow*s-p+kw]
    bgrad    db[co]                = sum_{(n,oh,ow)} g[n, co, oh, ow]

with g = grad_out * (out > 0): the ReLU mask is applied to each tile of the incoming gradient as it
is loaded, from the saved output; the pre-activation is never stored. The reduction index puts the
channel innermost, (kh, kw, c), so a channels_last tensor is read along contiguous memory; every
tensor is addressed through its strides, so NCHW, channels_last and non-contiguous views all work.
"""

import torch
import triton
import triton.language as tl

from . import _common

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Tile shapes for Hopper/Ampere-class GPUs: the usual matmul space (tutorial 03), 4-8 warps,
# 3-4 stages of software pipelining. Chosen per GEMM shape by the autotuner; not yet measured on a
# GPU for this project, so the list is deliberately broad.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=2, num_stages=5),
]
# The autotune key: the GEMM's shape, plus (at each kernel) the channel stride of the operand read by
# pixel, which tells NCHW from channels_last, whose loads coalesce along other axes and so want other tiles.
_KEY = ["GEMM_M", "GEMM_N", "GEMM_K"]


def _interpreter_blocks(args: dict) -> dict:
    """Under the interpreter, where nothing is tuned: tiles that fit the GEMM (tl.dot needs 16 at least),
    operand tiles of up to 256k elements: each interpreted op costs about as much as numpy work on 50k
    elements, so fewer, larger tiles win."""
    block_m = _common.block(args["GEMM_M"], 16, 512)
    block_n = _common.block(args["GEMM_N"], 16, 512)
    block_k = _common.block(args.get("PIXELS_PER_SPLIT", args["GEMM_K"]), 16, 2**18 // max(block_m, block_n))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}


# The weight gradient reduces over every output pixel of the batch (N*OH*OW, e.g. 387k for conv1 at
# batch 128) into a small output (C_out x C_in*KH*KW), so it is split along the pixels into at most
# this many partial sums, written to an fp32 buffer and summed afterwards: deterministic, unlike
# atomics. Each split keeps at least _MIN_PIXELS_PER_SPLIT pixels so its loop stays long.
_MAX_WGRAD_SPLITS = 16
_MIN_PIXELS_PER_SPLIT = 2048


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@_common.tuned(_GPU_CONFIGS, [*_KEY, "stride_x_c"], _interpreter_blocks)
@triton.jit
def _conv_fwd_kernel(
    # pointers
    x_ptr, weight_ptr, bias_ptr, out_ptr,
    # sizes: GEMM_M = N*OH*OW, GEMM_N = Cout_g, GEMM_K = Cin_g*KH*KW
    GEMM_M, GEMM_N, GEMM_K, C_in_g, H, W, OH, OW, KW,
    # convolution
    conv_stride_h, conv_stride_w, pad_h, pad_w,
    # strides
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_weight_cout, stride_weight_cin, stride_weight_kh, stride_weight_kw,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    # meta-parameters
    HAS_BIAS: tl.constexpr, TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    # Neighbouring programs share a pixel tile and differ in output channels, so the input tile
    # they all read is fetched from DRAM once and then served from L2.
    pid = tl.program_id(0)
    num_n_tiles = tl.cdiv(GEMM_N, BLOCK_N)
    pid_m = pid // num_n_tiles
    pid_n = pid % num_n_tiles
    group = tl.program_id(1)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (n, oh, ow)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channels within the group
    mask_m = offs_m < GEMM_M
    mask_n = offs_n < GEMM_N
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)
    ih0 = oh * conv_stride_h - pad_h
    iw0 = ow * conv_stride_w - pad_w
    x_rows = x_ptr + n.to(tl.int64) * stride_x_n + (group * C_in_g).to(tl.int64) * stride_x_c  # [BLOCK_M]
    co = group * GEMM_N + offs_n
    weight_cols = weight_ptr + co.to(tl.int64) * stride_weight_cout  # [BLOCK_N]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, GEMM_K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # reduction index (kh, kw, ci), ci fastest
        mask_k = offs_k < GEMM_K
        ci = offs_k % C_in_g
        kw = (offs_k // C_in_g) % KW
        kh = offs_k // (C_in_g * KW)
        ih = ih0[:, None] + kh[None, :]
        iw = iw0[:, None] + kw[None, :]
        in_image = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # zero padding = masked load
        a = tl.load(
            x_rows[:, None] + ci[None, :] * stride_x_c + ih * stride_x_h + iw * stride_x_w,
            mask=mask_m[:, None] & mask_k[None, :] & in_image,
            other=0.0,
        )
        b = tl.load(
            weight_cols[None, :] + (ci * stride_weight_cin + kh * stride_weight_kh + kw * stride_weight_kw)[:, None],
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision="tf32" if TF32 else "ieee")

    # Epilogue on the fp32 accumulator: bias, then ReLU. `acc < 0` is false for NaN, so NaN
    # propagates as in F.relu.
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=mask_n, other=0.0).to(ACC_DTYPE)[None, :]
    acc = tl.where(acc < 0, 0.0, acc)

    out_ptrs = (
        out_ptr
        + (n.to(tl.int64) * stride_out_n + oh * stride_out_h + ow * stride_out_w)[:, None]
        + (co.to(tl.int64) * stride_out_c)[None, :]
    )
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@_common.tuned(_GPU_CONFIGS, [*_KEY, "stride_grad_c"], _interpreter_blocks)
@triton.jit
def _conv_dgrad_kernel(
    # pointers
    grad_ptr, out_ptr, weight_ptr, dx_ptr,
    # sizes: GEMM_M = N*H*W, GEMM_N = Cin_g, GEMM_K = Cout_g*KH*KW
    GEMM_M, GEMM_N, GEMM_K, C_out_g, H, W, OH, OW, KW,
    # convolution
    conv_stride_h, conv_stride_w, pad_h, pad_w,
    # strides
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    stride_weight_cout, stride_weight_cin, stride_weight_kh, stride_weight_kw,
    stride_dx_n, stride_dx_c, stride_dx_h, stride_dx_w,
    # meta-parameters
    TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if grad_ptr.dtype.element_ty == tl.float64 else tl.float32
    # Gather form: each input pixel sums over the (kh, kw, co) that read it, so every dx element is
    # written once, without atomics. With stride s only 1/s^2 of the (kh, kw) pairs hit an output
    # pixel; the others are masked. That waste matters only for conv1 (stride 4), whose input
    # gradient AlexNet never needs.
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
    o_rows = out_ptr + n * stride_out_n + co_base.to(tl.int64) * stride_out_c
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
        mask_a = mask_m[:, None] & mask_k[None, :] & hits
        spatial_g = oh * stride_grad_h + ow * stride_grad_w
        spatial_o = oh * stride_out_h + ow * stride_out_w
        dy = tl.load(g_rows[:, None] + co[None, :] * stride_grad_c + spatial_g, mask=mask_a, other=0.0)
        y = tl.load(o_rows[:, None] + co[None, :] * stride_out_c + spatial_o, mask=mask_a, other=0.0)
        dy = tl.where(y > 0, dy, tl.zeros_like(dy))  # ReLU backward, applied as the tile is loaded
        w = tl.load(
            weight_cols[None, :]
            + (co * stride_weight_cout + kh * stride_weight_kh + kw * stride_weight_kw)[:, None],
            mask=mask_k[:, None] & mask_n[None, :],
            other=0.0,
        )
        acc = tl.dot(dy, w, acc, input_precision="tf32" if TF32 else "ieee")

    dx_ptrs = (
        dx_ptr
        + (n * stride_dx_n + ih * stride_dx_h + iw * stride_dx_w)[:, None]
        + (ci.to(tl.int64) * stride_dx_c)[None, :]
    )
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@_common.tuned(_GPU_CONFIGS, [*_KEY, "PIXELS_PER_SPLIT", "stride_x_c"], _interpreter_blocks)
@triton.jit
def _conv_wgrad_kernel(
    # pointers: partial sums, partial_dw [splits, C_out, Cin_g, KH, KW] and partial_db [splits, C_out], in ACC_DTYPE
    grad_ptr, out_ptr, x_ptr, partial_dw_ptr, partial_db_ptr,
    # sizes: GEMM_M = Cout_g, GEMM_N = Cin_g*KH*KW, GEMM_K = N*OH*OW (split into PIXELS_PER_SPLIT chunks)
    GEMM_M, GEMM_N, GEMM_K, PIXELS_PER_SPLIT, C_in_g, H, W, OH, OW, KW,
    # convolution
    conv_stride_h, conv_stride_w, pad_h, pad_w,
    # strides
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_partial_dw_split, stride_partial_dw_cout, stride_partial_dw_cin,
    stride_partial_dw_kh, stride_partial_dw_kw,
    stride_partial_db_split, stride_partial_db_cout,
    # meta-parameters
    HAS_BIAS: tl.constexpr, TF32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ACC_DTYPE: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    num_n_tiles = tl.cdiv(GEMM_N, BLOCK_N)
    pid_m = pid // num_n_tiles
    pid_n = pid % num_n_tiles
    split = tl.program_id(1)
    group = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channels within the group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # weight columns (kh, kw, ci), ci fastest
    mask_m = offs_m < GEMM_M
    mask_n = offs_n < GEMM_N
    co = group * GEMM_M + offs_m
    ci = offs_n % C_in_g
    kw = (offs_n // C_in_g) % KW
    kh = offs_n // (C_in_g * KW)
    g_rows = grad_ptr + co.to(tl.int64) * stride_grad_c  # [BLOCK_M]
    o_rows = out_ptr + co.to(tl.int64) * stride_out_c
    x_cols = x_ptr + (group * C_in_g + ci).to(tl.int64) * stride_x_c  # [BLOCK_N]
    # The bias gradient is the row sum of the same masked gradient tiles: the first column tile of
    # each row block accumulates it on the side instead of a separate pass over grad_out.
    bias_here = pid_n == 0

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    db_acc = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    p_start = split * PIXELS_PER_SPLIT
    p_end = tl.minimum(p_start + PIXELS_PER_SPLIT, GEMM_K)
    for p0 in range(p_start, p_end, BLOCK_K):
        offs_p = p0 + tl.arange(0, BLOCK_K)  # output pixels (n, oh, ow)
        mask_p = offs_p < p_end
        ow = offs_p % OW
        oh = (offs_p // OW) % OH
        n = (offs_p // (OW * OH)).to(tl.int64)
        mask_a = mask_m[:, None] & mask_p[None, :]
        grad_offsets = n * stride_grad_n + oh * stride_grad_h + ow * stride_grad_w
        out_offsets = n * stride_out_n + oh * stride_out_h + ow * stride_out_w
        dy = tl.load(g_rows[:, None] + grad_offsets[None, :], mask=mask_a, other=0.0)
        y = tl.load(o_rows[:, None] + out_offsets[None, :], mask=mask_a, other=0.0)
        dy = tl.where(y > 0, dy, tl.zeros_like(dy))  # ReLU backward, applied as the tile is loaded
        ih = (oh * conv_stride_h - pad_h)[:, None] + kh[None, :]
        iw = (ow * conv_stride_w - pad_w)[:, None] + kw[None, :]
        in_image = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x = tl.load(
            x_cols[None, :] + (n * stride_x_n)[:, None] + ih * stride_x_h + iw * stride_x_w,
            mask=mask_p[:, None] & mask_n[None, :] & in_image,
            other=0.0,
        )
        acc = tl.dot(dy, x, acc, input_precision="tf32" if TF32 else "ieee")
        if HAS_BIAS:
            if bias_here:
                db_acc += tl.sum(dy.to(ACC_DTYPE), axis=1)

    dw_ptrs = (
        partial_dw_ptr
        + split.to(tl.int64) * stride_partial_dw_split
        + (co.to(tl.int64) * stride_partial_dw_cout)[:, None]
        + (ci * stride_partial_dw_cin + kh * stride_partial_dw_kh + kw * stride_partial_dw_kw)[None, :]
    )
    tl.store(dw_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])
    if HAS_BIAS:
        if bias_here:
            db_ptrs = partial_db_ptr + split * stride_partial_db_split + co * stride_partial_db_cout
            tl.store(db_ptrs, db_acc, mask=mask_m)


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def output_memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout of the output and of both gradients, chosen as PyTorch's convolutions choose it:
    channels_last when the input's or the weight's strides suggest it (views included), else NCHW."""
    formats = (_common.suggest_memory_format(x), _common.suggest_memory_format(weight))
    return torch.channels_last if torch.channels_last in formats else torch.contiguous_format


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
    C_out_g = C_out // groups
    out = _common.empty((N, C_out, OH, OW), like=x, memory_format=output_memory_format(x, weight))
    gemm_m, gemm_k = N * OH * OW, C_in_g * KH * KW
    if gemm_m == 0:  # empty batch: nothing to launch
        return out

    def grid(meta):
        return (triton.cdiv(gemm_m, meta["BLOCK_M"]) * triton.cdiv(C_out_g, meta["BLOCK_N"]), groups)

    _common.launcher(_conv_fwd_kernel)[grid](
        x, weight, bias if bias is not None else weight, out,
        gemm_m, C_out_g, gemm_k, C_in_g, H, W, OH, OW, KW,
        stride[0], stride[1], padding[0], padding[1],
        *x.stride(), *weight.stride(), *out.stride(),
        HAS_BIAS=bias is not None,
        TF32=_common.use_tf32(x.dtype),
    )
    return out


@_common.bf16_in_fp32_under_interpreter
def conv_relu_input_grad(
    grad_out: torch.Tensor,
    out: torch.Tensor,
    weight: torch.Tensor,
    input_shape: list[int],
    input_memory_format: torch.memory_format,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
) -> torch.Tensor:
    """Gradient of relu(conv2d(x, weight, bias)) with respect to x, given the saved output."""
    N, C_in, H, W = input_shape
    C_out, C_in_g, KH, KW = weight.shape
    OH, OW = out.shape[2], out.shape[3]
    C_out_g = C_out // groups
    dx = _common.empty((N, C_in, H, W), like=grad_out, memory_format=input_memory_format)
    gemm_m, gemm_k = N * H * W, C_out_g * KH * KW
    if gemm_m == 0:  # empty batch: nothing to launch
        return dx

    def grid(meta):
        return (triton.cdiv(gemm_m, meta["BLOCK_M"]) * triton.cdiv(C_in_g, meta["BLOCK_N"]), groups)

    _common.launcher(_conv_dgrad_kernel)[grid](
        grad_out, out, weight, dx,
        gemm_m, C_in_g, gemm_k, C_out_g, H, W, OH, OW, KW,
        stride[0], stride[1], padding[0], padding[1],
        *grad_out.stride(), *out.stride(), *weight.stride(), *dx.stride(),
        TF32=_common.use_tf32(grad_out.dtype),
    )
    return dx


def _wgrad_splits(pixels: int, tiles: int, device: torch.device) -> int:
    """How many pixel chunks the weight-gradient reduction is cut into (see _MAX_WGRAD_SPLITS)."""
    if _common.INTERPRET or device.type != "cuda":
        return 1
    # Aim for two waves of programs on the GPU, counting 64x64 output tiles.
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = triton.cdiv(2 * sms, max(tiles, 1))
    return max(1, min(wanted, _MAX_WGRAD_SPLITS, pixels // _MIN_PIXELS_PER_SPLIT))


@_common.bf16_in_fp32_under_interpreter
def conv_relu_weight_grad(
    grad_out: torch.Tensor,
    out: torch.Tensor,
    x: torch.Tensor,
    weight_shape: list[int],
    weight_memory_format: torch.memory_format,
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
    with_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of relu(conv2d(x, weight, bias)) with respect to weight and (if with_bias) bias."""
    N, C_in, H, W = x.shape
    C_out, C_in_g, KH, KW = weight_shape
    OH, OW = out.shape[2], out.shape[3]
    C_out_g = C_out // groups
    gemm_n, gemm_k = C_in_g * KH * KW, N * OH * OW
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    splits = _wgrad_splits(gemm_k, triton.cdiv(C_out_g, 64) * triton.cdiv(gemm_n, 64) * groups, x.device)
    pixels_per_split = triton.cdiv(gemm_k, splits)
    partial_dw = _common.empty((splits, C_out, C_in_g, KH, KW), like=x, dtype=acc_dtype)
    partial_db = _common.empty((splits, C_out), like=x, dtype=acc_dtype) if with_bias else partial_dw

    def grid(meta):
        return (triton.cdiv(C_out_g, meta["BLOCK_M"]) * triton.cdiv(gemm_n, meta["BLOCK_N"]), splits, groups)

    _common.launcher(_conv_wgrad_kernel)[grid](
        grad_out, out, x, partial_dw, partial_db,
        C_out_g, gemm_n, gemm_k, pixels_per_split, C_in_g, H, W, OH, OW, KW,
        stride[0], stride[1], padding[0], padding[1],
        *grad_out.stride(), *out.stride(), *x.stride(), *partial_dw.stride(), *partial_db.stride()[:2],
        HAS_BIAS=with_bias,
        TF32=_common.use_tf32(x.dtype),
    )
    dw = partial_dw.sum(0).to(x.dtype, memory_format=weight_memory_format)
    db = partial_db.sum(0).to(x.dtype) if with_bias else None
    return dw, db
