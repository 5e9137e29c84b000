"""How the conv kernels (conv.py, conv_grad.py) are tuned and cut into programs: the tile configs per
precision class of tl.dot, their pruning to a launch's extents, the interpreter's blocks, and how many programs
share a reduction. Kept apart from the kernels so that the configs, with the census that chose them, read as one
table.
"""

import functools

import torch
import triton

from . import _common


def _config(block_m: int, block_n: int, block_k: int, warps: int, stages: int) -> triton.Config:
    blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
    return triton.Config(blocks, num_warps=warps, num_stages=stages)


# Tile configs per precision class of tl.dot, chosen from the static census (python -m bench.census,
# bench/results/census-sm90.md): none spills, and each list starts with a small conservative config.
# At most 4 warps, in every conv list: these kernels loop over (tap, channel block) or pixel blocks with div/mod index
# math, and Triton has miscompiled such non-unrolled loops at num_warps=8 (wrong results for non-1x1 convolutions:
# pytorch/pytorch#173068, after triton-lang/triton#1254); PyTorch's Inductor caps its conv templates at 4 warps since.
# tests/test_gpu_compile.py fails on a conv config with more.
# bf16/fp16: wgmma with a 64-wide reduction block (128-byte rows, whole 16-byte async copies). The forward kernel
# also runs the stride-1 input gradients and fc6/fc7. Its 64x128 tile reaches the modeled issue bound 1.00 at 4 warps;
# a 128x128 tile (8 warps until issue 20) adds nothing to that bound and, at 4 warps, needs 241-255 registers.
FWD_CONFIGS = {
    "half": [
        _config(64, 64, 64, 4, 4),
        _config(128, 64, 64, 4, 3),
        _config(64, 128, 64, 4, 3),
    ],
    # TF32: the same tiles at half the bytes per element; wgmma takes 8 of K per instruction.
    "tf32": [
        _config(64, 64, 32, 4, 4),
        _config(128, 64, 32, 4, 3),
        _config(64, 128, 32, 4, 3),
    ],
    # fp32 without TF32 and fp64 (gradcheck) run tl.dot on the FMA units: small tiles, which do not spill.
    "exact": [_config(32, 32, 16, 4, 2), _config(64, 64, 16, 4, 2)],
}
# Packed taps (narrow channels that space_to_depth.py leaves narrow: a stride-1 convolution of 3 colours, as VGG's
# first; 3 channels at stride 2) address every element on its own (no vector loads): only the smallest tiles stay in
# registers (the census: 64x64 and larger spill in bf16). conv1 runs blocked, on the channel-block configs.
FWD_PACKED_CONFIGS = {
    "half": [_config(64, 64, 64, 4, 4)],
    "tf32": [_config(64, 64, 32, 4, 4)],
    "exact": [_config(32, 32, 16, 4, 2)],
}
# The weight gradient's rows are output channels, its columns input channels of one tap (or packed (tap, channel)
# pairs), its reduction pixels, always many. Each trip steps every pixel lane's (n, oh, ow), work that 4 warps share
# among half the threads 8 did: only a 128x128 tile carries it (census, bf16: 64x64 0.42, 128x64 0.67, 64x128 0.49,
# dropped). 128x128 at BLOCK_K 32 (bound 0.85, 211 registers) rather than 64 (0.91, 244 registers), and in TF32 at
# BLOCK_K 16 (0.68, 226) rather than 32 (0.72, 254): the highest bounds that leave a compiler update 29 or more
# registers before ptxas spills (256-row tiles bound higher but pad AlexNet's 192 channels per tower to 256). At 8 warps
# the 128x128 tile reached 0.84 and 0.67.
WGRAD_CONFIGS = {
    "half": [
        _config(64, 64, 64, 4, 4),
        _config(128, 64, 64, 4, 3),
        _config(128, 128, 32, 4, 4),
    ],
    "tf32": [
        _config(64, 64, 32, 4, 4),
        _config(128, 64, 32, 4, 3),
        _config(128, 128, 16, 4, 4),
    ],
    "exact": [_config(32, 32, 16, 4, 2), _config(64, 64, 16, 4, 2)],
}
# Packed (tap, channel) columns (narrow channels space_to_depth.py leaves narrow) gather each element with its own
# address and bounds: narrow column blocks, which keep that in registers (64 columns spill).
WGRAD_PACKED_CONFIGS = {
    "half": [_config(64, 32, 64, 4, 3), _config(128, 32, 64, 4, 3)],
    "tf32": [_config(64, 32, 32, 4, 3), _config(128, 32, 32, 4, 3)],
    "exact": [_config(32, 32, 16, 4, 2)],
}
# The gather kernel serves only strided input gradients (conv1's, never needed by AlexNet, runs unblocked): one
# small config per class, which does not spill.
GATHER_CONFIGS = {
    "half": [_config(64, 64, 32, 4, 2)],
    "tf32": [_config(64, 64, 16, 4, 2)],
    "exact": [_config(32, 32, 16, 4, 2)],
}
# Packed columns without bounds (the weight gradient's INSIDE): a stride-1 convolution without padding, whose windows
# all lie in the image, of channels in runs of 16 (with the strides between taps) that a tap's columns would leave
# short of a 128-wide tile. Its (tap, channel) columns then load like a channel block's, 16 at a time, and take the
# channel-block configs: conv1 blocked (3x3 taps of 48 channels), whose per-tap columns fit only 64-wide tiles (census,
# bf16: bound 0.64), runs 432 columns in 128-wide tiles, 84% of them used.
WGRAD_INSIDE_BELOW = 128


