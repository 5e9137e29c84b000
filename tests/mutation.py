"""Planted bugs (mutants) that the kernel tests must kill: a check the project owns on whether its tests see the bugs
a GPU would expose (DESIGN.md, "Tests: how a check earns trust": a mutant that no test kills is a missing test).

    python -m tests.mutation [--list] [--only NAME ...] [--fast] [--no-baseline] [--keep] [--timeout S]

Each mutant is one realistic slip in a kernel (a block offset missing its scale, swapped tile ids, a split or a carry
dropped, a window off by one, a mask that repeats per block), given as the exact original snippet, its replacement and
the tests that must kill it. For each, the repository (git's tracked and untracked, not ignored, files) is copied to a
temporary directory, with alexnet_triton/kernels a real copy of kernels/ (the package's kernels, as setuptools maps
them), the replacement is applied there (a snippet not found exactly once is an error: mutants cannot silently rot),
and `python -m pytest -q -x -p no:cacheprovider <its tests>` runs in the copy under Triton's interpreter on the CPU
(TRITON_INTERPRET=1, no GPU visible, PYTHONPATH and the working directory the copy, whose modules are imported: checked
once). Failing tests kill the mutant; passing ones let it survive. Each test that kills a mutant then runs once on
the copy without any mutant (the baseline), since a kill by a test that fails anyway proves nothing: a killing test
that fails there too makes the mutant's result an error. A kill by a crash names no test; its whole selection is the
baseline then.

Prints a table and "N of M mutants killed in S s"; exits 1 if any mutant survives (or a run errs or times out).
--fast runs one mutant per kernel file, for CI; --only runs the named ones; --list shows them and checks that every
snippet is still found exactly once in the working tree.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The package's kernels: kernels/ in the repository, alexnet_triton.kernels once installed (pyproject's package-dir).
KERNELS, PACKAGE_KERNELS = "kernels", "alexnet_triton/kernels"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str  # exact text, found exactly once in file
    replacement: str
    tests: tuple[str, ...]  # pytest arguments: a test file and a -k expression (none matching is an error)
    why: str  # what a GPU would do with it
    fast: bool = False  # in --fast's subset (one per kernel file)


# Each op's test file, less gradcheck (minutes of tiny float64 shapes under the interpreter, one tile each) and, for the
# convolution, the AlexNet layer shapes (the slowest; the file's other shapes cover the same code past the first tile).
CONV = ("tests/test_conv.py", "-k", "not gradcheck and not alexnet_layer")
LRN = ("tests/test_lrn.py", "-k", "not gradcheck")
SPACE_TO_DEPTH = ("tests/test_conv.py", "-k", "space_to_depth")
POOL = ("tests/test_pool.py", "-k", "not gradcheck")
LRN_POOL = ("tests/test_lrn_pool.py", "-k", "not gradcheck")
DROPOUT = ("tests/test_dropout.py", "-k", "not gradcheck")
AUGMENT = ("tests/test_augmentation.py",)

# The line that sets a split reduction's arrival counter back to 0 (kernels/conv.py, conv_grad.py).
RESET = "tl.store(arrival, 0)  # for the next launch on this stream (or the graph's next replay)\n"

MUTANTS = [
    # ---- kernels/conv.py: the forward kernel (also the stride-1 input gradient and fc6/fc7) ----
    Mutant(
        "conv-fwd-row-block-unscaled",
        "kernels/conv.py",
        "    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)\n    mask_m = offs_m < M\n",
        "    offs_m = pid_m + tl.arange(0, BLOCK_M)\n    mask_m = offs_m < M\n",
        CONV,
        "pixel tiles overlap the first and the rows past BLOCK_M + tiles - 1 are never written",
        fast=True,
    ),
    Mutant(
        "conv-fwd-swapped-tile-ids",
        "kernels/conv.py",
        "    pid_m = pid // num_n_tiles\n    pid_n = pid % num_n_tiles\n    group = tl.program_id(1)\n",
        "    pid_m = pid % num_n_tiles\n    pid_n = pid // num_n_tiles\n    group = tl.program_id(1)\n",
        CONV,
        "programs compute the wrong (pixel, channel) tiles once there are several of each",
    ),
    Mutant(
        "conv-fwd-split-restarts",
        "kernels/conv.py",
        "    first = split * per_split\n",
        "    first = 0\n",
        CONV,
        "every split of fc6/fc7's reduction sums the first share again (splits run on a GPU with few output tiles)",
    ),
    Mutant(
        "conv-fwd-channel-block-offset",
        "kernels/conv.py",
        "                a_ptrs + (kh * stride_x_h + kw * stride_x_w + c0 * stride_x_c),\n",
        "                a_ptrs + (kh * stride_x_h + kw * stride_x_w),\n",
        CONV,
        "every channel block of a tap reads the input's first channels (AlexNet's 96-384 channels take several)",
    ),
    Mutant(
        "conv-fwd-padding-right-edge",
        "kernels/conv.py",
        "in_image = (kh >= top) & (kh < bottom) & (kw >= left) & (kw < right)",
        "in_image = (kh >= top) & (kh < bottom) & (kw >= left) & (kw <= right)",
        CONV,
        "a window past the right edge reads the next row's first pixel instead of padding",
    ),
    # the split reduction finished by the last program to arrive (fc6/fc7 and the weight gradient on a GPU; arrivals.py)
    Mutant(
        "split-sum-skips-a-split",
        "kernels/conv.py",
        "    for _split in range(0, splits):\n",
        "    for _split in range(1, splits):\n",
        CONV,
        "the last program to arrive adds one partial tile fewer: fc6/fc7 miss a fifth of their sum, dw a sixteenth",
    ),
    Mutant(
        "conv-fwd-first-arrival-finishes",
        "kernels/conv.py",
        "        if split_arrive(arrival) == SPLITS - 1:\n",
        "        if split_arrive(arrival) == 0:\n",
        CONV,
        "the first program to arrive sums partial tiles the others have not written yet",
    ),
    Mutant(
        "conv-fwd-arrival-not-reset",
        "kernels/conv.py",
        "            " + RESET + "    else:\n",
        "    else:\n",
        CONV,
        "counters stay counted: from the second launch on no program of a tile is last, and fc6/fc7 write nothing",
    ),
    Mutant(
        "conv-fwd-groups-share-counters",
        "kernels/conv.py",
        "        arrival = arrivals_ptr + group * tl.num_programs(0) + pid\n",
        "        arrival = arrivals_ptr + pid\n",
        CONV,
        "one counter per tile for all groups: the first group's tiles end with no last program, the next's early",
    ),
    Mutant(
        "conv-fwd-finish-rows-stuck",
        "kernels/conv.py",
        "                rows = pid_m * BLOCK_M + r0 + tl.arange(0, SUM_ROWS)\n",
        "                rows = pid_m * BLOCK_M + tl.arange(0, SUM_ROWS)\n",
        CONV,
        "the finishing program sums the tile's first rows again and again; the rest of fc6/fc7's batch stays unwritten",
    ),
    Mutant(
        "conv-fwd-split-path-drops-bias",
        "kernels/conv.py",
        "_bias_relu_store(total, bias_ptr, co, mask_n, out_ptrs, mask, HAS_BIAS, RELU)",
        "_bias_relu_store(total, bias_ptr, co, mask_n, out_ptrs, mask, False, RELU)",
        CONV,
        "the split path's epilogue forgets the bias: fc6/fc7 compute relu(x w) instead of relu(x w + b)",
    ),
    # ---- kernels/conv_grad.py: ReLU's mask, the weight gradient, the strided input gradient ----
    Mutant(
        "relu-grad-mask-at-zero",
        "kernels/conv_grad.py",
        "g = tl.where(y <= 0, tl.zeros_like(dy), dy)",
        "g = tl.where(y < 0, tl.zeros_like(dy), dy)",
        CONV,
        "gradients flow through outputs ReLU clipped to 0",
    ),
    Mutant(
        "relu-grad-chunk-restarts",
        "kernels/conv_grad.py",
        "    p_start = chunk * PIXELS_PER_PROGRAM\n",
        "    p_start = 0\n",
        CONV,
        "every pixel chunk masks the first chunk again (a GPU runs 256 pixels per program)",
    ),
    Mutant(
        "wgrad-dropped-row-carry",
        "kernels/conv_grad.py",
        "        oh += step_h + carry.to(tl.int32)\n",
        "        oh += step_h\n",
        CONV,
        "a pixel lane that wraps past the row's end stays on its row: later trips read the wrong pixels",
        fast=True,
    ),
    Mutant(
        "wgrad-split-restarts",
        "kernels/conv_grad.py",
        "    p_start = split * PIXELS_PER_SPLIT\n",
        "    p_start = 0\n",
        CONV,
        "every split of the weight gradient's pixels sums the first split again (a GPU splits up to 16 ways)",
    ),
    Mutant(
        "wgrad-swapped-tile-ids",
        "kernels/conv_grad.py",
        "    pid_m = pid % num_m_tiles\n    pid_n = (pid // num_m_tiles) % num_n_tiles\n",
        "    pid_m = pid % num_n_tiles\n    pid_n = (pid // num_n_tiles) % num_m_tiles\n",
        CONV,
        "each tile index is taken modulo the other's tile count: tiles are left undone where the two counts differ",
    ),
    Mutant(
        "wgrad-inside-columns-of-group-0",
        "kernels/conv_grad.py",
        "x_offsets = tl.max_contiguous(tl.multiple_of(x_offsets + group * C_in_g + ci, 16), 16)",
        "x_offsets = tl.max_contiguous(tl.multiple_of(x_offsets + ci, 16), 16)",
        CONV,
        "packed columns without bounds (conv1 blocked) read the first group's channels for every group",
    ),
    Mutant(
        "dgrad-gather-padding-sign",
        "kernels/conv_grad.py",
        "        th = ih[:, None] + pad_h - kh[None, :]\n",
        "        th = ih[:, None] - pad_h - kh[None, :]\n",
        CONV,
        "a strided convolution's input gradient gathers from windows shifted by twice the padding",
    ),
    Mutant(
        "relu-grad-bias-drops-last-chunk",
        "kernels/conv_grad.py",
        "mask=(r < chunks)[:, None] & mask_c[None, :],",
        "mask=(r < chunks - 1)[:, None] & mask_c[None, :],",
        CONV,
        "the bias gradient leaves out the last pixel chunk's sum (conv1 has 1,500 chunks a batch on a GPU)",
    ),
    Mutant(
        "relu-grad-arrival-not-reset",
        "kernels/conv_grad.py",
        "                " + RESET + "                tl.store(db_ptr",
        "                tl.store(db_ptr",
        CONV,
        "the bias gradient's counters stay counted: from the second launch on no chunk is last and db is never written",
    ),
    Mutant(
        "wgrad-arrival-not-reset",
        "kernels/conv_grad.py",
        "            " + RESET + "    else:\n",
        "    else:\n",
        CONV,
        "the weight gradient's counters stay counted: from the second launch on dw is never written",
    ),
    Mutant(
        "wgrad-finish-rows-of-the-first-tile",
        "kernels/conv_grad.py",
        "rows = pid_m * BLOCK_M + r0 + tl.arange(0, SUM_ROWS)  # output channels within the group",
        "rows = r0 + tl.arange(0, SUM_ROWS)  # output channels within the group",
        CONV,
        "every finishing program sums and writes the first row tile's output channels; the others' dw stays unwritten",
    ),
    Mutant(
        "wgrad-dw-taps-transposed",
        "kernels/conv_grad.py",
        "dw_strides = (written.stride(0), written.stride(2), written.stride(3), written.stride(1))",
        "dw_strides = (written.stride(0), written.stride(3), written.stride(2), written.stride(1))",
        CONV,
        "the weight gradient is written with kh and kw swapped: wrong for every non-symmetric kernel tap",
    ),
    Mutant(
        "dgrad-flip-misses-the-width",
        "kernels/conv_grad.py",
        "* KW + (KW - 1 - kw)",
        "* KW + kw",
        CONV,
        "a stride-1 input gradient's weight is flipped in height only: conv2-5's input gradients go wrong",
    ),
    # ---- kernels/pool.py ----
    Mutant(
        "pool-pixel-block-unscaled",
        "kernels/pool.py",
        "    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)\n",
        "    p = tl.program_id(0) + tl.arange(0, BLOCK_P)\n",
        POOL,
        "pixel blocks overlap the first and the pixels (cells) past it are never pooled",
        fast=True,
    ),
    Mutant(
        "pool-fwd-channel-block-unscaled",
        "kernels/pool.py",
        "    w0 = ow * SW - PW\n"
        "    in_p, c = _tile(in_p, tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C), CHANNELS_LAST)\n",
        "    w0 = ow * SW - PW\n    in_p, c = _tile(in_p, tl.program_id(1) + tl.arange(0, BLOCK_C), CHANNELS_LAST)\n",
        POOL,
        "channel blocks overlap the first and the channels past it are never pooled (a GPU's blocks are 8-32 wide)",
    ),
    Mutant(
        "pool-fwd-window-past-bottom",
        "kernels/pool.py",
        "                inside = _per_pixel((ih >= 0) & (ih < H) & (iw >= 0) & (iw < W), CHANNELS_LAST)\n",
        "                inside = _per_pixel((ih >= 0) & (ih <= H) & (iw >= 0) & (iw < W), CHANNELS_LAST)\n",
        POOL,
        "a padded window past the bottom edge takes the next channel's or image's first row into its maximum",
    ),
    Mutant(
        "pool-bwd-window-count-floor",
        "kernels/pool.py",
        "    DH: tl.constexpr = (KH + SH - 1) // SH  # windows reaching a cell, each way\n",
        "    DH: tl.constexpr = KH // SH  # windows reaching a cell, each way\n",
        POOL,
        "an input row in two overlapping windows receives the gradient of one (3x3 / stride 2: floor 1, ceil 2)",
    ),
    Mutant(
        "pool-bwd-column-outside-window",
        "kernels/pool.py",
        "if r + d * SH < KH and s + e * SW < KW:",
        "if r + d * SH < KH:",
        POOL,
        "a pixel right of a window matches the next row's first position: it takes gradients its window never chose",
    ),
    Mutant(
        "pool-bwd-cell-origin-unpadded",
        "kernels/pool.py",
        "        ih = a * SH - PH + r\n",
        "        ih = a * SH + r\n",
        POOL,
        "with padding, each cell's gradients are written one row down: the first row's never, the last's past the map",
    ),
    # ---- kernels/lrn.py ----
    Mutant(
        "lrn-pixel-block-unscaled",
        "kernels/lrn.py",
        "    offs = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)\n",
        "    offs = tl.program_id(0).to(tl.int64) + tl.arange(0, BLOCK_S)\n",
        LRN,
        "pixel blocks overlap the first and the pixels past it are never normalized",
        fast=True,
    ),
    Mutant(
        "lrn-fwd-window-halves-swapped",
        "kernels/lrn.py",
        "    HI: tl.constexpr = (SIZE - 1) // 2\n    mask, n, h, w = _pixel_block(P, H, W, BLOCK_S)\n"
        "    x_pix = x_ptr + n * stride_x_n + h * stride_x_h + w * stride_x_w  # channel 0 of each pixel\n",
        "    HI: tl.constexpr = SIZE // 2\n    mask, n, h, w = _pixel_block(P, H, W, BLOCK_S)\n"
        "    x_pix = x_ptr + n * stride_x_n + h * stride_x_h + w * stride_x_w  # channel 0 of each pixel\n",
        LRN,
        "an even window sums one channel more after than before (PyTorch: size // 2 before, (size - 1) // 2 after)",
    ),
    Mutant(
        "lrn-bwd-loop-one-short",
        "kernels/lrn.py",
        "    for c0 in range(0, C + CH, CH):\n",
        "    for c0 in range(0, C, CH):\n",
        LRN,
        "the last chunk's input gradient is never written (a trip writes the chunk before its own)",
    ),
    Mutant(
        "lrn-fwd-squares-before-not-carried",
        "kernels/lrn.py",
        "        sq_before, sq_cur, x_cur = sq_cur, sq_next, x_next\n",
        "        sq_cur, x_cur = sq_next, x_next\n",
        LRN,
        "every chunk's first channels sum their windows without the chunk before (as if at channel 0)",
    ),
    Mutant(
        "lrn-chunk-reads-past-the-channels",
        "kernels/lrn.py",
        "mask=mask[:, None] & (c < C)[None, :], other=0.0)",
        "mask=mask[:, None] & (c <= C)[None, :], other=0.0)",
        LRN,
        "in channels_last the last channels' windows take in the next pixel's first channel",
    ),
    Mutant(
        "lrn-bwd-ratio-window-unmirrored",
        "kernels/lrn.py",
        "t_sums = _window_sums(t_before2, t_before, t_cur, HI, LO, CH)",
        "t_sums = _window_sums(t_before2, t_before, t_cur, LO, HI, CH)",
        LRN,
        "an even window's gradient sums the t of the channels whose windows it is not in (one channel off)",
    ),
    # ---- kernels/lrn_pool.py ----
    Mutant(
        "lrn-pool-channel-group-unscaled",
        "kernels/lrn_pool.py",
        "    cg = tl.program_id(1) * (G * VEC) + tl.arange(0, G)[None, :] * VEC"
        "  # [1, G]: each group's first channel\n",
        "    cg = tl.program_id(1) * G + tl.arange(0, G)[None, :] * VEC  # [1, G]: each group's first channel\n",
        LRN_POOL,
        "the forward's channel blocks overlap the first and the channels past it are never pooled",
        fast=True,
    ),
    Mutant(
        "lrn-pool-window-halves-swapped",
        "kernels/lrn_pool.py",
        "    LO: tl.constexpr = SIZE // 2\n    HI: tl.constexpr = (SIZE - 1) // 2\n    x = _channels(",
        "    LO: tl.constexpr = (SIZE - 1) // 2\n    HI: tl.constexpr = SIZE // 2\n    x = _channels(",
        LRN_POOL,
        "an even LRN window is centred one channel late in the fused forward",
    ),
    Mutant(
        "lrn-pool-band-rows-unscaled",
        "kernels/lrn_pool.py",
        "    oh0 = (item // PAIRS) % BANDS * ROWS\n",
        "    oh0 = (item // PAIRS) % BANDS\n",
        LRN_POOL,
        "bands of output rows overlap: the rows past the first band's are never written",
    ),
    Mutant(
        "lrn-pool-carries-the-wrong-row",
        "kernels/lrn_pool.py",
        "            if CARRY and kh == SH:\n",
        "            if CARRY and kh == SH - 1:\n",
        LRN_POOL,
        "the next window's row 0 is taken from the row above it: every window below a band's first pools a wrong row",
    ),
    Mutant(
        "lrn-pool-second-window-tap-unshifted",
        "kernels/lrn_pool.py",
        "                p1 = tl.where(t, j - SW, p1)\n",
        "                p1 = tl.where(t, j, p1)\n",
        LRN_POOL,
        "the pair's second window saves its maximum's column counted from the first window's: backward routes wrongly",
    ),
    Mutant(
        "lrn-pool-bwd-window-count-floor",
        "kernels/lrn_pool.py",
        "    DH: tl.constexpr = (KH + SH - 1) // SH  # windows a pixel can lie in, each way\n",
        "    DH: tl.constexpr = KH // SH  # windows a pixel can lie in, each way\n",
        LRN_POOL,
        "a pixel in two overlapping windows (rows) gathers the pooled gradient of one",
    ),
    Mutant(
        "lrn-pool-bwd-gradient-halo-sides-swapped",
        "kernels/lrn_pool.py",
        "_channels(g_win, ok, cg, C, stride_grad_c, HI, LO, P, G, VEC, ACC, 0.0)",
        "_channels(g_win, ok, cg, C, stride_grad_c, LO, HI, P, G, VEC, ACC, 0.0)",
        LRN_POOL,
        "with an even LRN window the pooled gradients of the group's neighbours are read one channel off",
    ),
    # ---- kernels/space_to_depth.py ----
    Mutant(
        "space-to-depth-row-block-unscaled",
        "kernels/space_to_depth.py",
        "    row = bh * SH + dy  # in the padded image\n",
        "    row = bh + dy  # in the padded image\n",
        SPACE_TO_DEPTH,
        "conv1's blocks overlap: every blocked row but the first reads the image's rows from the wrong place",
        fast=True,
    ),
    Mutant(
        "space-to-depth-reads-unread-columns",
        "kernels/space_to_depth.py",
        " & (column < COLUMNS)\n",
        "\n",
        SPACE_TO_DEPTH,
        "columns no window reads (floor mode) are copied instead of zeroed: an inf there makes NaN through a zero tap",
    ),
    # ---- kernels/dropout.py ----
    Mutant(
        "dropout-mask-repeats-per-block",
        "kernels/dropout.py",
        "    counters = tl.program_id(0) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)\n",
        "    counters = tl.arange(0, BLOCK // 4)\n",
        DROPOUT,
        "every block of 1,024-4,096 elements drops the same positions; each block's dropped fraction is still right",
        fast=True,
    ),
    Mutant(
        "dropout-counters-scaled-by-elements",
        "kernels/dropout.py",
        "    counters = tl.program_id(0) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)\n",
        "    counters = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK // 4)\n",
        DROPOUT,
        "the mask depends on the block: a GPU tunes blocks per launch, so backward may drop elements forward kept",
    ),
    Mutant(
        "dropout-one-number-per-call",
        "kernels/dropout.py",
        "tl.join(tl.join(u0, u2), tl.join(u1, u3))",
        "tl.join(tl.join(u0, u0), tl.join(u0, u0))",
        DROPOUT,
        "four neighbours are kept or dropped together: the right fraction, but not independent dropout",
    ),
    Mutant(
        "dropout-block-unscaled",
        "kernels/dropout.py",
        "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "    offs = tl.program_id(0).to(tl.int64) + tl.arange(0, BLOCK)",
        DROPOUT,
        "programs overlap the first block and the elements past it are never written",
    ),
    # ---- kernels/augment.py ----
    Mutant(
        "crop-flip-off-by-one",
        "kernels/augment.py",
        "    source_x = left + tl.where(flip != 0, size - 1 - x, x)  # in the (rescaled) image\n",
        "    source_x = left + tl.where(flip != 0, size - x, x)  # in the (rescaled) image\n",
        AUGMENT,
        "a flipped crop is shifted one pixel: its first column comes from outside the box",
    ),
    Mutant(
        "crop-block-unscaled",
        "kernels/augment.py",
        "    j = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)  # the values of a row\n",
        "    j = tl.program_id(2) + tl.arange(0, BLOCK)  # the values of a row\n",
        AUGMENT,
        "a row's blocks overlap the first and the values past it are never written (a 227 crop's row is 3+ blocks)",
        fast=True,
    ),
    Mutant(
        "crop-row-block-unscaled",
        "kernels/augment.py",
        "    y0 = tl.program_id(1) * ROWS\n",
        "    y0 = tl.program_id(1)\n",
        AUGMENT,
        "row blocks overlap the first and the rows past it are never written (a 227 crop is 4-15 row blocks)",
    ),
    Mutant(
        "crop-resample-tap-mixed-up",
        "kernels/augment.py",
        "tl.load(first_taps + t * PIXEL)",
        "tl.load(first_taps + t)",
        AUGMENT,
        "a rescaled pixel's filter reads the tap pixel's other channels instead of its neighbours: colours mixed",
    ),
    Mutant(
        "crop-resample-row-rounding-dropped",
        "kernels/augment.py",
        "    return tl.floor(total)\n",
        "    return total - HALF\n",
        AUGMENT,
        "the first pass keeps its fractions: a grey level off on about a third of the pixels of a rescaled crop",
    ),
    Mutant(
        "crop-resample-ring-reversed",
        "kernels/augment.py",
        "ring[(k + 1 + t) % TAPS]",
        "ring[(k + TAPS - t) % TAPS]",
        AUGMENT,
        "each rescaled row weighs its stored rows in reverse order, the newest with the oldest's weight",
    ),
    Mutant(
        "crop-resample-row-made-late",
        "kernels/augment.py",
        "                    while (first + TAPS - 1 == row) & (y <= last):\n",
        "                    while (first + TAPS == row) & (y <= last):\n",
        AUGMENT,
        "an output row is made a stored row late, from a ring one row on (and a block's last row never)",
    ),
]


class MutantError(RuntimeError):
    """A mutant that cannot be applied: its snippet is not found exactly once (the kernel changed under it)."""


def mutate(text: str, mutant: Mutant) -> str:
    count = text.count(mutant.original)
    if count != 1:
        raise MutantError(
            f"{mutant.name}: the original snippet occurs {count} times in {mutant.file} (expected once); "
            f"update the mutant to the kernel as it is now:\n{mutant.original}"
        )
    if mutant.original == mutant.replacement:
        raise MutantError(f"{mutant.name}: the replacement is the original")
    return text.replace(mutant.original, mutant.replacement)


def check_mutants(mutants: list[Mutant], root: Path = REPO) -> None:
    """Every mutant applies to the tree at root, names a unique name, and its test files exist."""
    names = [m.name for m in mutants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise MutantError(f"mutant names used twice: {duplicates}")
    for mutant in mutants:
        mutate((root / mutant.file).read_text(), mutant)
        for arg in mutant.tests:
            path = arg.split("::")[0]
            if path.startswith("tests/") and not (root / path).is_file():
                raise MutantError(f"{mutant.name}: no test file {path}")


def repository_files(root: Path = REPO) -> list[str]:
    """The files a copy needs: git's tracked and untracked-but-not-ignored files that exist, symbolic links left out
    (alexnet_triton/kernels is one where it exists; the copy gets a real directory). Outside a git checkout (a copy of
    the tree without .git), every file but git's, virtual environments, caches and build outputs."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root, capture_output=True, check=True, text=True,
        ).stdout.split("\0")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        skipped = {".git", "__pycache__", "build", "runs", ".pytest_cache", ".ruff_cache", ".benchmarks"}
        listing = [
            str(path.relative_to(root))
            for path in root.rglob("*")
            if not any(
                part in skipped or part.startswith(".venv") or part.endswith(".egg-info")
                for part in path.relative_to(root).parts
            )
        ]
    files = []
    for name in dict.fromkeys(listing):
        path = root / name
        if name and path.is_file() and not path.is_symlink() and PACKAGE_KERNELS + "/" not in name + "/":
            files.append(name)
    return files


