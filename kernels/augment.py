"""The input augmentation in one pass on the GPU: rescale, crop, flip, lighting shift and normalisation of
uint8 images, written straight into the training dtype and memory format (sections 2 and 4.1).

    out[m, c, y, x] = ((image[n, top + y, left + x', c] + shift[m, c]) - mean[c]) * scale[c]
    with n, top, left, flip = boxes[m] and x' = size - 1 - x if flip else x

With a resampling table (``resampling``), ``image`` above is the stored S x S image rescaled to R x R, the
boxes are in R x R coordinates, and each pixel the crop reads is made on the spot from the stored pixels
around it: the antialiased bilinear filter of PyTorch's resize (the folder path's ``TF.resize(...,
antialias=True)``), applied as its uint8 path applies it, along rows first, rounded to whole grey levels, then
along columns, rounded again. So a store of 256 x 256 images serves 67 x 67 crops of the 76 x 76 images the
folder path would have made, without a second copy of the store.

One box per output crop, so the training crops (a random box and flip per image), the evaluation
centre crop and the ten crops (five boxes, each with and without the flip) are all this kernel. The
random draws stay on the CPU (data.py), so a run draws the same numbers whichever path it takes; the
workers ship 1-byte pixels instead of 4-byte floats, and the float crops exist only in GPU memory.

A program owns ROWS rows of a crop and BLOCK of the 3 * size values in each, (x, c) in channels_last's order or
(c, x) in NCHW's: each value's column, channel, source column and channel constants are worked out once for all its
rows. As stored, the program is one [ROWS, BLOCK] tile. Rescaled, it walks its rows in order: each output row reads
the rescaled rows its filter spans, and each of those, filtered along its row and rounded, is made once, kept in a
ring of the last TAPS and shared with the next output rows (an output row moves the ring on by as many stored rows
as its filter's start moves: about the scale), so a value costs TAPS gathers a stored row it needs, not TAPS^2. The
walk is unrolled by TAPS, so that the ring's slots are renamed, not copied.
"""

import functools
import math

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# ROWS rows x BLOCK values of a row a program: 2 values a thread at 4 warps, 4 at 2, 8 at 1 (BLOCK is a power of
# two: 256 leaves 11-12% of a 224-227 crop's 672-681-value rows idle, 512 a third). sm_90 census (bench/memory_model.py)
# in bf16: as stored (227 crops of a 256 store) every config's modeled bound is 1.00, 560-6,232 instructions a program
# (0.33 with a value a lane and its own index arithmetic); rescaled, the walk's best is at 8 values a thread: 256 -> 253
# (3 taps) 0.87 and 256 -> 76 (7 taps) 0.86, from 0.06 and 0.08 with each value's own TAPS^2 gathers, 0.75 and 0.68
# with a ring moved each row and each rounding's own addition. What remains is TAPS gathers, conversions and
# multiply-adds a value and stored row. At 8 values a thread a 67 crop makes 2 programs of one warp: 256 programs on
# 132 SMs, which the model (issue and bytes only) does not see. Not yet measured on a GPU for this project.
_GPU_CONFIGS = [
    triton.Config({"ROWS": 16, "BLOCK": 256}, num_warps=4),
    triton.Config({"ROWS": 32, "BLOCK": 256}, num_warps=2),
    triton.Config({"ROWS": 64, "BLOCK": 256}, num_warps=1),
]


