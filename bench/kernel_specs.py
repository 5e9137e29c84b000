"""How each of this project's Triton kernels is compiled offline for an H100: in each dtype it takes, with its
GPU autotuning configs and the constexpr variants the launchers use (TF32 on and off, AlexNet's LRN window and
pools, from `alexnet_triton.model`).

    results = compile_specs(SPECS, folder)   # kernel name -> one result per case: the case, then its
                                             # error or registers, spills, shared memory, cubin path

Argument types come from the kernels' own Python signatures, so a renamed argument needs no change here unless
it is one of a spec's `pointers`, `floats` or `divisible`. A stride a variant sets to 1 is compiled as the constant
Triton makes of it at run time (the conv kernels' channels_last fast path), and the arguments in `divisible` carry
the multiple-of-16 hint Triton gives such values at run time (AlexNet's channel counts), so the code compiled here
is the code a GPU runs on AlexNet's shapes. Arguments a kernel's `@triton.jit(do_not_specialize=...)` names (the
batch's pixel counts) get neither at run time, and a spec that fixes or hints one is refused.
"""

import dataclasses
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl
from alexnet_triton.kernels import (
    _common,
    augment,
    conv,
    conv_grad,
    conv_tuning,
    dropout,
    lrn,
    lrn_pool,
    pool,
    space_to_depth,
)
from triton.runtime.interpreter import InterpretedFunction

from alexnet_triton.model import OVERLAPPING_POOL, PAPER_LRN
from bench.offline_compile import compile_jobs

TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
DTYPES = [TRITON_TYPES[dtype] for dtype in _common.SUPPORTED_DTYPES]
# The dtypes AlexNet trains in: a default compile (all_configs False) takes every config of a kernel file's list in
# them and only its first in the others (fp16 runs bf16's code at another type; fp64 is for gradcheck), whose
# compiles would otherwise be a third of tests/test_gpu_compile.py's (the LRN+pool forward's, 10-30 s each).
TRAINING_DTYPES = ("bf16", "fp32")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """How a kernel's launcher calls it, in Triton signature types, and the constexpr values to compile it with.

    Pointers (`*_ptr`) are of the tensor dtype unless listed in `pointers` ("*acc": fp32, or fp64 for fp64 tensors);
    Python floats reach Triton as fp32; every other runtime argument is a size or a stride, i32."""

    kernel: object  # as the kernel file defines it: @triton.jit, under @triton.autotune or @triton.heuristics
    meta: Callable[[str], list[dict]]  # dtype -> the constexpr values besides the config's, each compiled
    pointers: dict[str, str] = dataclasses.field(default_factory=dict)
    floats: tuple[str, ...] = ()
    uses_dot: bool = False  # then its PTX must use tensor cores in fp32 with TF32, bf16 and fp16
    # The configs compiled by default; compile_cases(all_configs=True) compiles every one.
    default_configs: Callable[[list[triton.Config]], list[triton.Config]] = list
    # The kernel file's list of GPU configs for this kernel (a file whose kernels tile differently has one each).
    configs_attribute: str = "_GPU_CONFIGS"
    # (dtype, variant's meta) -> the configs the autotuner may pick for it, where that depends on them (conv: per
    # precision); then default_configs is not used and only the first (the checked autotuner's reference) is
    # compiled by default.
    configs_for: Callable[[str, dict], list[triton.Config]] | None = None
    # Integer arguments that are multiples of 16 on AlexNet's shapes (pointers always are): compiled with that hint.
    # Or a function of the variant's meta, where the variant decides (conv1's 3 channels make few such).
    divisible: tuple[str, ...] | Callable[[dict], tuple[str, ...]] = ()
    # A memory-bound kernel's model (bench/memory_model.py), from a launch's arguments by name: the tensors it must
    # move, (elements, bytes an element) per read and per write; and, with a config, the trips of its SASS loops,
    # outermost first, then in program order (mean trips per program where programs differ; the census refuses a
    # kernel whose SASS has another number of loops).
    # A tuple of such lists gives the loops as written and as the compiler may make them (a loop of constant trips
    # unrolled whole): the census takes the one with the SASS's number of loops.
    moves: Callable[[dict], list[tuple[int, int]]] | None = None
    trips: Callable[[dict, triton.Config], list[float] | tuple[list[float], ...]] | None = None

    @property
    def function(self):
        """The Python function under the decorators."""
        fn = self.kernel
        while hasattr(fn, "fn"):
            fn = fn.fn
        return fn

    @property
    def unspecialized(self) -> set[str]:
        return unspecialized(self.kernel)

    @property
    def name(self) -> str:
        return f"{self.function.__module__.rsplit('.', 1)[-1]}.{self.function.__name__}"