def snapshot(destination: Path, root: Path = REPO) -> Path:
    """A copy of the repository's files at destination, taken once so that edits made while mutants run don't leak
    into some of them."""
    for name in repository_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return destination


def prepare(base: Path, destination: Path, mutant: Mutant | None) -> Path:
    """A copy of the snapshot at destination with mutant applied, and alexnet_triton/kernels a real copy of its
    kernels/ (after the mutation, so the package runs the mutated kernel)."""
    shutil.copytree(base, destination)
    if mutant is not None:
        path = destination / mutant.file
        path.write_text(mutate(path.read_text(), mutant))
    package_kernels = destination / PACKAGE_KERNELS
    if package_kernels.is_symlink() or package_kernels.is_file():
        package_kernels.unlink()
    elif package_kernels.exists():
        shutil.rmtree(package_kernels)
    shutil.copytree(destination / KERNELS, package_kernels)
    if mutant is not None and mutant.file.startswith(KERNELS + "/"):
        installed = package_kernels / mutant.file[len(KERNELS) + 1 :]
        assert mutant.replacement in installed.read_text(), f"{mutant.name}: the package's copy is not mutated"
    return destination


def copy_environment(copy: Path) -> dict[str, str]:
    """The environment of a run in copy: the interpreter on the CPU, the copy's modules first, no bytecode written
    (a mutant of the same length in the same second must not reuse another's), no error log."""
    env = {k: v for k, v in os.environ.items() if k not in ("ALEXNET_TRITON_ERROR_LOG", "PYTEST_ADDOPTS")}
    env |= {
        "TRITON_INTERPRET": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(copy), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return env


def check_imports(copy: Path) -> str:
    """The files the copy's python imports alexnet_triton and its kernels from: inside the copy, the kernels from its
    real directory (not the repository, nor an editable install's)."""
    script = "import alexnet_triton, alexnet_triton.kernels.conv as k; print(alexnet_triton.__file__, k.__file__)"
    env = copy_environment(copy)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=copy, env=env, capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"the copy's package does not import:\n{result.stderr}")
    package, kernel = (Path(name) for name in result.stdout.split())
    expected_package, expected_kernel = copy / "alexnet_triton/__init__.py", copy / PACKAGE_KERNELS / "conv.py"
    if package != expected_package or kernel != expected_kernel or kernel.resolve() != expected_kernel:
        raise RuntimeError(
            f"the copy imports alexnet_triton from {package} and its kernels from {kernel}, "
            f"not {expected_package} and {expected_kernel}"
        )
    return f"{package}\n{kernel}"


