"""2-D convolution + bias + ReLU as implicit GEMMs in Triton, forward and backward.

No im2col buffer: each kernel computes the addresses of its GEMM tiles from the convolution's
geometry as it loads them. Per group g (Cin_g = C_in / groups, Cout_g = C_out / groups):

    forward  out[(n,oh,ow), co]    = relu(b[co] + sum_{(kh,kw,ci)} x[n, ci, oh*s-p+kh, ow*s-p+kw] * w[co, ci, kh, kw])
    dgrad    dx[(n,ih,iw), ci]     = sum_{(kh,kw,co)} g[n, co, (ih+p-kh)/s, (iw+p-kw)/s] * w[co, ci, kh, kw]
    wgrad    dw[co, (kh,kw,ci)]    = sum_{(n,oh,ow)} g[n, co, oh, ow] * x[n, ci, oh*s-p+kh, ow*s-p+kw]
    bgrad    db[co]                = sum_{(n,oh,ow)} g[n, co, oh, ow]

with g = grad_out * (out > 0), ReLU's mask, applied once from the saved output by _relu_grad_kernel,
which sums the bias gradient on the way and writes g channels_last; the pre-activation is never stored.

The fast path is channels_last (activations NHWC, the weight as [C_out, KH*KW*C_in], which a
channels_last weight already is; anything else is copied once into that layout). The forward kernel's
reduction is one flat loop over (tap, channel block), taps outer: the tap's offsets are scalars, each
pixel's row address and the tap's spatial validity are per-row vectors, and each step loads a
[pixels x channels] tile contiguous along channels, which the compiler turns into 16-byte async
copies (cp.async) and pipelines. The same kernel computes the input gradient of a stride-1
convolution (a convolution of g with the flipped, transposed weights, padded by k-1-p), and a
convolution whose kernel covers its input (fc6, fc7) as a 1x1 convolution of the flattened input;
those, whose GEMM has only the batch as rows, split their reduction over several programs. A strided
convolution's input gradient (conv1's, which AlexNet never needs) keeps a gather kernel.
"""

import torch
import triton
import triton.language as tl

from . import _common

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------


def _config(block_m: int, block_n: int, block_k: int, warps: int, stages: int) -> triton.Config:
    blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
    return triton.Config(blocks, num_warps=warps, num_stages=stages)