def unspecialized(kernel) -> set[str]:
    """The arguments a kernel's @triton.jit(do_not_specialize=...) names (kernel as its file defines it, compiled or
    interpreted): Triton never makes them constants nor hints them as multiples of 16, so neither do the offline
    compile and the census's count of compiles."""
    fn = kernel
    while not isinstance(fn, (triton.runtime.JITFunction, InterpretedFunction)):
        fn = fn.fn
    names = fn.do_not_specialize if isinstance(fn, triton.runtime.JITFunction) else fn.kwargs.get("do_not_specialize")
    arg_names = list(inspect.signature(fn.fn).parameters)
    return {arg_names[name] if isinstance(name, int) else name for name in names or ()}


def with_tf32(dtype: str, **meta) -> list[dict]:
    """TF32 follows torch.backends.cudnn.allow_tf32 for fp32 tensors (so both values occur) and is off otherwise."""
    return [{**meta, "TF32": True}, {**meta, "TF32": False}] if dtype == "fp32" else [{**meta, "TF32": False}]


def conv_configs(
    lists: dict, packed_lists: dict | None = None, gathers: Callable[[dict], bool] = conv_tuning.packed
) -> Callable[[str, dict], list[triton.Config]]:
    """A conv kernel's configs for a dtype and variant: its list for the precision tl.dot runs in (from packed_lists
    for a variant that gathers each element on its own, if given: by default a PACKED one)."""

    def configs_for(dtype: str, meta: dict) -> list[triton.Config]:
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
        chosen = packed_lists if packed_lists is not None and gathers(meta) else lists
        return chosen[conv_tuning.precision_class(dtypes[dtype], meta.get("TF32", False))]

    return configs_for


# The conv kernels' fast path: channels_last activations and weights (unit channel strides, which Triton compiles
# as constants), channel counts and the strides they make multiples of 16 (AlexNet's 48-384 channels per layer).
CONV_FWD_LAYOUT = {"stride_x_c": 1, "stride_weight_cin": 1, "stride_out_c": 1}
CONV_FWD_DIVISIBLE = (
    "C_in_g", "C_out_g",
    "stride_x_n", "stride_x_h", "stride_x_w", "stride_weight_cout", "stride_weight_kh", "stride_weight_kw",
    "stride_out_n", "stride_out_h", "stride_out_w", "stride_partial_split", "stride_partial_m",
)  # fmt: skip


# conv1's 3 input channels (packed taps) leave only the output channels and strides multiples of 16.
CONV_FWD_PACKED_DIVISIBLE = ("C_out_g", "stride_out_n", "stride_out_h", "stride_out_w")

# The conv layers' reductions are whole on a GPU (SPLITS == 1, which Triton compiles as a constant: no partial sums,
# no arrival counters); fc6's and fc7's are split (SPLITS a runtime value: 4-5 on an H100).
WHOLE = {"SPLITS": 1}


