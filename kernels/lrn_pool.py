"""Cross-channel LRN followed by a 2-D max-pool, fused: one kernel each way.

Equal to ``F.max_pool2d(F.local_response_norm(x, size, alpha, beta, k), kernel, stride, padding)``, with the
rules of kernels/lrn.py (PyTorch's LRN: alpha divided by size) and kernels/pool.py (floor mode, padding never
wins, NaN wins, ties go to the first maximum in row-major order, 1-byte window positions for backward).

Both kernels are built so that an H100 issues few instructions per byte they move (bench/memory_model.py models
it from their SASS): each input element's LRN is computed once or nearly, from registers, and channels travel
as vectors.

Channel groups. A thread holds VEC consecutive channels of a pixel (8 bf16: one 128-bit load in channels_last),
split into VEC registers (tl.reshape and tl.split within the thread: no data moves), plus the group's halo: the
SIZE // 2 channels before it and the (SIZE - 1) // 2 after it, one more vector load each side where that count
is a power of 2 (32-bit loads for SIZE 5 in bf16; cache hits). A channel's window sum is then a few adds of
squares held in registers, a pair of neighbouring squares shared by two windows. NCHW works through the
strides with groups of one channel (its channels load one by one anyway): its halo is loaded for every channel.

Forward: a thread owns a pair of neighbouring output columns of a band of output rows, for one channel group.
It walks the band's rows (a loop); for each input row a window needs it computes the LRN of the SW + KW input
columns the pair's two windows span, once each, and takes the row's maximum for each window, then the maximum
down the window's rows. Row SH of a window is row 0 of the next window down (3x3 / stride 2: one row in
three), so that row's maxima are carried to the next trip rather than computed again. Recomputed per input
element: the halo (SIZE - 1 channels per VEC), the column the two windows of the next pair share (one in
2 * SW + 1), and row 0 of each band's first windows. Only the pooled output and the positions are written:
the LRN map never reaches memory. The maximum is taken along each row, then down the rows: the rule gives the
choice one scan in row-major order would (the last NaN, else the first maximum; taps in the padding skipped).

Backward, per input pixel, with t[c] = g[c] * x[c] * scale[c]^(-beta-1):

    g[c]  = sum of the pooled gradients of the windows whose maximum (channel c) is this pixel
    dx[i] = g[i] * scale[i]^-beta  -  2 * alpha * beta / size * x[i] * sum_{c = i - hi .. i + lo} t[c]

A thread owns a block of SH x SW input pixels (the first SH rows and SW columns of a window) for one channel
group: it loads the pooled gradient and the saved position of each window that contains a pixel of the block
(2 x 2 for 3x3 / stride 2) once, for the group and the halo its t needs, gives each pixel what its windows
chose it for, and recomputes the scale from x (the group and twice the halo). Recomputed: the halos. So only
the input and the 1-byte positions are saved, every dx element is written once, without atomics, and the
result is deterministic.

The log2 of the scale compiles to the GPU's approximate log2 (MUFU.LG2: one instruction, absolute error about
2^-22, which moves scale^-beta by about 1e-7 relative, far below fp32's rounding of the output) instead of
libdevice's exact one (about 25 instructions, which took most of the issue); the interpreter, which cannot call
libdevice, computes it exactly, and fp64 too.

Traffic per call (N C H W input, N C OH OW output, element size e): forward reads NCHW e and writes
NC OH OW (e + 1); backward reads NC OH OW (e + 1) and NCHW e and writes NCHW e. The two separate ops
also write and read back the full-size LRN map, and its gradient. Modeled at AlexNet's shapes (per tower, batch
128, channels_last, bf16; `python -m bench.census --memory`), conv1 / conv2: the forward issues 17.4 / 10.8 us
against 15.1 / 9.6 us of DRAM traffic (bound 0.87 / 0.89; recomputing each tap's LRN issued about 140 / 85 us,
0.11), the backward 29.6 / 19.7 us against 26.2 / 16.7 us (bound 0.89 / 0.85; the per-pixel channel walk with its
register rings issued about 135 / 81 us, 0.19 / 0.21). Static figures: nothing here ran on a GPU.
"""