@dataclass
class Outcome:
    result: str  # killed, survived, error, timeout (and "passed"/"failed" for a baseline)
    seconds: float
    detail: str  # the first failing test, or why the run erred


# pytest's short summary: "FAILED <node id> - <message>" (a parametrized id may hold spaces).
FAILED = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float, *, stop_at_first: bool = True) -> Outcome:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["-x"] if stop_at_first else [])]
    start = time.monotonic()
    try:
        result = subprocess.run(
            [*command, *tests], cwd=copy, env=copy_environment(copy), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return Outcome("timeout", time.monotonic() - start, f"still running after {timeout:g} s")
    seconds = time.monotonic() - start
    output = result.stdout + result.stderr
    failed = FAILED.search(output)
    if result.returncode == 0:
        return Outcome("passed", seconds, "")
    if result.returncode == 1:
        return Outcome("failed", seconds, failed.group(2) if failed else "")
    if result.returncode < 0:  # killed by a signal: a crash (on a GPU, an illegal address) is seen too
        return Outcome("failed", seconds, f"crashed (signal {-result.returncode})")
    tail = "\n".join(output.strip().splitlines()[-15:])
    return Outcome("error", seconds, f"pytest exit {result.returncode}: {tail}")


def run(mutants: list[Mutant], *, baseline: bool, keep: bool, timeout: float, out=sys.stdout) -> int:
    check_mutants(mutants)
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="alexnet-mutation-"))
    try:
        base = snapshot(work / "base")
        clean = prepare(base, work / "clean", None)
        print(f"the copies import from:\n{check_imports(clean)}", file=out, flush=True)
        baselines: dict[tuple[str, ...], Outcome] = {}  # the tests run without a mutant: how they ended

        def passes_unmutated(tests: tuple[str, ...]) -> Outcome:
            if tests not in baselines:
                baselines[tests] = run_tests(clean, tests, timeout, stop_at_first=False)
                line = f"baseline {shlex.join(tests)}: {baselines[tests].result} in {baselines[tests].seconds:.0f} s"
                print(line, file=out, flush=True)
            return baselines[tests]

        rows = []
        for mutant in mutants:
            copy = prepare(base, work / mutant.name, mutant)
            outcome = run_tests(copy, mutant.tests, timeout)
            result = {"failed": "killed", "passed": "survived"}.get(outcome.result, outcome.result)
            if result == "killed" and baseline:
                killer = (outcome.detail,) if "::" in outcome.detail else mutant.tests  # a crash names no test
                unmutated = passes_unmutated(killer)
                if unmutated.result != "passed":
                    result = "error"
                    outcome = Outcome("error", outcome.seconds, f"fails without the mutant too: {unmutated.detail}")
            rows.append((mutant, result, outcome))
            first_line = outcome.detail.splitlines()[0] if outcome.detail else ""
            print(f"{mutant.name:34} {result:9} {outcome.seconds:6.1f} s  {first_line}", file=out, flush=True)
            if not keep:
                shutil.rmtree(copy, ignore_errors=True)
        total = time.monotonic() - start
        print(table(rows), file=out)
        killed = sum(result == "killed" for _, result, _ in rows)
        print(f"{killed} of {len(rows)} mutants killed in {total:.0f} s", file=out)
        survivors = [m.name for m, result, _ in rows if result != "killed"]
        if survivors:
            print(f"not killed: {', '.join(survivors)}", file=out)
        return 0 if not survivors else 1
    finally:
        if keep:
            print(f"copies kept in {work}", file=out)
        else:
            shutil.rmtree(work, ignore_errors=True)