def conv_fwd_meta(dtype: str) -> list[dict]:
    """The conv layers' forward (bias and ReLU) and the stride-1 input gradient it also runs (neither), channels_last,
    their reductions whole; conv1's forward, whose 3 input channels pack taps; and fc6's and fc7's forward and input
    gradient, their reductions split (the last program of a tile sums the partial tiles and applies the epilogue)."""
    forward = with_tf32(dtype, HAS_BIAS=True, RELU=True, PACKED=False, **WHOLE, **CONV_FWD_LAYOUT)
    input_gradient = with_tf32(dtype, HAS_BIAS=False, RELU=False, PACKED=False, **WHOLE, **CONV_FWD_LAYOUT)
    packed = with_tf32(dtype, HAS_BIAS=True, RELU=True, PACKED=True, **WHOLE, **CONV_FWD_LAYOUT)
    split_forward = with_tf32(dtype, HAS_BIAS=True, RELU=True, PACKED=False, **CONV_FWD_LAYOUT)
    split_input_gradient = with_tf32(dtype, HAS_BIAS=False, RELU=False, PACKED=False, **CONV_FWD_LAYOUT)
    return forward + input_gradient + packed + split_forward + split_input_gradient


def conv_fwd_divisible(meta: dict) -> tuple[str, ...]:
    return CONV_FWD_PACKED_DIVISIBLE if meta["PACKED"] else CONV_FWD_DIVISIBLE


CONV_WGRAD_DIVISIBLE = (
    "C_out_g", "C_in_g", "COLUMNS", "stride_grad_pixel", "stride_x_n", "stride_x_h", "stride_x_w",
    "stride_dw_cout", "stride_dw_kh", "stride_dw_kw",
    "stride_partial_dw_split", "stride_partial_dw_cout", "stride_partial_dw_kh", "stride_partial_dw_kw",
)  # fmt: skip


def conv_wgrad_divisible(meta: dict) -> tuple[str, ...]:
    """Narrow channels packed leave the output channels and the gradient's pixel stride; conv1 blocked (INSIDE: 48
    channels) leaves them all."""
    return ("C_out_g", "stride_grad_pixel") if conv_tuning.wgrad_gathers(meta) else CONV_WGRAD_DIVISIBLE