def wgrad_inside(channels: int, taps: int, stride: tuple, padding: tuple, x_strides: tuple) -> bool:
    """Whether a weight-gradient launch packs its columns INSIDE (see WGRAD_INSIDE_BELOW); x_strides: the input's, its
    channels dense."""
    runs = channels % 16 == 0 and x_strides[1] == 1 and x_strides[2] % 16 == 0 and x_strides[3] % 16 == 0
    whole = tuple(stride) == (1, 1) and tuple(padding) == (0, 0)
    return runs and whole and taps > 1 and channels < WGRAD_INSIDE_BELOW


def wgrad_gathers(args: dict) -> bool:
    """Whether a weight-gradient launch gathers each element on its own (the packed configs): PACKED, not INSIDE."""
    return args["PACKED"] and not args["INSIDE"]


# ReLU's mask is elementwise and memory-bound: a pixel block by a channel block, channels contiguous. One config, not
# tuned: each program also sums its pixels' gradients for the bias, and that sum's order follows BLOCK_P (one block
# after another, a tree within each), so candidates tuned per key would make the bias gradient differ bit for bit
# between runs, GPUs and layouts (the key holds the channel strides: NCHW and channels_last tune apart). With one
# config both layouts compile the sum to the same layout (the masked output is channels_last either way). The census
# finds the candidates alike (64x64, 32x128, 128x32 at 4 warps: 8 128-bit loads per trip, 601-627 instructions, no
# spills); 64 channels waste least on AlexNet's 48-192 per tower and read 128-byte rows in bf16.
MASK_CONFIGS = [triton.Config({"BLOCK_P": 64, "BLOCK_C": 64}, num_warps=4)]


def _every(*lists: dict) -> list[triton.Config]:
    """Each config of the lists once: the autotuner's list, which it prunes to a launch's (see prune)."""
    return list(dict.fromkeys(c for by_class in lists for configs in by_class.values() for c in configs))