def table(rows) -> str:
    lines = ["| mutant | file | tests | result | s | killed by |", "|---|---|---|---|---|---|"]
    for mutant, result, outcome in rows:
        by = outcome.detail.splitlines()[0] if outcome.detail and result == "killed" else ""
        by = by.split("::", 1)[-1] if "::" in by else by
        lines.append(
            f"| {mutant.name} | {mutant.file} | {shlex.join(mutant.tests)} | {result} | {outcome.seconds:.0f} | {by} |"
        )
    return "\n".join(lines)


def selected(args) -> list[Mutant]:
    mutants = MUTANTS
    if args.fast:
        mutants = [m for m in mutants if m.fast]
    if args.only:
        known = {m.name for m in MUTANTS}
        unknown = [name for name in args.only if name not in known]
        if unknown:
            raise SystemExit(f"no mutant named {', '.join(unknown)} (see --list)")
        mutants = [m for m in mutants if m.name in args.only]
    return mutants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and check that each still applies")
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant (repeatable)")
    parser.add_argument("--fast", action="store_true", help="one mutant per kernel file (for CI)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the run of each killing test without a mutant")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the copies (their directory is printed)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (default 900)")
    args = parser.parse_args(argv)
    mutants = selected(args)
    if args.list:
        check_mutants(mutants)
        for m in mutants:
            print(f"{m.name:34} {m.file:22} {'fast' if m.fast else '':4} {shlex.join(m.tests)}\n    {m.why}")
        print(f"{len(mutants)} mutants, each found exactly once in the working tree")
        return 0
    return run(mutants, baseline=args.baseline, keep=args.keep, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
