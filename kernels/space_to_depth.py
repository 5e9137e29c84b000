"""A strided convolution of few channels as a stride-1 convolution of many: the input cut into stride-sized blocks.

conv1 (11x11 taps, stride 4, 3 colours) would give each reduction block of the fast path 3 useful channels of 16 or
more; packing its (tap, channel) pairs into blocks instead costs per-element addresses (about 9 times the instructions
per product: bench/results/census-sm90.md). Cut into 4x4 blocks, the padded 228x228x3 image is 57x57x48, and the
11x11 kernel zero-padded to 12x12 is 3x3 taps of 48 channels: a stride-1 convolution of dense channels with the same
55x55 output (432 products per output for the original's 363):

    blocked[n, (dy * SW + dx) * C + c, bh, bw] = x[n, c, bh * SH + dy - PH, bw * SW + dx - PW]   (0 outside x)
    blocked_weight[co, (dy * SW + dx) * C + c, kbh, kbw] = weight[co, c, kbh * SH + dy, kbw * SW + dx]  (0 past KH, KW)

One kernel writes the blocked input in one pass (read the image once, write it once, channels_last); the weight,
small, is rearranged with PyTorch. The forward and the weight gradient (conv.py, conv_grad.py) both run on the blocked
input; a strided input gradient keeps its gather kernel.

Non-finite inputs: an inf or NaN also reaches the outputs whose padded taps (conv1's 12th row or column of a window)
cover it, as 0 x inf; F.conv2d's output there is finite.
"""

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected
from . import conv_tuning as tuning

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Blocked columns of one blocked row per program, each with all its SH*SW*C channels (48 for conv1, 64 in registers):
# a copy, bound by memory. A row per program leaves one scalar division per program (image, row) and none per element
# (a flat pixel index divided per element issued 2.4 times the instructions: bound 0.51-0.59 in bf16). One config, so
# that the first step compiles one variant: 64 columns hold conv1's 57 in one program, 592 instructions for 2,736
# elements (bf16: bound 1.00, 18.6 us of issue against 23.7 us of DRAM time at batch 128; census-sm90.md). Not yet
# measured on a GPU.
_GPU_CONFIGS = [triton.Config({"BLOCK_W": 64}, num_warps=4)]


def _interpreter_blocks(args: dict) -> dict:
    return {"BLOCK_W": _common.program_block(args["BW"], 1, 1024)}


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(_GPU_CONFIGS, ["BW", "stride_x_c", "stride_x_w"], _interpreter_blocks, checked=["out_ptr"])
@triton.jit
def _space_to_depth_kernel(
    # pointers: out is dense [N, BH, BW, SH*SW*C] (a channels_last [N, SH*SW*C, BH, BW])
    x_ptr, out_ptr,
    # sizes: the blocked rows and columns; ROWS, COLUMNS: the padded image's rows and columns any output reads
    BH, BW, H, W, ROWS, COLUMNS, PH, PW,
    # strides of x, in elements
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    # meta-parameters: the input's channels and the strides; CHANNELS_P2 >= SH * SW * C
    C: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, CHANNELS_P2: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    CHANNELS: tl.constexpr = SH * SW * C
    image_row = tl.program_id(0)  # n * BH + bh
    n, bh = image_row // BH, image_row % BH
    bw = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    # A channel's (dy, dx, c): constexpr divisors, once per channel, shared by the program's columns.
    channel = tl.arange(0, CHANNELS_P2)
    dy, dx, c = channel // (SW * C), (channel // C) % SW, channel % C
    row = bh * SH + dy  # in the padded image
    row_inside = (row >= PH) & (row < H + PH) & (row < ROWS) & (channel < CHANNELS)
    column = (bw * SW)[:, None] + dx[None, :]
    inside = row_inside[None, :] & (column >= PW) & (column < W + PW) & (column < COLUMNS)
    image = x_ptr + n.to(tl.int64) * stride_x_n
    source = image + ((row - PH) * stride_x_h + c * stride_x_c)[None, :] + (column - PW) * stride_x_w
    value = tl.load(source, mask=inside, other=0.0)
    target = out_ptr + image_row.to(tl.int64) * BW * CHANNELS + bw[:, None] * CHANNELS + channel[None, :]
    tl.store(target, value, mask=(bw < BW)[:, None] & (channel < CHANNELS)[None, :])


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def applies(C_in_g: int, stride: tuple[int, int], groups: int) -> bool:
    """Whether a convolution runs blocked: strided, of channels too narrow for a channel block (conv.py's packed taps
    otherwise), which blocks make wide enough (conv1's 3 channels at stride 4: 48). Narrow blocks (3 channels at
    stride 2: 12) and groups keep the packed taps."""
    return groups == 1 and C_in_g < tuning.PACK_CHANNELS_BELOW <= C_in_g * stride[0] * stride[1]


def blocked_size(out: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """The blocked input's height and width: a stride-1 convolution of ceil(K / S) taps over it gives `out`."""
    return tuple(o + _common.cdiv(k, s) - 1 for o, k, s in zip(out, kernel, stride, strict=True))


def space_to_depth(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], out: tuple[int, int]
) -> torch.Tensor:
    """x [N, C, H, W] (any strides) as the blocked [N, SH*SW*C, BH, BW], channels_last, for a convolution of `kernel`,
    `stride` and `padding` whose output is `out` (OH, OW): every input element a window reads, in its block, and zeros
    for the padding and for the rows and columns no window reads."""
    N, C, H, W = x.shape
    (SH, SW), (PH, PW) = stride, padding
    BH, BW = blocked_size(out, kernel, stride)
    blocked = _common.empty((N, SH * SW * C, BH, BW), like=x, memory_format=torch.channels_last)
    if blocked.numel() == 0:
        return blocked
    rows, columns = (out[0] - 1) * SH + kernel[0], (out[1] - 1) * SW + kernel[1]  # what the windows read

    def grid(meta):
        return (N * BH, _common.cdiv(BW, meta["BLOCK_W"]))

    def expect():
        return expected.space_to_depth(x, kernel, stride, padding, out, results=lambda: [blocked])

    _common.launcher(_space_to_depth_kernel, expect)[grid](
        x, blocked, BH, BW, H, W, rows, columns, PH, PW, *x.stride(),
        C=C, SH=SH, SW=SW, CHANNELS_P2=_common.next_power_of_2(SH * SW * C),
    )  # fmt: skip
    return blocked


def space_to_depth_weight(weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """weight [C_out, C, KH, KW] as [C_out, SH*SW*C, ceil(KH / SH), ceil(KW / SW)], channels_last: zero-padded to whole
    blocks and cut as space_to_depth cuts the input."""
    return expected.space_to_depth_weight(weight, stride)


def depth_to_space_weight(blocked: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """The inverse of space_to_depth_weight, its padding dropped: [C_out, SH*SW*C, KBH, KBW] -> [C_out, C, KH, KW] (a
    copy: the blocks' taps interleave). The blocked convolution's weight gradient maps back to the original's by it."""
    C_out, _, KBH, KBW = blocked.shape
    SH, SW = stride
    C = blocked.shape[1] // (SH * SW)
    taps = blocked.permute(0, 2, 3, 1).reshape(C_out, KBH, KBW, SH, SW, C).permute(0, 1, 3, 2, 4, 5)
    return taps.reshape(C_out, KBH * SH, KBW * SW, C)[:, : kernel[0], : kernel[1]].permute(0, 3, 1, 2)