# Tile configs per precision class of tl.dot, chosen from the static census (python -m bench.census,
# bench/results/census-sm90.md): none spills, and each list's first config (4 warps, as PyTorch caps its conv
# template) is the reference the others are checked against while tuning (_common.CheckedAutotuner).
# bf16/fp16: wgmma with a 64-wide reduction block (128-byte rows, whole 16-byte async copies). The forward kernel
# also runs the stride-1 input gradients and fc6/fc7.
_FWD_CONFIGS = {
    "half": [
        _config(64, 64, 64, 4, 4),
        _config(128, 64, 64, 4, 3),
        _config(64, 128, 64, 4, 3),
        _config(128, 128, 64, 8, 3),
    ],
    # TF32: the same tiles at half the bytes per element; wgmma takes 8 of K per instruction.
    "tf32": [
        _config(64, 64, 32, 4, 4),
        _config(128, 64, 32, 4, 3),
        _config(64, 128, 32, 4, 3),
        _config(128, 128, 32, 8, 3),
    ],
    # fp32 without TF32 and fp64 (gradcheck) run tl.dot on the FMA units: small tiles, which do not spill.
    "exact": [_config(32, 32, 16, 4, 2), _config(64, 64, 16, 4, 2)],
}
# Packed taps (conv1's 3 channels) address every element on its own (no vector loads): only the smallest tiles stay
# in registers (the census: 64x64 and larger spill in bf16).
_FWD_PACKED_CONFIGS = {
    "half": [_config(64, 64, 64, 4, 4)],
    "tf32": [_config(64, 64, 32, 4, 4)],
    "exact": [_config(32, 32, 16, 4, 2)],
}
# The weight gradient's rows are output channels, its columns input channels of one tap (or packed (tap, channel)
# pairs), its reduction pixels, always many: the same tiles.
_WGRAD_CONFIGS = {
    "half": [
        _config(64, 64, 64, 4, 4),
        _config(128, 64, 64, 4, 3),
        _config(64, 128, 64, 4, 3),
        _config(128, 128, 64, 8, 3),
    ],
    "tf32": [
        _config(64, 64, 32, 4, 4),
        _config(128, 64, 32, 4, 3),
        _config(64, 128, 32, 4, 3),
        _config(128, 128, 32, 8, 3),
    ],
    "exact": [_config(32, 32, 16, 4, 2), _config(64, 64, 16, 4, 2)],
}
# Packed (tap, channel) columns (conv1's 3 channels) gather each element with its own address and bounds: narrow
# column blocks, which keep that in registers (64 columns spill).
_WGRAD_PACKED_CONFIGS = {
    "half": [_config(64, 32, 64, 4, 3), _config(128, 32, 64, 4, 3)],
    "tf32": [_config(64, 32, 32, 4, 3), _config(128, 32, 32, 4, 3)],
    "exact": [_config(32, 32, 16, 4, 2)],
}
# The gather kernel serves only strided input gradients (conv1's, never needed by AlexNet): one small config per
# class, which does not spill.
_GATHER_CONFIGS = {
    "half": [_config(64, 64, 32, 4, 2)],
    "tf32": [_config(64, 64, 16, 4, 2)],
    "exact": [_config(32, 32, 16, 4, 2)],
}
# ReLU's mask is elementwise and memory-bound: a pixel block by a channel block, channels contiguous.
_MASK_CONFIGS = [
    triton.Config({"BLOCK_P": 64, "BLOCK_C": 64}, num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_C": 128}, num_warps=4),
    triton.Config({"BLOCK_P": 128, "BLOCK_C": 32}, num_warps=4),
]


def _every(*lists: dict) -> list[triton.Config]:
    """Each config of the lists once: the autotuner's list, which it prunes to a launch's (see _prune)."""
    return list(dict.fromkeys(c for by_class in lists for configs in by_class.values() for c in configs))


_TUNED_CONFIGS = {
    "_conv_fwd_kernel": _every(_FWD_CONFIGS, _FWD_PACKED_CONFIGS),
    "_conv_wgrad_kernel": _every(_WGRAD_CONFIGS, _WGRAD_PACKED_CONFIGS),
    "_conv_dgrad_gather_kernel": _every(_GATHER_CONFIGS),
    "_relu_grad_kernel": _MASK_CONFIGS,
}


def precision_class(dtype: torch.dtype, tf32: bool) -> str:
    """Which config list a launch uses: "half" (bf16, fp16), "tf32" (fp32 with TF32) or "exact" (fp32, fp64)."""
    if dtype in (torch.bfloat16, torch.float16):
        return "half"
    return "tf32" if dtype == torch.float32 and tf32 else "exact"


def _fitting(configs: list[triton.Config], block: str, size: int) -> list[triton.Config]:
    """The configs whose `block` suits an extent of `size`: the smallest block that covers it (or the largest there
    is), and blocks down to a quarter of that; smaller ones would only multiply programs or loop trips."""
    fit = min((c.kwargs[block] for c in configs if c.kwargs[block] >= size), default=None)
    fit = fit or max(c.kwargs[block] for c in configs)
    return [c for c in configs if fit // 4 < c.kwargs[block] <= fit]


def _prune(class_configs: dict, pointer: str, extents: dict, packed_configs: dict | None = None):
    """An early_config_prune for _common.tuned: the launch's precision class (from packed_configs for a PACKED
    launch, if given), then each block fitted to its extent (block -> the argument's name, or a function of the
    arguments)."""

    def prune(configs: list[triton.Config], args: dict) -> list[triton.Config]:
        lists = packed_configs if packed_configs is not None and args["PACKED"] else class_configs
        wanted = lists[precision_class(args[pointer].dtype, args["TF32"])]
        kept = [c for c in configs if c in wanted]
        for block, extent in extents.items():
            kept = _fitting(kept, block, extent(args) if callable(extent) else args[extent])
        return kept

    return prune


def _fwd_reduction_block(args: dict) -> int:
    """The forward kernel's reduction per block: a tap's channels, or every (tap, channel) pair when packed."""
    return args["C_in_g"] * (args["TAPS"] if args["PACKED"] else 1)


def _interpreter_fwd_blocks(args: dict) -> dict:
    """Under the interpreter, where nothing is tuned: tiles that fit the GEMM (tl.dot needs 16 at least), one channel
    block per tap and split: each interpreted op costs about as much as numpy work on 50k elements, so fewer,
    larger tiles win."""
    return {
        "BLOCK_M": _common.block(args["M"], 16, 1024),
        "BLOCK_N": _common.block(args["C_out_g"], 16, 512),
        "BLOCK_K": _common.block(triton.cdiv(_fwd_reduction_block(args), args["SPLITS"]), 16, 512),
    }


def _interpreter_wgrad_blocks(args: dict) -> dict:
    return {
        "BLOCK_M": _common.block(args["C_out_g"], 16, 512),
        "BLOCK_N": _common.block(args["COLUMNS"], 16, 512),
        "BLOCK_K": _common.block(args["PIXELS_PER_SPLIT"], 16, 1024),
    }


def _interpreter_gather_blocks(args: dict) -> dict:
    block_m = _common.block(args["GEMM_M"], 16, 512)
    block_n = _common.block(args["GEMM_N"], 16, 512)
    block_k = _common.block(args["GEMM_K"], 16, 2**18 // max(block_m, block_n))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}


def _interpreter_mask_blocks(args: dict) -> dict:
    block_c = _common.block(args["C"], 16, 512)
    return {"BLOCK_P": _common.block(args["PIXELS_PER_PROGRAM"], 16, 2**16 // block_c), "BLOCK_C": block_c}


# A GEMM whose output tiles are fewer than the GPU's SMs (fc6, fc7: 128 rows by 2048 columns) splits its reduction
# into at most this many parts, summed afterwards in fp32 (deterministic, no atomics); each part keeps at least
# _MIN_REDUCTION_PER_SPLIT products per output so that its loop stays long. The weight gradient reduces over every
# output pixel of the batch (387k for conv1 at batch 128) and splits it likewise.
_MAX_SPLITS = 16
_MIN_REDUCTION_PER_SPLIT = 1024
_MIN_PIXELS_PER_SPLIT = 2048
# A channel block is at least 16 wide (tl.dot's K); narrower channels (conv1's 3 colours) would leave most of it
# padding, so their kernels pack (tap, channel) pairs into the block instead, at the cost of per-element addresses.
_PACK_CHANNELS_BELOW = 16
# ReLU's mask: each program masks this many pixels of a channel block and writes one partial bias sum, so the
# partial sums are few (1,500 rows for conv1 at batch 128) and their number does not depend on the tile config.
_MASK_PIXELS_PER_PROGRAM = 256


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@_common.tuned(
    _TUNED_CONFIGS["_relu_grad_kernel"],
    ["PIXELS_PER_PROGRAM", "C", "HAS_BIAS", "stride_grad_c", "stride_out_c"],
    _interpreter_mask_blocks,
)
@triton.jit
def _relu_grad_kernel(
    # pointers: masked [N, OH, OW, C] dense, partial_db [pixel chunks, C] in ACC_DTYPE
    grad_ptr, out_ptr, masked_ptr, partial_db_ptr,
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
        g = tl.where(y > 0, dy, tl.zeros_like(dy))  # ReLU backward
        tl.store(masked_ptr + p.to(tl.int64)[:, None] * C + c[None, :], g, mask=mask)
        if HAS_BIAS:
            db += tl.sum(g.to(ACC_DTYPE), axis=0)
    if HAS_BIAS:
        tl.store(partial_db_ptr + chunk * stride_partial_db_chunk + c, db, mask=mask_c)


@_common.tuned(
    _TUNED_CONFIGS["_conv_fwd_kernel"],
    [
        *["M", "C_in_g", "C_out_g", "TAPS", "SPLITS", "PACKED", "TF32"],
        *["stride_x_c", "stride_weight_cin", "stride_weight_cout"],
    ],
    _interpreter_fwd_blocks,
    prune=_prune(
        _FWD_CONFIGS,
        "x_ptr",
        {"BLOCK_M": "M", "BLOCK_N": "C_out_g", "BLOCK_K": _fwd_reduction_block},
        _FWD_PACKED_CONFIGS,
    ),
    checked=["out_ptr"],
)
@triton.jit
def _conv_fwd_kernel(
    # pointers; out is [SPLITS, N, C_out, OH, OW] through its strides (fp32 partial sums when SPLITS > 1)
    x_ptr, weight_ptr, bias_ptr, out_ptr,
    # sizes: the GEMM is M = N*OH*OW rows, C_out_g columns, TAPS*C_in_g reduction (TAPS = KH*KW)
    M, C_in_g, C_out_g, H, W, OH, OW, KW, TAPS, SPLITS,
    # convolution
    conv_stride_h, conv_stride_w, pad_h, pad_w,
    # strides; the weight is read as [C_out, KH, KW, C_in_g]
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_weight_cout, stride_weight_cin, stride_weight_kh, stride_weight_kw,
    stride_out_split, stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    # meta-parameters; PACKED: narrow channels, whose taps share a reduction block (see _PACK_CHANNELS_BELOW)
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
        acc = tl.dot(a, b, acc, input_precision="tf32" if TF32 else "ieee")

    # Epilogue on the fp32 accumulator: bias, then ReLU. `acc < 0` is false for NaN, so NaN
    # propagates as in F.relu.
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=mask_n, other=0.0).to(ACC_DTYPE)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)
    out_ptrs = (
        out_ptr
        + split.to(tl.int64) * stride_out_split
        + (n.to(tl.int64) * stride_out_n + oh * stride_out_h + ow * stride_out_w)[:, None]
        + (co.to(tl.int64) * stride_out_c)[None, :]
    )
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@_common.tuned(
    _TUNED_CONFIGS["_conv_dgrad_gather_kernel"],
    ["GEMM_M", "GEMM_N", "GEMM_K", "TF32", "stride_grad_c"],
    _interpreter_gather_blocks,
    prune=_prune(_GATHER_CONFIGS, "grad_ptr", {}),
    checked=["dx_ptr"],
)
@triton.jit
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
        acc = tl.dot(dy, w, acc, input_precision="tf32" if TF32 else "ieee")

    dx_ptrs = (
        dx_ptr
        + (n * stride_dx_n + ih * stride_dx_h + iw * stride_dx_w)[:, None]
        + (ci.to(tl.int64) * stride_dx_c)[None, :]
    )
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@_common.tuned(
    _TUNED_CONFIGS["_conv_wgrad_kernel"],
    ["C_out_g", "COLUMNS", "KW", "PIXELS_PER_SPLIT", "PACKED", "TF32", "stride_x_c"],
    _interpreter_wgrad_blocks,
    prune=_prune(_WGRAD_CONFIGS, "x_ptr", {"BLOCK_M": "C_out_g", "BLOCK_N": "COLUMNS"}, _WGRAD_PACKED_CONFIGS),
    checked=["partial_dw_ptr"],
)
@triton.jit
def _conv_wgrad_kernel(
    # pointers: grad is the masked gradient g, dense [pixels, C_out]; partial_dw [splits, C_out, KH, KW, Cin_g]
    # in ACC_DTYPE
    grad_ptr, x_ptr, partial_dw_ptr,
    # sizes: per tap a GEMM of C_out_g rows, COLUMNS = C_in_g columns (TAPS*C_in_g when PACKED: every tap at once)
    # and the pixels N*OH*OW as reduction, split into PIXELS_PER_SPLIT chunks
    C_out_g, C_in_g, COLUMNS, H, W, OH, OW, KW, PIXELS, PIXELS_PER_SPLIT,
    # convolution
    conv_stride_h, conv_stride_w, pad_h, pad_w,
    # strides
    stride_grad_pixel, stride_grad_c,
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_partial_dw_split, stride_partial_dw_cout, stride_partial_dw_kh, stride_partial_dw_kw,
    stride_partial_dw_cin,
    # meta-parameters; PACKED: narrow channels, whose columns are (tap, channel) pairs (see _PACK_CHANNELS_BELOW)
    PACKED: tl.constexpr, TF32: tl.constexpr,
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
    x_cols = (  # [BLOCK_N]: each column's channel and tap offset
        x_ptr + (group * C_in_g + ci).to(tl.int64) * stride_x_c + kh * stride_x_h + kw * stride_x_w
    )

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
        if PACKED:  # per lane and column: ih0 + kh in [0, H), iw0 + kw in [0, W)
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
        acc = tl.dot(dy, x, acc, input_precision="tf32" if TF32 else "ieee")
        ow += step_w
        carry = ow >= OW
        ow = tl.where(carry, ow - OW, ow)
        oh += step_h + carry.to(tl.int32)
        carry = oh >= OH
        oh = tl.where(carry, oh - OH, oh)
        n += step_n + carry.to(tl.int32)

    dw_ptrs = (
        partial_dw_ptr
        + split.to(tl.int64) * stride_partial_dw_split
        + (co.to(tl.int64) * stride_partial_dw_cout)[:, None]
        + (kh * stride_partial_dw_kh + kw * stride_partial_dw_kw + ci * stride_partial_dw_cin)[None, :]
    )
    tl.store(dw_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def output_memory_format(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """The layout of the output and of both gradients, chosen as PyTorch's convolutions choose it:
    channels_last when the input's or the weight's strides suggest it (views included), else NCHW."""
    formats = (_common.suggest_memory_format(x), _common.suggest_memory_format(weight))
    return torch.channels_last if torch.channels_last in formats else torch.contiguous_format


def _dense_channels(t: torch.Tensor) -> torch.Tensor:
    """t with contiguous channels (the fast path's loads run along them): itself when they are, else a
    channels_last copy."""
    return t if t.stride(1) == 1 or t.shape[1] == 1 else t.contiguous(memory_format=torch.channels_last)


def _covers_input(input_size: tuple[int, int], kernel: tuple[int, int], padding: tuple[int, int], groups: int) -> bool:
    """Whether the kernel covers the whole unpadded input (fc6; fc7 is 1x1 on a 1x1 map): then the convolution is one
    matrix product of the flattened NHWC input and weight, run as a 1x1 convolution."""
    return tuple(input_size) == tuple(kernel) and tuple(padding) == (0, 0) and groups == 1


def _flat(t: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] as [N, H*W*C, 1, 1] in (h, w, c) order: a view of a dense channels_last tensor, else a copy."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, 1, 1)


def reduction_splits(tiles: int, reduction: int, device: torch.device) -> int:
    """How many programs share each output tile's reduction: enough for two waves on the GPU when the output tiles
    (counted 64x64) are fewer than its SMs (fc6, fc7), within _MAX_SPLITS and _MIN_REDUCTION_PER_SPLIT."""
    if _common.INTERPRET or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if tiles >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, tiles), _MAX_SPLITS, reduction // _MIN_REDUCTION_PER_SPLIT))


def _convolve(
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
    splits = reduction_splits(triton.cdiv(M, 64) * triton.cdiv(C_out_g, 64) * groups, KH * KW * C_in_g, x.device)
    target = out
    if splits > 1:  # partial sums, in the (n, c, h, w) order out is addressed in
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        target = _common.empty((splits, N, OH, OW, C_out), like=x, dtype=acc_dtype).permute(0, 1, 4, 2, 3)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(C_out_g, meta["BLOCK_N"]), groups, splits)

    _common.launcher(_conv_fwd_kernel)[grid](
        x, weight, bias if bias is not None else weight, target,
        M, C_in_g, C_out_g, H, W, OH, OW, KW, KH * KW, splits,
        stride[0], stride[1], padding[0], padding[1],
        *x.stride(), weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3),
        target.stride(0) if splits > 1 else 0, *(target.stride()[1:] if splits > 1 else out.stride()),
        HAS_BIAS=bias is not None and splits == 1,
        RELU=relu and splits == 1,
        PACKED=C_in_g < _PACK_CHANNELS_BELOW,
        TF32=tf32,
    )
    if splits > 1:
        total = target.sum(0)
        if bias is not None:
            total += bias.to(total.dtype)[:, None, None]
        out.copy_(total.clamp_min(0) if relu else total)  # clamp_min keeps NaN, as F.relu


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
    x, weight = _dense_channels(x), _dense_channels(weight)
    if _covers_input((H, W), (KH, KW), padding, groups):
        x, weight, stride = _flat(x), _flat(weight), (1, 1)
    _convolve(x, weight, bias, out, stride, padding, groups, relu=True)
    return out


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
    per_program = pixels if _common.INTERPRET else _MASK_PIXELS_PER_PROGRAM
    chunks = triton.cdiv(pixels, per_program)
    partial_db = _common.empty((chunks, C), like=grad_out, dtype=acc_dtype) if with_bias else masked

    def grid(meta):
        return (chunks, triton.cdiv(C, meta["BLOCK_C"]))

    _common.launcher(_relu_grad_kernel)[grid](
        grad_out, out, masked, partial_db,
        pixels, per_program, C, OH, OW,
        *grad_out.stride(), *out.stride(), partial_db.stride(0),
        HAS_BIAS=with_bias,
    )
    return masked, partial_db.sum(0).to(grad_out.dtype) if with_bias else None


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
    weight = _dense_channels(weight)
    if _covers_input((H, W), (KH, KW), padding, groups):
        # dx[n, (kh, kw, ci)] = sum_co g[n, co] w[co, (kh, kw, ci)]: a 1x1 convolution of g by the flat weight's
        # transpose (a view), written into a dense channels_last dx seen as [N, KH*KW*C_in, 1, 1].
        channels_last = dx.is_contiguous(memory_format=torch.channels_last)
        dense = dx if channels_last else _common.empty(input_shape, like=dx, memory_format=torch.channels_last)
        transposed = _flat(weight)[:, :, 0, 0].t()[:, :, None, None]  # [KH*KW*C_in, C_out, 1, 1]
        _convolve(_dense_channels(masked), transposed, None, _flat(dense), (1, 1), (0, 0), 1, relu=False)
        if dense is not dx:
            dx.copy_(dense)
        return dx
    if tuple(stride) == (1, 1):
        # A stride-1 convolution's input gradient is a convolution of g by the weights flipped in space and with
        # in and out channels swapped (per group), padded by k-1-p; that weight is small, so it is made once.
        flipped = (
            weight.reshape(groups, C_out_g, C_in_g, KH, KW)
            .flip(3, 4)
            .transpose(1, 2)
            .reshape(C_in, C_out_g, KH, KW)
            .contiguous(memory_format=torch.channels_last)
        )
        padding = (KH - 1 - padding[0], KW - 1 - padding[1])
        _convolve(_dense_channels(masked), flipped, None, dx, (1, 1), padding, groups, relu=False)
        return dx
    gemm_m, gemm_k = N * H * W, C_out_g * KH * KW

    def grid(meta):
        return (triton.cdiv(gemm_m, meta["BLOCK_M"]) * triton.cdiv(C_in_g, meta["BLOCK_N"]), groups)

    _common.launcher(_conv_dgrad_gather_kernel)[grid](
        masked, weight, dx,
        gemm_m, C_in_g, gemm_k, C_out_g, H, W, OH, OW, KW,
        stride[0], stride[1], padding[0], padding[1],
        *masked.stride(), *weight.stride(), *dx.stride(),
        TF32=_common.use_tf32(masked.dtype),
    )
    return dx


def _wgrad_splits(pixels: int, tiles: int, device: torch.device) -> int:
    """How many pixel chunks the weight-gradient reduction is cut into: two waves of programs on the GPU, counting
    64x64 output tiles, within _MAX_SPLITS and _MIN_PIXELS_PER_SPLIT."""
    if _common.INTERPRET or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    wanted = triton.cdiv(2 * sms, max(tiles, 1))
    return max(1, min(wanted, _MAX_SPLITS, pixels // _MIN_PIXELS_PER_SPLIT))


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
    N, C_in, H, W = x.shape
    C_out, C_in_g, KH, KW = weight_shape
    OH, OW = masked.shape[2], masked.shape[3]
    C_out_g = C_out // groups
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    masked = masked.contiguous(memory_format=torch.channels_last)  # pixels apart by C_out, channels by 1
    x = _dense_channels(x)
    kernel, conv_stride, conv_padding, taps_shape = (KH, KW), stride, padding, (KH, KW)
    if _covers_input((H, W), (KH, KW), padding, groups):  # one tap over the flattened input
        x, kernel, conv_stride, taps_shape = _flat(x), (1, 1), (1, 1), (1, 1)
        H = W = 1
    channels = x.shape[1] // groups
    taps = kernel[0] * kernel[1]
    packed = channels < _PACK_CHANNELS_BELOW  # then one program's columns are (tap, channel) pairs of every tap
    columns = taps * channels if packed else channels
    pixels = N * OH * OW
    tiles = triton.cdiv(C_out_g, 64) * triton.cdiv(taps * channels, 64) * groups
    splits = _wgrad_splits(pixels, tiles, x.device)
    pixels_per_split = max(triton.cdiv(pixels, splits), 1)
    partial_dw = _common.empty((splits, C_out, *taps_shape, channels), like=x, dtype=acc_dtype)

    def grid(meta):
        rows, column_tiles = triton.cdiv(C_out_g, meta["BLOCK_M"]), triton.cdiv(columns, meta["BLOCK_N"])
        return (rows * column_tiles * (1 if packed else taps), splits, groups)

    _common.launcher(_conv_wgrad_kernel)[grid](
        masked, x, partial_dw,
        C_out_g, channels, columns, H, W, OH, OW, kernel[1], pixels, pixels_per_split,
        conv_stride[0], conv_stride[1], conv_padding[0], conv_padding[1],
        masked.stride(3), masked.stride(1),
        *x.stride(),
        *partial_dw.stride(),
        PACKED=packed,
        TF32=_common.use_tf32(x.dtype),
    )
    dw = partial_dw.sum(0).reshape(C_out, KH, KW, C_in_g).permute(0, 3, 1, 2)
    return dw.to(x.dtype, memory_format=weight_memory_format)
