"""The input augmentation in one pass on the GPU: crop, flip, lighting shift and normalisation of uint8
images, written straight into the training dtype and memory format (sections 2 and 4.1).

    out[m, c, y, x] = ((image[n, top + y, left + x', c] + shift[m, c]) - mean[c]) * scale[c]
    with n, top, left, flip = boxes[m] and x' = size - 1 - x if flip else x

One box per output crop, so the training crops (a random box and flip per image), the evaluation
centre crop and the ten crops (five boxes, each with and without the flip) are all this kernel. The
random draws stay on the CPU (data.py), so a run draws the same numbers whichever path it takes; the
workers ship 1-byte pixels instead of 4-byte floats, and the float crops exist only in GPU memory.
"""

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Output elements per program for a purely bandwidth-bound kernel (one crop's 3 x 227 x 227 values is
# 154,587 of them); the usual elementwise range. Not yet measured on a GPU for this project.
_GPU_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 4096}, num_warps=8),
]


def _interpreter_blocks(args: dict) -> dict:
    return {"BLOCK": _common.program_block(3 * args["size"] * args["size"], 16, 65536)}


BOX_COLUMNS = 4  # sample index, top, left, flip (0 or 1)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(_GPU_CONFIGS, ["size", "CHANNELS_LAST"], _interpreter_blocks, checked=["out_ptr"])
@triton.jit
def _crop_normalize_kernel(
    # pointers: images uint8 (N, S, S, 3); boxes int32 (M, 4); shift float32 (M, 3); mean, scale float32 (3,)
    image_ptr, box_ptr, shift_ptr, mean_ptr, scale_ptr, out_ptr,
    # sizes: the crop's side
    size,
    # strides of the images (n, h, w, c) and of the output (m, c, h, w)
    stride_image_n, stride_image_h, stride_image_w, stride_image_c,
    stride_out_m, stride_out_c, stride_out_h, stride_out_w,
    # meta-parameters: CHANNELS_LAST walks the output in its memory order, so stores are contiguous
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
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
    pixel = tl.load(
        image_ptr + sample * stride_image_n + (top + y) * stride_image_h + (left + source_x) * stride_image_w
        + c * stride_image_c,
        mask=mask,
    )
    shift = tl.load(shift_ptr + crop * 3 + c, mask=mask)
    mean = tl.load(mean_ptr + c, mask=mask)
    scale = tl.load(scale_ptr + c, mask=mask)
    value = ((pixel.to(tl.float32) + shift) - mean) * scale  # the CPU transform's order of operations
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
) -> torch.Tensor:
    """(M, 3, size, size) crops of uint8 images (N, S, S, 3), one per row of boxes (M, 4) int32:
    (sample, top, left, flip). shift (M, 3) float32 is added to the 0-255 pixels (the PCA lighting),
    then mean (3,) is subtracted and the result multiplied by scale (3,). Boxes must lie inside the
    images; the caller draws them (data.py)."""
    if _common.INTERPRET and dtype == torch.bfloat16:
        # The interpreter does not round fp32 to bf16 as a GPU's store does (see _common): round once here.
        fp32 = crop_normalize(images, boxes, shift, mean, scale, size, torch.float32, memory_format)
        return fp32.to(torch.bfloat16)
    count = boxes.shape[0]
    out = _common.empty((count, 3, size, size), like=images, dtype=dtype, memory_format=memory_format)
    if count == 0 or size == 0:
        return out

    def grid(meta):
        return (count, triton.cdiv(3 * size * size, meta["BLOCK"]))

    def expect():
        return expected.crop_normalize(images, boxes, shift, mean, scale, size, dtype, results=lambda: [out])

    _common.launcher(_crop_normalize_kernel, expect)[grid](
        images, boxes, shift, mean, scale, out,
        size,
        *images.stride(),
        *out.stride(),
        CHANNELS_LAST=memory_format == torch.channels_last,
    )  # fmt: skip
    return out
