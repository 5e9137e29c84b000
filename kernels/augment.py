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

# Output elements per program for a purely bandwidth-bound kernel (one crop's 3 x 227 x 227 values is
# 154,587 of them); the usual elementwise range, up to 8 values a thread: at 16 (4096 over 8 warps) the rescaling
# variant needs 255 registers and spills 64 bytes, at 8 it needs 168-171; 4 a thread (512) keeps more warps in
# flight for its gathers (sm_90 census). Not yet measured on a GPU for this project.
_GPU_CONFIGS = [
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
]


def resampling(source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The table that rescales a side of `source` pixels to `target` (target <= source) as PyTorch's antialiased
    bilinear resize does (``F.interpolate(mode="bilinear", antialias=True)``, align_corners False): for each
    target pixel i, the first source pixel it reads, starts[i] (int32 (target,)), and its weights over that pixel
    and the next ones, weights[i] (float32 (target, taps), summing to 1, zero past the pixels it reads). The
    filter is a triangle as wide as the scale on each side of the pixel's centre, source / target * (i + 0.5)."""
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
    return starts, weights.float()


def _interpreter_blocks(args: dict) -> dict:
    return {"BLOCK": _common.program_block(3 * args["size"] * args["size"], 16, 65536)}


BOX_COLUMNS = 4  # sample index, top, left, flip (0 or 1)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _stored_pixel(image_ptr, row, column, c, side, stride_h, stride_w, stride_c, mask):
    return tl.load(
        image_ptr + row * stride_h + column * stride_w + c * stride_c, mask=mask & (row < side) & (column < side),
        other=0,
    ).to(tl.float32)


@triton.jit
def _whole_grey_level(value):
    """The nearest grey level, halves rounded up, in [0, 255]: what a uint8 resize stores."""
    return tl.minimum(tl.maximum(tl.floor(value + 0.5), 0.0), 255.0)


@autotune.tuned(_GPU_CONFIGS, ["size", "TAPS", "CHANNELS_LAST"], _interpreter_blocks, checked=["out_ptr"])
@triton.jit
def _crop_normalize_kernel(
    # pointers: images uint8 (N, S, S, 3); boxes int32 (M, 4); shift float32 (M, 3); mean, scale float32 (3,);
    # the resampling table (unused when TAPS is 0): starts int32 (R,), weights float32 (R, TAPS)
    image_ptr, box_ptr, shift_ptr, mean_ptr, scale_ptr, start_ptr, weight_ptr, out_ptr,
    # sizes: the crop's side, the stored images' side S
    size, side,
    # strides of the images (n, h, w, c) and of the output (m, c, h, w)
    stride_image_n, stride_image_h, stride_image_w, stride_image_c,
    stride_out_m, stride_out_c, stride_out_h, stride_out_w,
    # meta-parameters: TAPS, the resampling's taps per side (0: crop the stored images as they are);
    # CHANNELS_LAST walks the output in its memory order, so stores are contiguous
    TAPS: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    # Crops on grid axis 0 (up to 2**31 - 1 programs): ten-crop evaluation makes 40 crops per training image.
    crop = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < 3 * size * size
    if CHANNELS_LAST:  # (y, x, c) order
        y, x, c = offs // (3 * size), (offs // 3) % size, offs % 3
    else:  # (c, y, x) order
        c, y, x = offs // (size * size), (offs // size) % size, offs % size
    sample = tl.load(box_ptr + crop * 4).to(tl.int64)
    top = tl.load(box_ptr + crop * 4 + 1)
    left = tl.load(box_ptr + crop * 4 + 2)
    flip = tl.load(box_ptr + crop * 4 + 3)
    source_x = tl.where(flip != 0, size - 1 - x, x)
    image_ptr += sample * stride_image_n
    if TAPS == 0:
        pixel = tl.load(
            image_ptr + (top + y) * stride_image_h + (left + source_x) * stride_image_w + c * stride_image_c,
            mask=mask,
        ).to(tl.float32)
    else:  # the rescaled image's pixel (top + y, left + x'), made from the stored pixels under its filter
        row_start = tl.load(start_ptr + top + y, mask=mask, other=0)
        column_start = tl.load(start_ptr + left + source_x, mask=mask, other=0)
        row_weights = weight_ptr + (top + y) * TAPS
        column_weights = weight_ptr + (left + source_x) * TAPS
        pixel = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.range(TAPS):
            along_row = tl.zeros([BLOCK], dtype=tl.float32)
            for j in tl.range(TAPS):
                stored = _stored_pixel(image_ptr, row_start + i, column_start + j, c, side, stride_image_h,
                                       stride_image_w, stride_image_c, mask)  # fmt: skip
                along_row += tl.load(column_weights + j, mask=mask, other=0.0) * stored
            pixel += tl.load(row_weights + i, mask=mask, other=0.0) * _whole_grey_level(along_row)
        pixel = _whole_grey_level(pixel)
    shift = tl.load(shift_ptr + crop * 3 + c, mask=mask)
    mean = tl.load(mean_ptr + c, mask=mask)
    scale = tl.load(scale_ptr + c, mask=mask)
    value = ((pixel + shift) - mean) * scale  # the CPU transform's order of operations
    out = out_ptr + crop * stride_out_m + c * stride_out_c + y * stride_out_h + x * stride_out_w
    tl.store(out, value.to(out_ptr.dtype.element_ty), mask=mask)


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
        return (count, _common.cdiv(3 * size * size, meta["BLOCK"]))

    def expect():
        table = (starts, weights) if resize != side else None
        return expected.crop_normalize(images, boxes, shift, mean, scale, size, dtype, table, results=lambda: [out])

    _common.launcher(_crop_normalize_kernel, expect)[grid](
        images, boxes, shift, mean, scale, starts, weights, out,
        size, side,
        *images.stride(),
        *out.stride(),
        TAPS=weights.shape[1] if resize != side else 0,
        CHANNELS_LAST=memory_format == torch.channels_last,
    )  # fmt: skip
    return out


@functools.lru_cache(maxsize=16)
def _resampling_on(device: torch.device, source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """resampling(source, target) on device, made once per run (a copy to the GPU per batch would wait on it)."""
    starts, weights = resampling(source, target)
    return starts.to(device), weights.to(device)