def lrn_meta(tensors: tuple[str, ...]) -> Callable[[str], list[dict]]:
    """AlexNet's window in channels_last (every tensor's unit channel stride the constant Triton makes of it) and in
    NCHW, with the launcher's channels a trip (16 bytes of the dtype's, at least the window's halves) and log2
    (approximate but in fp64)."""

    def meta(dtype: str) -> list[dict]:
        size = PAPER_LRN["size"]
        width = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}[dtype]
        walk = {"SIZE": size, "CH": max(16 // width, triton.next_power_of_2(size // 2)), "FAST_LOG2": dtype != "fp64"}
        return [
            {**walk, "CHANNELS_LAST": True, **{f"stride_{tensor}_c": 1 for tensor in tensors}},
            {**walk, "CHANNELS_LAST": False, **{f"stride_{tensor}_w": 1 for tensor in tensors}},
        ]

    return meta


def pool_meta(dtype: str) -> list[dict]:
    """AlexNet's overlapping pool in NCHW, and a padded one in channels_last: both layouts, with and without padding."""
    kernel, stride = OVERLAPPING_POOL
    window = {"KH": kernel, "KW": kernel, "SH": stride, "SW": stride}
    return [
        {**window, "PH": 0, "PW": 0, "CHANNELS_LAST": False},
        {**window, "PH": 1, "PW": 1, "CHANNELS_LAST": True},
    ]


def pool_layout_meta(tensors: tuple[str, ...]) -> Callable[[str], list[dict]]:
    """pool_meta's variants with the unit strides a launch has as the constants Triton makes of them: every tensor's
    channels in channels_last, its columns in NCHW."""

    def meta(dtype: str) -> list[dict]:
        return [
            {**window, **{f"stride_{t}_{'c' if window['CHANNELS_LAST'] else 'w'}": 1 for t in tensors}}
            for window in pool_meta(dtype)
        ]

    return meta


def lrn_pool_fwd_meta(dtype: str) -> list[dict]:
    """AlexNet's LRN window and overlapping pool, pool_meta's variants (NCHW unpadded, channels_last padded), with the
    launcher's channels per thread (lrn_pool._channels_per_thread) and log2 (approximate, exact in fp64); the unit
    strides as the constants Triton makes of them."""
    vec = lrn_pool._VEC[{name: torch_type for torch_type, name in TRITON_TYPES.items()}[dtype]]
    variants = []
    for window in pool_meta(dtype):
        last = window.pop("CHANNELS_LAST")
        layout = {"stride_x_c": 1, "stride_out_c": 1} if last else {"stride_x_w": 1, "stride_out_w": 1}
        meta = {"SIZE": PAPER_LRN["size"], **window, "VEC": vec if last else 1, "FAST_LOG2": dtype != "fp64"}
        variants.append({**meta, **layout})
    return variants


def lrn_pool_bwd_meta(dtype: str) -> list[dict]:
    """The forward's variants, as the backward takes them (its strides: x's, the pooled gradient's, the positions',
    dx's)."""
    variants = []
    for meta in lrn_pool_fwd_meta(dtype):
        layout = "c" if meta.pop("stride_x_c", None) == 1 else "w"
        meta = {name: value for name, value in meta.items() if not name.startswith("stride_")}
        strides = {f"stride_{t}_{layout}": 1 for t in ("x", "grad", "pos", "dx")}
        variants.append({**meta, **strides, "VANISHING_SCALE": False})  # AlexNet's k = 2
    return variants


def lrn_pool_divisible(tensors: tuple[str, ...]) -> Callable[[dict], tuple[str, ...]]:
    """AlexNet's 48 and 128 channels; in channels_last (unit channel strides) every other stride of the tensors is a
    multiple of them."""

    def divisible(meta: dict) -> tuple[str, ...]:
        if meta.get(f"stride_{tensors[0]}_c") != 1:
            return ("C",)
        return ("C", *(f"stride_{tensor}_{dim}" for tensor in tensors for dim in ("n", "h", "w")))

    return divisible


# The memory-bound kernels' traffic and loop trips (KernelSpec.moves and .trips; bench/memory_model.py). Every tensor
# a kernel must touch is read once and written once; caches serve the re-reads.


def moved(*tensors) -> list[tuple[int, int]]:
    return [(t.numel(), t.element_size()) for t in tensors]


def window_moves(a: dict) -> list[tuple[int, int]]:
    """LRN, max-pool and LRN+pool: the tensors among their pointers, each once. LRN forward reads x and writes out;
    backward reads x and the gradient and writes dx. Max-pool forward reads x and writes the pooled output and its
    1-byte window positions; backward reads the pooled gradient and the positions and writes dx. LRN+pool forward
    reads x and writes the pooled LRN and the positions; backward reads x, the pooled gradient and the positions and
    writes dx."""
    return moved(*(a[name] for name in ("x_ptr", "grad_ptr", "pos_ptr", "out_ptr", "dx_ptr") if name in a))


def lrn_fwd_trips(a: dict, config) -> list[float]:
    """The channel walk, a chunk of CH channels a trip: for c0 in range(0, C, CH)."""
    return [_common.cdiv(a["C"], a["CH"])]


def lrn_bwd_trips(a: dict, config) -> list[float]:
    """The channel walk, a chunk of CH channels a trip and one more (a trip writes the chunk before its own):
    for c0 in range(0, C + CH, CH)."""
    return [_common.cdiv(a["C"], a["CH"]) + 1]


def lrn_pool_fwd_trips(a: dict, config) -> list[float]:
    """A thread item's band of output rows: for r in range(ROWS)."""
    return [a["ROWS"]]


def no_loops(a: dict, config) -> list[float]:
    """No runtime loop: one block of elements a program, windows and taps unrolled (tl.static_range)."""
    return []


def relu_grad_moves(a: dict) -> list[tuple[int, int]]:
    """Reads the gradient and the forward's output, writes the masked gradient; with the bias, writes its gradient and,
    with several pixel chunks, writes and reads the fp32 partial sums once (the arrival counters' bytes are left out:
    a few per channel block)."""
    tensors = [a["grad_ptr"], a["out_ptr"], a["masked_ptr"]]
    if a["HAS_BIAS"]:
        tensors.append(a["db_ptr"])
        if a["PIXELS"] > a["PIXELS_PER_PROGRAM"]:  # partial_db: [chunks, C]
            tensors += [a["partial_db_ptr"]] * 2
    return moved(*tensors)


def relu_grad_trips(a: dict, config) -> list[float]:
    """The pixel loop, range(p_start, p_end, BLOCK_P), its mean trips over the chunks (the last may be short); with the
    bias, the sum of the partials, range(0, chunks, BLOCK_P), which one program of each channel block's `chunks` runs
    (none with one chunk): its mean trips per program."""
    pixels, per_program, block = a["PIXELS"], a["PIXELS_PER_PROGRAM"], config.kwargs["BLOCK_P"]
    chunks = _common.cdiv(pixels, per_program)
    last = pixels - (chunks - 1) * per_program
    pixel_trips = ((chunks - 1) * _common.cdiv(per_program, block) + _common.cdiv(last, block)) / chunks
    if not a["HAS_BIAS"]:
        return [pixel_trips]
    return [pixel_trips, _common.cdiv(chunks, block) / chunks if chunks > 1 else 0.0]


def space_to_depth_moves(a: dict) -> list[tuple[int, int]]:
    """Reads the image (conv1's windows read all of a 227 image) and writes its blocked copy (padding included)."""
    return moved(a["x_ptr"], a["out_ptr"])


def dropout_moves(a: dict) -> list[tuple[int, int]]:
    """Reads x and the 8-byte seed, writes out (the mask is regenerated, never stored)."""
    return moved(a["x_ptr"], a["seed_ptr"], a["out_ptr"])


def crop_moves(a: dict) -> list[tuple[int, int]]:
    """Reads the boxes, the lighting shifts, the mean and scale, and the stored pixels under each crop: as stored, one
    uint8 a crop's element; rescaled, the stored rows and columns whose filter reaches a centred crop, and the
    resampling table. Writes the crops."""
    out, crops, size, taps = a["out_ptr"], a["box_ptr"].shape[0], a["size"], a["TAPS"]
    tensors = moved(*(a[name] for name in ("box_ptr", "shift_ptr", "mean_ptr", "scale_ptr")))
    if taps == 0:
        return [*tensors, (out.numel(), 1), *moved(out)]
    resize, side = a["start_ptr"].shape[0], a["image_ptr"].shape[1]
    starts, weights = augment.resampling(side, resize)
    first = (resize - size) // 2
    reads = [int(starts[i]) + int((weights[i] > 0).nonzero().max()) for i in range(first, first + size)]
    footprint = max(reads) - int(starts[first]) + 1  # stored pixels a side
    table = moved(a["start_ptr"], a["weight_ptr"])
    return [*tensors, *table, (crops * 3 * footprint**2, 1), *moved(out)]


def crop_trips(a: dict, config) -> tuple[list[float], ...]:
    """As stored, none (a [ROWS, BLOCK] tile). Rescaled, a program's walk down the stored rows its output rows reach,
    range(first(y0), first(last) + TAPS) (first: the table's starts), unrolled TAPS rows a trip, and inside, after each
    of a trip's TAPS stored rows, the output rows whose filter ends there (a while loop, 0 or 1 trips when shrinking):
    their means per program and per stored row a trip holds, for a centred crop (the training crops' boxes vary about
    it). A last trip's rows past the walk are skipped on the GPU and counted here. Each while loop's branch back is a
    predicated `BRA P, target`; where bench/sass.py does not read that as a loop, its body counts once a stored row."""
    taps, size, rows = a["TAPS"], a["size"], config.kwargs["ROWS"]
    if taps == 0:
        return ([],)
    resize = a["start_ptr"].shape[0]
    starts, _ = augment.resampling(a["image_ptr"].shape[1], resize)
    top = (resize - size) // 2
    programs = _common.cdiv(size, rows)
    walked = [int(starts[top + min(y0 + rows, size) - 1]) + taps - int(starts[top + y0]) for y0 in range(0, size, rows)]
    trips = sum(_common.cdiv(rows_walked, taps) for rows_walked in walked) / programs
    outputs_per_row = size / (trips * taps * programs)
    return ([trips, *[outputs_per_row] * taps], [trips])


# In the order they compile: the slowest (conv) first.
SPECS = [
    KernelSpec(
        conv._conv_fwd_kernel,
        conv_fwd_meta,
        pointers={"partial_ptr": "*acc", "arrivals_ptr": "*i32"},
        uses_dot=True,
        configs_for=conv_configs(conv_tuning.FWD_CONFIGS, conv_tuning.FWD_PACKED_CONFIGS),
        divisible=conv_fwd_divisible,
    ),
    KernelSpec(
        conv_grad._conv_wgrad_kernel,
        lambda dtype: [  # conv2-5 (a tap's channels), narrow channels packed, conv1 blocked (packed INSIDE)
            variant
            for packed, inside in ((False, False), (True, False), (True, True))
            for variant in with_tf32(
                dtype,
                PACKED=packed,
                INSIDE=inside,
                stride_grad_c=1,
                stride_x_c=1,
                stride_dw_cin=1,
                stride_partial_dw_cin=1,
            )
        ],
        pointers={"partial_dw_ptr": "*acc", "arrivals_ptr": "*i32"},
        uses_dot=True,
        configs_for=conv_configs(
            conv_tuning.WGRAD_CONFIGS, conv_tuning.WGRAD_PACKED_CONFIGS, conv_tuning.wgrad_gathers
        ),
        divisible=conv_wgrad_divisible,
    ),
    KernelSpec(
        conv_grad._conv_dgrad_gather_kernel,
        lambda dtype: with_tf32(dtype, stride_grad_c=1, stride_weight_cin=1, stride_dx_c=1),
        uses_dot=True,
        configs_for=conv_configs(conv_tuning.GATHER_CONFIGS),
        divisible=(
            "GEMM_N",
            "C_out_g",
            "stride_grad_n",
            "stride_grad_h",
            "stride_grad_w",
            "stride_weight_cout",
            "stride_weight_kh",
            "stride_weight_kw",
            "stride_dx_n",
            "stride_dx_h",
            "stride_dx_w",
        ),
    ),
    KernelSpec(
        conv_grad._relu_grad_kernel,
        lambda dtype: [{"HAS_BIAS": bias, "stride_grad_c": 1, "stride_out_c": 1} for bias in (True, False)],
        pointers={"partial_db_ptr": "*acc", "arrivals_ptr": "*i32"},
        configs_attribute="MASK_CONFIGS",
        moves=relu_grad_moves,
        trips=relu_grad_trips,
        divisible=(
            "C",
            "stride_grad_n",
            "stride_grad_h",
            "stride_grad_w",
            "stride_out_n",
            "stride_out_h",
            "stride_out_w",
        ),
    ),
    KernelSpec(
        lrn._lrn_fwd_kernel,
        lrn_meta(("x", "out")),
        floats=("alpha_over_size", "beta", "k"),
        moves=window_moves,
        trips=lrn_fwd_trips,
        divisible=lrn_pool_divisible(("x", "out")),
    ),
    KernelSpec(
        lrn._lrn_bwd_kernel,
        lrn_meta(("x", "grad", "dx")),
        floats=("alpha_over_size", "beta", "k", "two_alpha_beta_over_size"),
        moves=window_moves,
        trips=lrn_bwd_trips,
        divisible=lrn_pool_divisible(("x", "grad", "dx")),
    ),
    KernelSpec(
        pool._max_pool_fwd_kernel,
        pool_layout_meta(("x", "out")),
        pointers={"pos_ptr": "*u8"},
        moves=window_moves,
        trips=no_loops,
        divisible=lrn_pool_divisible(("x", "out")),
    ),
    KernelSpec(
        pool._max_pool_bwd_kernel,
        pool_layout_meta(("grad", "pos", "dx")),
        pointers={"pos_ptr": "*u8"},
        moves=window_moves,
        trips=no_loops,
        divisible=lrn_pool_divisible(("grad", "pos", "dx")),
    ),
    KernelSpec(
        lrn_pool._lrn_max_pool_fwd_kernel,
        lrn_pool_fwd_meta,
        pointers={"pos_ptr": "*u8"},
        floats=("alpha_over_size", "beta", "k"),
        configs_attribute="_FWD_GPU_CONFIGS",
        divisible=lrn_pool_divisible(("x", "out")),
        moves=window_moves,
        trips=lrn_pool_fwd_trips,
    ),
    KernelSpec(
        lrn_pool._lrn_max_pool_bwd_kernel,
        lrn_pool_bwd_meta,
        pointers={"pos_ptr": "*u8"},
        floats=("alpha_over_size", "beta", "k", "two_alpha_beta_over_size"),
        configs_attribute="_BWD_GPU_CONFIGS",
        divisible=lrn_pool_divisible(("x", "grad", "pos", "dx")),
        moves=window_moves,
        trips=no_loops,
    ),
    KernelSpec(
        space_to_depth._space_to_depth_kernel,
        # conv1's image (3 channels, stride 4: 48 blocked channels), NCHW and channels_last (a unit stride a constant).
        lambda dtype: [{"C": 3, "SH": 4, "SW": 4, "CHANNELS_P2": 64, unit: 1} for unit in ("stride_x_w", "stride_x_c")],
        moves=space_to_depth_moves,
        trips=no_loops,
    ),
    KernelSpec(
        dropout._dropout_kernel,
        lambda dtype: [{}],
        pointers={"seed_ptr": "*i64"},
        floats=("p", "scale"),
        moves=dropout_moves,
        trips=no_loops,
    ),
    KernelSpec(
        augment._crop_normalize_kernel,
        # As stored (227 crops of a 256 store), rescaled 256 -> 253 (224 crops: 3 taps a side) and 256 -> 76 (67
        # crops: 7 taps); the strides of 1 a launch has (RGB pixels, the output's innermost dimension) as constants.
        lambda dtype: [
            {
                "PIXEL": 3,
                "TAPS": taps,
                "CHANNELS_LAST": last,
                "stride_image_c": 1,
                ("stride_out_c" if last else "stride_out_w"): 1,
            }
            for taps in (0, 3, 7)
            for last in (False, True)
        ],
        pointers={
            "image_ptr": "*u8",
            "box_ptr": "*i32",
            "start_ptr": "*i32",
            **dict.fromkeys(("shift_ptr", "mean_ptr", "scale_ptr", "weight_ptr"), "*fp32"),
        },
        divisible=("stride_image_n", "stride_image_h"),  # a 256 store: 196,608 and 768
        moves=crop_moves,
        trips=crop_trips,
    ),
]
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


def constexpr_flags(spec: KernelSpec) -> dict[str, bool]:
    """Argument name -> whether it is a tl.constexpr, from the kernel's Python signature."""
    return {
        name: param.annotation is tl.constexpr or "constexpr" in str(param.annotation)
        for name, param in inspect.signature(spec.function).parameters.items()
    }


def signature(spec: KernelSpec, flags: dict[str, bool], dtype: str, constants: dict) -> dict[str, str]:
    """Argument name -> Triton type; an argument given a value in constants (a constexpr, or a runtime stride
    of 1, which Triton specializes) is a constexpr."""
    acc = "fp64" if dtype == "fp64" else "fp32"
    types = {}
    for name, is_constexpr in flags.items():
        if is_constexpr or name in constants:
            types[name] = "constexpr"
        elif name in spec.pointers:
            types[name] = spec.pointers[name].replace("acc", acc)
        elif name.endswith("_ptr"):
            types[name] = f"*{dtype}"
        else:
            types[name] = "fp32" if name in spec.floats else "i32"
    return types


def flags_only(name: str) -> bool:
    """Whether a variant's setting is a layout detail (a unit stride) rather than a flag worth its label."""
    return name.startswith("stride_")


def compile_cases(spec: KernelSpec, *, all_configs: bool = False) -> list[dict]:
    """One case per (dtype, constexpr values, GPU config): the arguments of triton.compile, and labels."""
    flags = constexpr_flags(spec)
    unknown = (set(spec.pointers) | set(spec.floats)) - set(flags)
    assert not unknown, f"{spec.name}: the spec names arguments the kernel does not have: {sorted(unknown)}"
    cases = []
    for dtype in DTYPES:
        for meta in spec.meta(dtype):
            hinted = spec.divisible(meta) if callable(spec.divisible) else spec.divisible
            unknown = (set(meta) | set(hinted)) - set(flags)
            assert not unknown, f"{spec.name}: a variant names arguments the kernel does not have: {sorted(unknown)}"
            fixed = (set(meta) | set(hinted)) & spec.unspecialized
            assert not fixed, f"{spec.name}: do_not_specialize: Triton neither fixes nor hints {sorted(fixed)}"
            divisible = [name for name in flags if name.endswith("_ptr") or name in hinted]
            if spec.configs_for is not None:
                configs = spec.configs_for(dtype, meta)
                configs = configs if all_configs else configs[:1]
            else:  # the kernel file's list: under the interpreter the kernels are not autotuned
                configs = getattr(sys.modules[spec.function.__module__], spec.configs_attribute)
                if not all_configs:
                    configs = spec.default_configs(configs) if dtype in TRAINING_DTYPES else configs[:1]
            for config in configs:
                constexprs = {**meta, **config.kwargs}
                missing = {name for name, is_constexpr in flags.items() if is_constexpr} - set(constexprs)
                assert not missing, f"{spec.name}: no value for constexpr {sorted(missing)}"
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages, "num_ctas": config.num_ctas}
                if config.maxnreg is not None:
                    options["maxnreg"] = config.maxnreg
                tensor_cores = spec.uses_dot and (dtype in ("bf16", "fp16") or (dtype == "fp32" and meta["TF32"]))
                label = [f"{key}={value}" for key, value in meta.items() if not flags_only(key)]
                if "SPLITS" in flags and "SPLITS" not in meta:  # a runtime split count compiles the split path
                    label.insert(-1 if "TF32" in meta else len(label), "SPLITS>1")
                cases.append(
                    {
                        "dtype": dtype,
                        "variant": " ".join(label),
                        "config": " ".join(f"{key}={value}" for key, value in config.kwargs.items())
                        + f" warps={config.num_warps} stages={config.num_stages}",
                        "needs_tensor_cores": tensor_cores,
                        "signature": signature(spec, flags, dtype, constexprs),
                        "constexprs": constexprs,
                        "divisible": [name for name in divisible if name not in constexprs],
                        "options": options,
                    }
                )
    return cases


def compile_specs(
    specs: list[KernelSpec], folder: Path, *, all_configs: bool = False, timeout: float = 600
) -> dict[str, list[dict]]:
    """Kernel name -> one result per case of compile_cases, in a fresh process: the case, and its error or
    its resources (see bench.offline_compile). folder: an empty folder for its files."""
    cases = {spec.name: compile_cases(spec, all_configs=all_configs) for spec in specs}
    jobs = [
        {"name": name, "module": spec.function.__module__, "kernel": spec.function.__name__, "cases": cases[name]}
        for name, spec in zip(cases, specs, strict=True)
    ]
    outcomes = compile_jobs(jobs, folder, timeout=timeout)
    return {
        name: [{**case, **outcome} for case, outcome in zip(cases[name], outcomes[name], strict=True)] for name in cases
    }