import torch
import triton
import triton.language as tl

from . import _common, autotune, expected
from .lrn import _log2, fast_log2

# ---------------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------------

# Forward tiles: BLOCK_P thread items (a pair of output columns of a band of rows) x BLOCK_G channel groups, one
# item-group per thread (BLOCK_P x BLOCK_G = 32 x warps). `python -m bench.census --memory` (AlexNet per tower at
# batch 128, channels_last, sm_90 compiles): in bf16 a band-row trip is 1,650 instructions (a thread's 80 LRN values
# and 2 x 8 pooled outputs), 140 registers, no spills, 128-bit loads of x and 128 / 64-bit stores of the output and
# the positions; modeled bound 0.87 at conv1 and 0.89 at conv2 (fp32 1.00), alike in the three configs (2 warps:
# twice the programs, 336 at conv1, for balance across 132 SMs). 32 x 4 is left out: conv1's 48 channels make 6
# groups, a block of 4 idles a quarter (bound 0.65).
_FWD_GPU_CONFIGS = [
    triton.Config({"BLOCK_P": 64, "BLOCK_G": 2}, num_warps=4),
    triton.Config({"BLOCK_P": 128, "BLOCK_G": 1}, num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_G": 2}, num_warps=2),
]

# Backward tiles: BLOCK_P blocks of SH x SW input pixels x BLOCK_G channel groups, one per thread. The census: in
# bf16 1,456 instructions a program (a thread's 2 x 2 pixels x 8 channels), 127 registers, no spills, 128-bit loads
# of x and the gradient, 64-bit of the positions, 128-bit stores; modeled bound 0.89 at conv1 and 0.85 at conv2
# (fp32 1.00), alike in the three configs.
_BWD_GPU_CONFIGS = [
    triton.Config({"BLOCK_P": 64, "BLOCK_G": 2}, num_warps=4),
    triton.Config({"BLOCK_P": 128, "BLOCK_G": 1}, num_warps=4),
    triton.Config({"BLOCK_P": 32, "BLOCK_G": 2}, num_warps=2),
]

# Channels per thread where channels are contiguous (channels_last): 16 bytes (one 128-bit load) of bf16 / fp16.
# fp32 takes the same 8 channels in two loads: a 4-channel group would compute a halo as wide as itself. fp64
# (tests, gradcheck) two: at four, sm_90 compiles need 210-245 registers and shared memory for layout
# conversions; at two, 136-159 and none. Other layouts (NCHW) one: their channels load one by one anyway, and
# a group of 8 then takes shared-memory layout conversions and spills (255 registers in bf16 on sm_90).
_VEC = {torch.float16: 8, torch.bfloat16: 8, torch.float32: 8, torch.float64: 2}


def _channels_per_thread(x: torch.Tensor) -> int:
    return _VEC[x.dtype] if x.stride(1) == 1 else 1

# Output rows per forward band, at most: each band computes one input row more than its windows own (row 0 of its
# first windows), and equal bands of at most this many rows pad the last few. AlexNet's 27 and 13 rows make 2 bands
# of 14 and one of 13: modeled bf16 bound 0.87 / 0.89, where bands of at most 8 (4 of 7, 2 of 7) gave 0.80 / 0.77.
_BAND_ROWS = 14


def _interpreter_fwd_blocks(args: dict) -> dict:
    """Under the interpreter: all items and channels in as few programs as possible (each program's cost is
    a few hundred numpy calls per row, whatever its size); under TEST_TILES three programs or more each way."""
    groups = _common.cdiv(args["C"], args["VEC"])
    return {
        "BLOCK_P": _common.program_block(args["ITEMS"], 1, 1024),
        "BLOCK_G": _common.program_block(groups, 1, 64),
    }


def _interpreter_bwd_blocks(args: dict) -> dict:
    groups = _common.cdiv(args["C"], args["VEC"])
    return {
        "BLOCK_P": _common.program_block(args["ITEMS"], 1, 1024),
        "BLOCK_G": _common.program_block(groups, 1, 64),
    }


# A window position fits in one byte up to this many elements per window (as in kernels/pool.py).
_MAX_UINT8_WINDOW = 256


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _unpack(t, P: tl.constexpr, G: tl.constexpr, N: tl.constexpr):
    """[P, G, N] -> a tuple of N tensors [P, G] in channel order (N a power of 2; within each thread's
    registers: no data moves)."""
    if N == 1:
        return (tl.reshape(t, (P, G)),)
    else:
        even, odd = tl.split(tl.reshape(t, (P, G, N // 2, 2)))
        e = _unpack(even, P, G, N // 2)
        o = _unpack(odd, P, G, N // 2)
        out = ()
        for i in tl.static_range(N // 2):
            out = out + (e[i], o[i])
        return out


@triton.jit
def _pack(values, P: tl.constexpr, G: tl.constexpr, N: tl.constexpr):
    """A tuple of N tensors [P, G] -> [P, G, N] in order: the inverse of _unpack."""
    if N == 1:
        return tl.reshape(values[0], (P, G, 1))
    else:
        evens = ()
        odds = ()
        for i in tl.static_range(N // 2):
            evens = evens + (values[2 * i],)
            odds = odds + (values[2 * i + 1],)
        return tl.reshape(tl.join(_pack(evens, P, G, N // 2), _pack(odds, P, G, N // 2)), (P, G, N))


@triton.jit
def _halo(pix, ok, first, C, stride_c, N: tl.constexpr, P: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr,
          ACC: tl.constexpr, OTHER: tl.constexpr):
    """Channels first .. first + N - 1 (first: [1, G]) as a tuple of [P, G]: one vector load where N is a power of 2
    that divides VEC (then aligned as the group is: 32 bits for SIZE 5 in bf16), else one load a channel."""
    values = ()
    if N > 0 and N <= VEC and (N & (N - 1)) == 0:
        channel = first[:, :, None] + tl.arange(0, N)[None, None, :]
        in_range = (channel >= 0) & (channel < C)  # a group past C (the tile's last) has its halo past C too
        halo = tl.load(pix[:, :, None] + channel * stride_c, mask=ok[:, :, None] & in_range, other=OTHER)
        values = _unpack(halo.to(ACC), P, G, N)
    else:
        for d in tl.static_range(N):
            channel = first + d
            in_range = (channel >= 0) & (channel < C)
            values = values + (tl.load(pix + channel * stride_c, mask=ok & in_range, other=OTHER).to(ACC),)
    return values


@triton.jit
def _channels(pix, ok, cg, C, stride_c, LEFT: tl.constexpr, RIGHT: tl.constexpr,
              P: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr, ACC: tl.constexpr, OTHER: tl.constexpr):
    """Channels cg - LEFT .. cg + VEC + RIGHT - 1 of each item's pixel (pix: [P, 1] pointers to channel 0, ok:
    [P, 1]; cg: [1, G], each group's first channel) as a tuple of [P, G] in ACC: the group in one vector load,
    the halo on each side in another (or one a channel). Channels outside [0, C) read as OTHER."""
    c = cg[:, :, None] + tl.arange(0, VEC)[None, None, :]
    group = tl.load(pix[:, :, None] + c * stride_c, mask=ok[:, :, None] & (c < C), other=OTHER)
    values = _halo(pix, ok, cg - LEFT, C, stride_c, LEFT, P, G, VEC, ACC, OTHER)
    values = values + _unpack(group.to(ACC), P, G, VEC)
    return values + _halo(pix, ok, cg + VEC, C, stride_c, RIGHT, P, G, VEC, ACC, OTHER)


@triton.jit
def _window_sums(squares, N: tl.constexpr, SIZE: tl.constexpr):
    """sums[i] = squares[i] + ... + squares[i + SIZE - 1] for i < N: the first square, then pairs of
    neighbours (squares[j] + squares[j + 1], the same expression for the windows starting at j - 1 and j - 3,
    which the compiler computes once), then a last single where SIZE is even."""
    sums = ()
    for i in tl.static_range(N):
        s = squares[i]
        for p in tl.static_range(SIZE // 2):
            if 2 * p + 2 < SIZE:
                s += squares[i + 2 * p + 1] + squares[i + 2 * p + 2]
            else:
                s += squares[i + 2 * p + 1]
        sums = sums + (s,)
    return sums


@triton.jit
def _lrn_group(pix, ok, cg, C, stride_c, alpha_over_size, beta, k,
               SIZE: tl.constexpr, P: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr,
               ACC: tl.constexpr, OUT: tl.constexpr, FAST: tl.constexpr):
    """LRN at one pixel of each item of the VEC channels from cg (as _channels), rounded to OUT (the separate
    ops compare rounded values): [P, G, VEC] in ACC."""
    LO: tl.constexpr = SIZE // 2
    HI: tl.constexpr = (SIZE - 1) // 2
    x = _channels(pix, ok, cg, C, stride_c, LO, HI, P, G, VEC, ACC, 0.0)
    squares = ()
    for i in tl.static_range(VEC + SIZE - 1):
        squares = squares + (x[i] * x[i],)
    sums = _window_sums(squares, VEC, SIZE)
    out = ()
    for v in tl.static_range(VEC):
        y = x[v + LO] * tl.exp2(-beta * _log2(k + alpha_over_size * sums[v], FAST))
        out = out + (y.to(OUT).to(ACC),)
    return _pack(out, P, G, VEC)


@triton.jit
def _take(v, best, found, inside):
    """kernels/pool.py's rule: a larger value or a NaN replaces; the first tap inside the image is the default,
    so padding never wins."""
    return inside & ((v > best) | (v != v) | (found == 0))


@triton.jit
def _row_max(x_row, ok_row, iw0, W, cg, C, stride_x_c, stride_x_w, alpha_over_size, beta, k,
             SIZE: tl.constexpr, KW: tl.constexpr, SW: tl.constexpr, PW: tl.constexpr,
             P: tl.constexpr, G: tl.constexpr, VEC: tl.constexpr,
             ACC: tl.constexpr, OUT: tl.constexpr, FAST: tl.constexpr):
    """The maximum over one input row (x_row: [P, 1] pointers, ok_row: [P, 1]) of each item's two windows,
    whose columns start at iw0 and iw0 + SW: (value, kw) of each, [P, G, VEC]. Each of the SW + KW columns'
    LRN is computed once, the windows' taps visited in order."""
    v0 = tl.zeros((P, G, VEC), ACC)
    v1 = tl.zeros((P, G, VEC), ACC)
    p0 = tl.zeros((P, G, VEC), tl.int32)
    p1 = tl.zeros((P, G, VEC), tl.int32)
    # Whether a tap inside the image was seen. Without padding every tap of a window is (windows past the
    # output are never stored): the tests below fold away.
    f0 = tl.full((P, 1, 1), PW == 0, tl.int1)
    f1 = tl.full((P, 1, 1), PW == 0, tl.int1)
    for j in tl.static_range(SW + KW):
        iw = iw0 + j
        inside = (iw >= 0) & (iw < W)
        y = _lrn_group(x_row + iw * stride_x_w, ok_row & inside, cg, C, stride_x_c, alpha_over_size, beta, k,
                       SIZE, P, G, VEC, ACC, OUT, FAST)
        inside = inside[:, :, None] | (PW == 0)
        if j < KW:
            if PW == 0 and j == 0:
                v0 = y
            else:
                t = _take(y, v0, f0, inside)
                v0 = tl.where(t, y, v0)
                p0 = tl.where(t, j, p0)
                f0 = f0 | inside
        if j >= SW:
            if PW == 0 and j == SW:
                v1 = y
            else:
                t = _take(y, v1, f1, inside)
                v1 = tl.where(t, y, v1)
                p1 = tl.where(t, j - SW, p1)
                f1 = f1 | inside
    return v0, p0, v1, p1


@triton.jit
def _down(best, best_pos, found, v, kw, kh, inside, KW: tl.constexpr):
    """One more window row (its maximum v at column kw) into the running maximum, rows in order."""
    t = _take(v, best, found, inside)
    return tl.where(t, v, best), tl.where(t, kh * KW + kw, best_pos), found | inside


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@autotune.tuned(
    _FWD_GPU_CONFIGS,
    ["C", "ITEMS", "ROWS", "SIZE", "KH", "KW", "stride_x_c", "VEC"],
    _interpreter_fwd_blocks,
    checked=["out_ptr", "pos_ptr"],
)
@triton.jit
def _lrn_max_pool_fwd_kernel(
    # pointers
    x_ptr, out_ptr, pos_ptr,
    # sizes: C channels; ITEMS = N * BANDS * PAIRS thread items, each a pair of output columns of a band of
    # ROWS output rows
    C, ITEMS, H, W, OH, OW, ROWS, BANDS, PAIRS,
    # strides (pos shares out's)
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_out_n, stride_out_c, stride_out_h, stride_out_w,
    # LRN parameters
    alpha_over_size, beta, k,
    # meta-parameters: the LRN window, the pool window, channels per thread, the tile, the log2
    SIZE: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, FAST_LOG2: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    OUT: tl.constexpr = out_ptr.dtype.element_ty
    P: tl.constexpr = BLOCK_P
    G: tl.constexpr = BLOCK_G
    CARRY: tl.constexpr = KH > SH  # row SH of a window is row 0 of the next one down
    item = tl.program_id(0) * P + tl.arange(0, P)[:, None]  # [P, 1]; neighbouring items: neighbouring pairs
    ok_item = item < ITEMS
    ow0 = (item % PAIRS) * 2
    oh0 = (item // PAIRS) % BANDS * ROWS
    n = (item // (PAIRS * BANDS)).to(tl.int64)
    cg = tl.program_id(1) * (G * VEC) + tl.arange(0, G)[None, :] * VEC  # [1, G]: each group's first channel
    c = cg[:, :, None] + tl.arange(0, VEC)[None, None, :]
    x_img = x_ptr + n * stride_x_n
    o_pair = n[:, :, None] * stride_out_n + c * stride_out_c + ow0[:, :, None] * stride_out_w
    iw0 = ow0 * SW - PW

    if CARRY:  # row 0 of the band's first windows
        ih = oh0 * SH - PH
        carried_in = (ih >= 0) & (ih < H)
        cv0, cp0, cv1, cp1 = _row_max(x_img + ih * stride_x_h, ok_item & carried_in, iw0, W, cg, C, stride_x_c,
                                      stride_x_w, alpha_over_size, beta, k, SIZE, KW, SW, PW, P, G, VEC, ACC, OUT,
                                      FAST_LOG2)
    for r in range(ROWS):
        oh = oh0 + r
        ok = ok_item & (oh < OH)
        b0 = tl.zeros((P, G, VEC), ACC)
        b1 = tl.zeros((P, G, VEC), ACC)
        q0 = tl.zeros((P, G, VEC), tl.int32)
        q1 = tl.zeros((P, G, VEC), tl.int32)
        f0 = tl.full((P, 1, 1), PH == 0, tl.int1)  # as in _row_max
        f1 = tl.full((P, 1, 1), PH == 0, tl.int1)
        for kh in tl.static_range(KH):
            ih = oh * SH - PH + kh
            row_in = (ih >= 0) & (ih < H)
            if CARRY and kh == 0:
                v0, p0, v1, p1 = cv0, cp0, cv1, cp1
                row_in = carried_in
            else:
                v0, p0, v1, p1 = _row_max(x_img + ih * stride_x_h, ok & row_in, iw0, W, cg, C, stride_x_c,
                                          stride_x_w, alpha_over_size, beta, k, SIZE, KW, SW, PW, P, G, VEC, ACC,
                                          OUT, FAST_LOG2)
            if CARRY and kh == SH:
                cv0, cp0, cv1, cp1 = v0, p0, v1, p1
                carried_in = row_in
            if PH == 0 and kh == 0:
                b0, q0, b1, q1 = v0, p0, v1, p1
            else:
                inside = row_in[:, :, None] | (PH == 0)
                b0, q0, f0 = _down(b0, q0, f0, v0, p0, kh, inside, KW)
                b1, q1, f1 = _down(b1, q1, f1, v1, p1, kh, inside, KW)
        offs = o_pair + oh[:, :, None] * stride_out_h
        ok = ok[:, :, None] & (c < C)
        tl.store(out_ptr + offs, b0.to(OUT), mask=ok)
        tl.store(pos_ptr + offs, q0.to(pos_ptr.dtype.element_ty), mask=ok)
        ok = ok & (ow0[:, :, None] + 1 < OW)
        tl.store(out_ptr + offs + stride_out_w, b1.to(OUT), mask=ok)
        tl.store(pos_ptr + offs + stride_out_w, q1.to(pos_ptr.dtype.element_ty), mask=ok)


@autotune.tuned(
    _BWD_GPU_CONFIGS,
    ["C", "ITEMS", "SIZE", "KH", "KW", "stride_x_c", "VEC"],
    _interpreter_bwd_blocks,
    checked=["dx_ptr"],
)
@triton.jit
def _lrn_max_pool_bwd_kernel(
    # pointers
    x_ptr, grad_ptr, pos_ptr, dx_ptr,
    # sizes: C channels; ITEMS = N * BH * BW thread items, each a block of SH x SW input pixels (block (a, b):
    # the first SH rows and SW columns of window (a, b))
    C, ITEMS, H, W, OH, OW, BH, BW,
    # strides
    stride_x_n, stride_x_c, stride_x_h, stride_x_w,
    stride_grad_n, stride_grad_c, stride_grad_h, stride_grad_w,
    stride_pos_n, stride_pos_c, stride_pos_h, stride_pos_w,
    stride_dx_n, stride_dx_c, stride_dx_h, stride_dx_w,
    # LRN parameters
    alpha_over_size, beta, k, two_alpha_beta_over_size,
    # meta-parameters: the LRN window, the pool window, channels per thread, the tile, the log2; VANISHING_SCALE:
    # k <= 0, so a channel past the edges (x and g 0 there) may have a scale of 0 or below, whose 0 x inf or NaN must
    # not reach its neighbours (with k > 0, AlexNet's, it cannot: no mask)
    SIZE: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    VEC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr, FAST_LOG2: tl.constexpr,
    VANISHING_SCALE: tl.constexpr,
):
    ACC: tl.constexpr = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    P: tl.constexpr = BLOCK_P
    G: tl.constexpr = BLOCK_G
    LO: tl.constexpr = SIZE // 2
    HI: tl.constexpr = (SIZE - 1) // 2
    T: tl.constexpr = VEC + SIZE - 1  # channels with a t[c] the group's dx needs: cg - HI .. cg + VEC + LO - 1
    DH: tl.constexpr = (KH + SH - 1) // SH  # windows a pixel can lie in, each way
    DW: tl.constexpr = (KW + SW - 1) // SW
    item = tl.program_id(0) * P + tl.arange(0, P)[:, None]  # [P, 1]
    ok_item = item < ITEMS
    b = item % BW
    a = (item // BW) % BH
    n = (item // (BW * BH)).to(tl.int64)
    cg = tl.program_id(1) * (G * VEC) + tl.arange(0, G)[None, :] * VEC  # [1, G]
    c = cg[:, :, None] + tl.arange(0, VEC)[None, None, :]

    # The windows (a - d, b - e) that contain a pixel of the block: gradient and position of channels
    # cg - HI .. cg + VEC + LO - 1, once each. Outside the output or the channels both read as 0: a zero
    # gradient, whichever tap the position names.
    grads = ()
    positions = ()
    for d in tl.static_range(DH):
        for e in tl.static_range(DW):
            oh = a - d
            ow = b - e
            ok = ok_item & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
            g_win = grad_ptr + n * stride_grad_n + oh * stride_grad_h + ow * stride_grad_w
            p_win = pos_ptr + n * stride_pos_n + oh * stride_pos_h + ow * stride_pos_w
            grads = grads + (_channels(g_win, ok, cg, C, stride_grad_c, HI, LO, P, G, VEC, ACC, 0.0),)
            positions = positions + (_channels(p_win, ok, cg, C, stride_pos_c, HI, LO, P, G, VEC, tl.int32, 0),)

    for i in tl.static_range(SH):
        for j in tl.static_range(SW):
            ih = a * SH - PH + i
            iw = b * SW - PW + j
            ok = ok_item & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            # g: what the windows chose this pixel for (tap (i + d * SH, j + e * SW) of window (a - d, b - e))
            g = ()
            for t in tl.static_range(T):
                g_t = tl.zeros((P, G), ACC)  # a pixel in no window (a stride past the window) gets none
                first = True  # the first window's term starts the sum: no add
                for d in tl.static_range(DH):
                    for e in tl.static_range(DW):
                        if i + d * SH < KH and j + e * SW < KW:
                            tap = (i + d * SH) * KW + j + e * SW
                            chosen = positions[d * DW + e][t] == tap
                            grad = grads[d * DW + e][t]
                            g_t = tl.where(chosen, grad, 0.0) if first else tl.where(chosen, g_t + grad, g_t)
                            first = False
                g = g + (g_t,)
            # the scale of channels cg - HI .. cg + VEC + LO - 1, from x two halos wide
            pix = x_ptr + n * stride_x_n + ih * stride_x_h + iw * stride_x_w
            x = _channels(pix, ok, cg, C, stride_x_c, HI + LO, LO + HI, P, G, VEC, ACC, 0.0)
            squares = ()
            for u in tl.static_range(VEC + 2 * (SIZE - 1)):
                squares = squares + (x[u] * x[u],)
            sums = _window_sums(squares, T, SIZE)
            ratios = ()  # t[c] = g x scale^(-beta-1)
            direct = ()  # g scale^-beta = g scale^(-beta-1) scale, for the group's own channels
            for t in tl.static_range(T):
                scale = k + alpha_over_size * sums[t]
                g_power = g[t] * tl.exp2((-beta - 1.0) * _log2(scale, FAST_LOG2))
                ratio = g_power * x[t + LO]
                if VANISHING_SCALE:  # 0 outside the channels, where g and x are 0 and the scale k may be 0 or below
                    ratio = tl.where((cg - HI + t < 0) | (cg - HI + t >= C), 0.0, ratio)
                ratios = ratios + (ratio,)
                if t >= HI and t < HI + VEC:
                    direct = direct + (g_power * scale,)
            dx = ()
            ratio_sums = _window_sums(ratios, VEC, SIZE)  # channel v: t[v - HI .. v + LO] = ratios[v .. v + SIZE - 1]
            for v in tl.static_range(VEC):
                dx = dx + (direct[v] - two_alpha_beta_over_size * x[v + HI + LO] * ratio_sums[v],)
            d_pix = n * stride_dx_n + ih * stride_dx_h + iw * stride_dx_w
            tl.store(
                dx_ptr + d_pix[:, :, None] + c * stride_dx_c,
                _pack(dx, P, G, VEC).to(dx_ptr.dtype.element_ty),
                mask=ok[:, :, None] & (c < C),
            )


# ---------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------


def _window_meta(kernel, stride, padding) -> dict:
    return {"KH": kernel[0], "KW": kernel[1], "SH": stride[0], "SW": stride[1], "PH": padding[0], "PW": padding[1]}


def _band_rows(OH: int) -> int:
    """Output rows per forward band: bands of equal length, at most _BAND_ROWS rows (under TEST_TILES two, so
    that the row loop takes several trips and the items span several bands)."""
    most = 2 if _common.TEST_TILES else _BAND_ROWS
    return _common.cdiv(OH, _common.cdiv(OH, most))


@_common.bf16_in_fp32_under_interpreter
def lrn_max_pool_forward(
    x: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled LRN, window position of each maximum) for a 4-D x of any strides; outputs in x's layout."""
    N, C, H, W = x.shape
    OH = _common.output_size(H, kernel[0], stride[0], padding[0])
    OW = _common.output_size(W, kernel[1], stride[1], padding[1])
    memory_format = _common.suggest_memory_format(x)
    pos_dtype = torch.uint8 if kernel[0] * kernel[1] <= _MAX_UINT8_WINDOW else torch.int32
    out = _common.empty((N, C, OH, OW), like=x, memory_format=memory_format)
    pos = _common.empty((N, C, OH, OW), like=x, dtype=pos_dtype, memory_format=memory_format)
    if out.numel() == 0:
        return out, pos
    rows = _band_rows(OH)
    bands, pairs = _common.cdiv(OH, rows), _common.cdiv(OW, 2)
    vec = _channels_per_thread(x)

    def grid(meta):
        return (_common.cdiv(N * bands * pairs, meta["BLOCK_P"]), _common.cdiv(C, meta["BLOCK_G"] * vec))

    def expect():
        return expected.lrn_max_pool(x, size, alpha, beta, k, kernel, stride, padding, results=lambda: [out, pos])

    _common.launcher(_lrn_max_pool_fwd_kernel, expect)[grid](
        x, out, pos,
        C, N * bands * pairs, H, W, OH, OW, rows, bands, pairs,
        *x.stride(), *out.stride(),
        alpha / size, beta, k,
        SIZE=size, **_window_meta(kernel, stride, padding), VEC=vec, FAST_LOG2=fast_log2(x),
    )
    return out, pos


@_common.bf16_in_fp32_under_interpreter
def lrn_max_pool_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    pos: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> torch.Tensor:
    """Gradient of lrn_max_pool_forward with respect to x, in x's layout: the pooled gradient gathered
    through the saved positions, through LRN's backward (the scale recomputed from x)."""
    N, C, H, W = x.shape
    OH, OW = pos.shape[2], pos.shape[3]
    dx = _common.empty(x.shape, like=x, memory_format=_common.suggest_memory_format(x))
    if dx.numel() == 0:
        return dx
    # Blocks of SH x SW pixels, block (a, b) starting at window (a, b)'s first pixel: enough to cover the input.
    bh = _common.cdiv(H + padding[0], stride[0])
    bw = _common.cdiv(W + padding[1], stride[1])
    vec = _channels_per_thread(x)

    def grid(meta):
        return (_common.cdiv(N * bh * bw, meta["BLOCK_P"]), _common.cdiv(C, meta["BLOCK_G"] * vec))

    def expect():
        return expected.lrn_max_pool_grad(
            x, grad_out, pos, size, alpha, beta, k, kernel, stride, padding, results=lambda: [dx]
        )

    _common.launcher(_lrn_max_pool_bwd_kernel, expect)[grid](
        x, grad_out, pos, dx,
        C, N * bh * bw, H, W, OH, OW, bh, bw,
        *x.stride(), *grad_out.stride(), *pos.stride(), *dx.stride(),
        alpha / size, beta, k, 2.0 * alpha * beta / size,
        SIZE=size, **_window_meta(kernel, stride, padding), VEC=vec, FAST_LOG2=fast_log2(x),
        VANISHING_SCALE=k <= 0,
    )
    return dx