def resampling(source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The table that rescales a side of `source` pixels to `target` (target <= source) as PyTorch's antialiased
    bilinear resize does (``F.interpolate(mode="bilinear", antialias=True)``, align_corners False): for each
    target pixel i, the first source pixel it reads, starts[i] (int32 (target,)), and its weights over that pixel
    and the next ones, weights[i] (float32 (target, taps), summing to 1, zero where its filter gives none). The
    filter is a triangle as wide as the scale on each side of the pixel's centre, source / target * (i + 0.5); taps
    is the most pixels any target pixel's triangle gives weight (3 for 256 -> 253, 7 for 256 -> 76), and every
    window lies inside the source: starts[i] + taps <= source."""
    if not 1 <= target <= source:
        raise ValueError(f"resampling shrinks a side or keeps it: target must be in [1, {source}], got {target}")
    scale = source / target
    taps = math.ceil(scale) * 2 + 1
    starts = torch.zeros(target, dtype=torch.int32)
    weights = torch.zeros(target, taps, dtype=torch.float64)
    for i in range(target):
        centre = scale * (i + 0.5)
        first = max(int(centre - scale + 0.5), 0)
        end = min(int(centre + scale + 0.5), source)
        distance = (torch.arange(first, end, dtype=torch.float64) - centre + 0.5).abs() / scale
        triangle = (1 - distance).clamp_min(0)
        starts[i], weights[i, : end - first] = first, triangle / triangle.sum()
    # The triangle's ends weigh 0: taps past the last weighted one would only add zeros (exactly) to the kernel's sums.
    taps = int((weights > 0).nonzero()[:, 1].max()) + 1
    # A window that would run past the last pixel starts earlier, its weights moved along (the taps it gains lie
    # inside the image and weigh 0): every tap the kernel reads is inside the image.
    table = torch.zeros(target, taps, dtype=torch.float64)
    for i in range(target):
        start = min(int(starts[i]), source - taps)
        moved = int(starts[i]) - start
        starts[i], table[i, moved:] = start, weights[i, : taps - moved]
    return starts, table.float()


def _interpreter_blocks(args: dict) -> dict:
    """Under the interpreter: a whole crop in a program (up to 64 rows); under TEST_TILES three programs or more each
    way, so that a rescaled crop's row walk takes two rows or more."""
    return {
        "ROWS": _common.program_block(args["size"], 1, 64),
        "BLOCK": _common.program_block(3 * args["size"], 1, 4096),
    }


BOX_COLUMNS = 4  # sample index, top, left, flip (0 or 1)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


# Filtered sums start from a half and are rounded down: the nearest grey level, halves rounded up, as a uint8 resize
# stores it, without an addition of its own (the half rounds with the sum as another tap would). No clamp to [0, 255]
# is needed: the filter's weights are nonnegative and sum to 1 within fp32 rounding (resampling), so a filtered value
# of grey levels lies in [0, 255.001], which rounds into [0, 255].
HALF = tl.constexpr(0.5)


@triton.jit
def _along_row(first_taps, column_weights, PIXEL: tl.constexpr, TAPS: tl.constexpr):
    """A stored row filtered along the row for each value (first_taps: its filter's first tap in the row), rounded to
    a whole grey level."""
    total = tl.full(first_taps.shape, HALF, dtype=tl.float32)
    for t in tl.static_range(TAPS):
        total += column_weights[t] * tl.load(first_taps + t * PIXEL).to(tl.float32)
    return tl.floor(total)


@triton.jit
def _put(ring, slot: tl.constexpr, value):
    """ring with value in place of ring[slot]."""
    placed = ()
    for i in tl.static_range(len(ring)):
        if i == slot:
            placed += (value,)
        else:
            placed += (ring[i],)
    return placed


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(_GPU_CONFIGS, ["size", "TAPS", "CHANNELS_LAST"], _interpreter_blocks, checked=["out_ptr"])
@triton.jit
def _crop_normalize_kernel(
    # pointers: images uint8 (N, S, S, 3); boxes int32 (M, 4); shift float32 (M, 3); mean, scale float32 (3,);
    # the resampling table (unused when TAPS is 0): starts int32 (R,), weights float32 (R, TAPS)
    image_ptr, box_ptr, shift_ptr, mean_ptr, scale_ptr, start_ptr, weight_ptr, out_ptr,
    # sizes: the crop's side
    size,
    # strides of the images (n, h, c; their w is PIXEL) and of the output (m, c, h, w)
    stride_image_n, stride_image_h, stride_image_c,
    stride_out_m, stride_out_c, stride_out_h, stride_out_w,
    # meta-parameters: the images' stride between neighbouring pixels of a row (3 for (N, S, S, 3) contiguous: a
    # constant, so that a filter's taps are one address and fixed offsets); TAPS, the resampling's taps per side (0:
    # crop the stored images as they are); CHANNELS_LAST orders a row's values (x, c), as the output's memory does;
    # the tile
    PIXEL: tl.constexpr, TAPS: tl.constexpr, CHANNELS_LAST: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    # Crops on grid axis 0 (up to 2**31 - 1 programs): ten-crop evaluation makes 40 crops per training image.
    crop = tl.program_id(0).to(tl.int64)
    y0 = tl.program_id(1) * ROWS
    j = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)  # the values of a row
    in_row = j < 3 * size
    # Values past the row (stored nowhere) read the row's last: every load below is in bounds, unmasked.
    if CHANNELS_LAST:
        x = tl.minimum(j, 3 * size - 1) // 3
        c = tl.minimum(j, 3 * size - 1) - 3 * x
    else:
        c = tl.minimum(j, 3 * size - 1) // size
        x = tl.minimum(j, 3 * size - 1) - size * c
    sample = tl.load(box_ptr + crop * 4).to(tl.int64)
    top = tl.load(box_ptr + crop * 4 + 1)
    left = tl.load(box_ptr + crop * 4 + 2)
    flip = tl.load(box_ptr + crop * 4 + 3)
    source_x = left + tl.where(flip != 0, size - 1 - x, x)  # in the (rescaled) image
    shift = tl.load(shift_ptr + crop * 3 + c)
    mean = tl.load(mean_ptr + c)
    scale = tl.load(scale_ptr + c)
    image_ptr += sample * stride_image_n + c * stride_image_c
    if CHANNELS_LAST:  # the launcher's output: a row's (x, c) values contiguous, in order
        out = out_ptr + crop * stride_out_m + j
    else:
        out = out_ptr + crop * stride_out_m + c * stride_out_c + x * stride_out_w
    if TAPS == 0:
        pixels = image_ptr + source_x * PIXEL
        for r in tl.static_range(ROWS):
            y = y0 + r
            # A last block's rows past the crop read its last row, and store nothing.
            pixel = tl.load(pixels + (top + tl.minimum(y, size - 1)) * stride_image_h).to(tl.float32)
            value = ((pixel + shift) - mean) * scale  # the CPU transform's order of operations
            tl.store(out + y * stride_out_h, value.to(out_ptr.dtype.element_ty), mask=in_row & (y < size))
    else:  # the rescaled image's pixel (top + y, source_x), made from the stored pixels under its filter
        columns = image_ptr + tl.load(start_ptr + source_x) * PIXEL  # the filter's first tap in row 0
        column_weights = ()
        for t in tl.static_range(TAPS):
            column_weights += (tl.load(weight_ptr + source_x * TAPS + t),)
        # The walk down the stored rows the program's output rows reach, in order: each one filtered along its row
        # into a ring of the last TAPS; an output row is made once the ring holds its filter's rows, first(y) ..
        # first(y) + TAPS - 1 (first: the table's starts, nondecreasing). The walk is unrolled TAPS rows a trip, the
        # k-th into slot k, so that the ring's slots are renamed rather than moved (a move per slot and value each
        # row: a ninth of the walk's instructions at 7 taps).
        ring = ()
        for _ in tl.static_range(TAPS):
            ring += (tl.zeros([BLOCK], dtype=tl.float32),)
        y = y0
        last = tl.minimum(y0 + ROWS, size) - 1
        first = tl.load(start_ptr + top + y)
        end = tl.load(start_ptr + top + last) + TAPS
        for trip in range(first, end, TAPS):
            for k in tl.static_range(TAPS):
                row = trip + k
                if row < end:
                    filtered = _along_row(columns + row * stride_image_h, column_weights, PIXEL, TAPS)
                    ring = _put(ring, k, filtered)
                    # The output rows whose filter ends here: one at most while the starts move on (shrinking), more
                    # where they are held back at the image's last rows (resampling). Their filter's rows, oldest
                    # first, are in slots k + 1, ..., k + TAPS (mod TAPS).
                    while (first + TAPS - 1 == row) & (y <= last):
                        total = tl.full([BLOCK], HALF, dtype=tl.float32)
                        for t in tl.static_range(TAPS):
                            total += tl.load(weight_ptr + (top + y) * TAPS + t) * ring[(k + 1 + t) % TAPS]
                        value = ((tl.floor(total) + shift) - mean) * scale
                        tl.store(out + y * stride_out_h, value.to(out_ptr.dtype.element_ty), mask=in_row)
                        y += 1
                        first = tl.load(start_ptr + top + tl.minimum(y, last))


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def crop_normalize(
    images: torch.Tensor,
    boxes: torch.Tensor,
    shift: torch.Tensor,
    mean: torch.Tensor,
    scale: torch.Tensor,
    size: int,
    dtype: torch.dtype,
    memory_format: torch.memory_format,
    resize: int | None = None,
) -> torch.Tensor:
    """(M, 3, size, size) crops of uint8 images (N, S, S, 3), one per row of boxes (M, 4) int32:
    (sample, top, left, flip), of the images rescaled to resize x resize (resize <= S; None or S: as they are).
    shift (M, 3) float32 is added to the 0-255 pixels (the PCA lighting), then mean (3,) is subtracted and the
    result multiplied by scale (3,). Boxes must lie inside the (rescaled) images; the caller draws them
    (augmentation.py)."""
    if _common.INTERPRET and dtype == torch.bfloat16:
        # The interpreter does not round fp32 to bf16 as a GPU's store does (see _common): round once here.
        fp32 = crop_normalize(images, boxes, shift, mean, scale, size, torch.float32, memory_format, resize)
        return fp32.to(torch.bfloat16)
    side = images.shape[1]
    resize = side if resize is None else resize
    starts, weights = _resampling_on(images.device, side, resize)
    count = boxes.shape[0]
    out = _common.empty((count, 3, size, size), like=images, dtype=dtype, memory_format=memory_format)
    if count == 0 or size == 0:
        return out

    def grid(meta):
        return (count, _common.cdiv(size, meta["ROWS"]), _common.cdiv(3 * size, meta["BLOCK"]))

    def expect():
        table = (starts, weights) if resize != side else None
        return expected.crop_normalize(images, boxes, shift, mean, scale, size, dtype, table, results=lambda: [out])

    _common.launcher(_crop_normalize_kernel, expect)[grid](
        images, boxes, shift, mean, scale, starts, weights, out,
        size,
        images.stride(0), images.stride(1), images.stride(3),
        *out.stride(),
        PIXEL=images.stride(2),
        TAPS=weights.shape[1] if resize != side else 0,
        CHANNELS_LAST=memory_format == torch.channels_last,
    )  # fmt: skip
    return out


@functools.lru_cache(maxsize=16)
def _resampling_on(device: torch.device, source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """resampling(source, target) on device, made once per run (a copy to the GPU per batch would wait on it)."""
    starts, weights = resampling(source, target)
    return starts.to(device), weights.to(device)