TUNED_CONFIGS = {
    "_conv_fwd_kernel": _every(FWD_CONFIGS, FWD_PACKED_CONFIGS),
    "_conv_wgrad_kernel": _every(WGRAD_CONFIGS, WGRAD_PACKED_CONFIGS),
    "_conv_dgrad_gather_kernel": _every(GATHER_CONFIGS),
    "_relu_grad_kernel": MASK_CONFIGS,
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


def packed(args: dict) -> bool:
    """Whether a conv launch gathers each element on its own (its packed configs): the forward's PACKED launches."""
    return args["PACKED"]


def prune(class_configs: dict, pointer: str, extents: dict, packed_configs: dict | None = None, gathers=packed):
    """An early_config_prune for _common.tuned: the launch's precision class (from packed_configs for a launch that
    gathers each element on its own, if given: gathers(args), by default a PACKED one), then each block fitted to its
    extent (block -> the argument's name, or a function of the arguments)."""

    def prune(configs: list[triton.Config], args: dict) -> list[triton.Config]:
        lists = packed_configs if packed_configs is not None and gathers(args) else class_configs
        wanted = lists[precision_class(args[pointer].dtype, args["TF32"])]
        kept = [c for c in configs if c in wanted]
        for block, extent in extents.items():
            kept = _fitting(kept, block, extent(args) if callable(extent) else args[extent])
        return kept

    return prune


def fwd_reduction_block(args: dict) -> int:
    """The forward kernel's reduction per block: a tap's channels, or every (tap, channel) pair when packed."""
    return args["C_in_g"] * (args["TAPS"] if args["PACKED"] else 1)


def interpreter_fwd_blocks(args: dict) -> dict:
    """Under the interpreter, where nothing is tuned: tiles that fit the GEMM (tl.dot needs 16 at least), one channel
    block per tap and split: each interpreted op costs about as much as numpy work on 50k elements, so fewer,
    larger tiles win. Under _common.TEST_TILES: three programs or more along the pixels and the output channels, and
    a reduction block (_test_reduction_block) that walks the channels in two blocks or more."""
    if _common.TEST_TILES:
        block_k = _test_reduction_block(args)
    else:
        block_k = _common.block(_common.cdiv(fwd_reduction_block(args), args["SPLITS"]), 16, 512)
    return {
        "BLOCK_M": _common.program_block(args["M"], 16, 1024),
        "BLOCK_N": _common.program_block(args["C_out_g"], 16, 512),
        "BLOCK_K": block_k,
    }


def _test_reduction_block(args: dict) -> int:
    """The forward kernel's BLOCK_K under TEST_TILES: the largest (16 at least) that cuts a tap's channels (every
    (tap, channel) pair when packed) into two blocks or more and, where the reduction is long enough, leaves the
    last split (the one with the fewest) two steps of the (tap, channel block) loop or more."""
    taps = 1 if args["PACKED"] else args["TAPS"]
    channels, splits = fwd_reduction_block(args), args["SPLITS"]
    block_k = _common.trip_block(channels, 16, 512)
    while block_k > 16:
        steps = taps * _common.cdiv(channels, block_k)
        if steps - (splits - 1) * _common.cdiv(steps, splits) >= _common.TEST_TRIPS:  # the kernel's share per split
            break
        block_k //= 2
    return block_k


def interpreter_wgrad_blocks(args: dict) -> dict:
    """Under TEST_TILES: three programs or more along the output channels and the columns, two trips or more of
    the pixel loop per split."""
    return {
        "BLOCK_M": _common.program_block(args["C_out_g"], 16, 512),
        "BLOCK_N": _common.program_block(args["COLUMNS"], 16, 512),
        "BLOCK_K": _common.trip_block(args["PIXELS_PER_SPLIT"], 16, 1024),
    }


def interpreter_gather_blocks(args: dict) -> dict:
    block_m = _common.program_block(args["GEMM_M"], 16, 512)
    block_n = _common.program_block(args["GEMM_N"], 16, 512)
    block_k = _common.trip_block(args["GEMM_K"], 16, 2**18 // max(block_m, block_n))
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}


def interpreter_mask_blocks(args: dict) -> dict:
    """Under TEST_TILES blocks go down to 4 (no tl.dot here), so that the tests' few channels still make three
    programs and a program's few pixels (mask_pixels_per_program) two trips or more of its loop."""
    low = 4 if _common.TEST_TILES else 16
    block_c = _common.program_block(args["C"], low, 512)
    return {"BLOCK_P": _common.trip_block(args["PIXELS_PER_PROGRAM"], low, 2**16 // block_c), "BLOCK_C": block_c}


# A GEMM whose output tiles are fewer than the GPU's SMs (fc6, fc7: 128 rows by 2048 columns) splits its reduction
# into at most this many parts, whose fp32 partial tiles the last program of each tile to finish sums in split order
# (deterministic; arrivals.py); each part keeps at least
# MIN_REDUCTION_PER_SPLIT products per output so that its loop stays long. The weight gradient reduces over every
# output pixel of the batch (387k for conv1 at batch 128) and splits it likewise.
MAX_SPLITS = 16
MIN_REDUCTION_PER_SPLIT = 1024
MIN_PIXELS_PER_SPLIT = 2048
# A channel block is at least 16 wide (tl.dot's K); narrower channels would leave most of it padding, so their kernels
# pack (tap, channel) pairs into the block instead, at the cost of per-element addresses, unless cutting a strided
# input into blocks makes them wide (conv1's 3 colours at stride 4: 48; space_to_depth.py).
PACK_CHANNELS_BELOW = 16
# ReLU's mask: each program masks this many pixels of a channel block and writes one partial bias sum, so the
# partial sums are few (1,500 rows for conv1 at batch 128) and their number does not depend on the tile config.
MASK_PIXELS_PER_PROGRAM = 256


def mask_pixels_per_program(pixels: int) -> int:
    """The pixels each program of ReLU's mask takes: MASK_PIXELS_PER_PROGRAM on a GPU; under the interpreter all
    of them in one program, or under _common.TEST_TILES just over a TEST_PROGRAMS-th of them: from 7 pixels on,
    three programs, the last one partial (chunks that need not be multiples of BLOCK_P, so that a loop may also
    end in a partial trip before the last pixel)."""
    if not _common.INTERPRET:
        return MASK_PIXELS_PER_PROGRAM
    return pixels // _common.TEST_PROGRAMS + 1 if _common.TEST_TILES else pixels


# The smallest block a conv kernel's tile takes along an output dimension (tl.dot's 16; every GPU config's is 32 or
# more), and the mask kernel's smallest channel block (the interpreter's, under _common.TEST_TILES): launchers count
# a split reduction's arrival counters (arrivals.py) for tiles this small, before the autotuner picks the real ones.
SMALLEST_BLOCK = 16
SMALLEST_MASK_BLOCK = 4


def most_tiles(*extents: int) -> int:
    """The most output tiles a launch over these extents can have: one per SMALLEST_BLOCK of each."""
    tiles = 1
    for extent in extents:
        tiles *= _common.cdiv(extent, SMALLEST_BLOCK)
    return tiles


def check_counters(needed: int, capacity: int) -> None:
    """Called by a split launch's grid, once its blocks are chosen: a counter per output tile must exist (a kernel
    past the end would count in memory it does not own)."""
    if needed > capacity:
        raise RuntimeError(
            f"a split reduction needs {needed} arrival counters but its launcher allocated {capacity}: a block smaller "
            f"than conv_tuning.SMALLEST_BLOCK ({SMALLEST_BLOCK}) or SMALLEST_MASK_BLOCK ({SMALLEST_MASK_BLOCK})"
        )


def sm_count(device: torch.device) -> int | None:
    """The GPU's streaming multiprocessors, or None where programs are not spread over any (CPU, interpreter)."""
    if _common.INTERPRET or device.type != "cuda":
        return None
    return _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _multiprocessors(index: int) -> int:
    """A device's SM count, asked once (every conv launch plans its splits with it)."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def reduction_splits(tiles: int, reduction: int, device: torch.device) -> int:
    """How many programs share each output tile's reduction: enough for two waves on the GPU when the output tiles
    (counted 64x64) are fewer than its SMs (fc6, fc7), within MAX_SPLITS and MIN_REDUCTION_PER_SPLIT."""
    sms = sm_count(device)
    if sms is None or tiles >= sms:
        return 1
    return max(1, min(_common.cdiv(2 * sms, tiles), MAX_SPLITS, reduction // MIN_REDUCTION_PER_SPLIT))


def wgrad_splits(pixels: int, tiles: int, device: torch.device) -> int:
    """How many pixel chunks the weight-gradient reduction is cut into: two waves of programs on the GPU, counting
    64x64 output tiles, within MAX_SPLITS and MIN_PIXELS_PER_SPLIT."""
    sms = sm_count(device)
    if sms is None:
        return 1
    return max(1, min(_common.cdiv(2 * sms, max(tiles, 1)), MAX_SPLITS, pixels // MIN_PIXELS_PER_SPLIT))
