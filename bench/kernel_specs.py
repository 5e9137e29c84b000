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
from alexnet_triton.kernels import _common, augment, conv, conv_grad, conv_tuning, dropout, lrn, lrn_pool, pool
from triton.runtime.interpreter import InterpretedFunction

from alexnet_triton.model import OVERLAPPING_POOL, PAPER_LRN
from bench.offline_compile import compile_jobs

TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
DTYPES = [TRITON_TYPES[dtype] for dtype in _common.SUPPORTED_DTYPES]


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


def conv_configs(lists: dict, packed_lists: dict | None = None) -> Callable[[str, dict], list[triton.Config]]:
    """A conv kernel's configs for a dtype and variant: its list for the precision tl.dot runs in (from packed_lists
    for a PACKED variant, if given)."""

    def configs_for(dtype: str, meta: dict) -> list[triton.Config]:
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
        chosen = packed_lists if packed_lists is not None and meta.get("PACKED") else lists
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
    """conv1's (packed) leaves the output channels and the gradient's pixel stride."""
    return ("C_out_g", "stride_grad_pixel") if meta["PACKED"] else CONV_WGRAD_DIVISIBLE


def lrn_meta(dtype: str) -> list[dict]:
    """AlexNet's window."""
    return [{"SIZE": PAPER_LRN["size"], "SIZE_P2": triton.next_power_of_2(PAPER_LRN["size"])}]


def pool_meta(dtype: str) -> list[dict]:
    """AlexNet's overlapping pool in NCHW, and a padded one in channels_last: both layouts, with and without padding."""
    kernel, stride = OVERLAPPING_POOL
    window = {"KH": kernel, "KW": kernel, "SH": stride, "SW": stride}
    return [
        {**window, "PH": 0, "PW": 0, "CHANNELS_LAST": False},
        {**window, "PH": 1, "PW": 1, "CHANNELS_LAST": True},
    ]


def lrn_pool_fwd_meta(dtype: str) -> list[dict]:
    """AlexNet's LRN window and overlapping pool, pool_meta's variants (both layouts, with and without padding)."""
    return [{"SIZE": PAPER_LRN["size"], **window} for window in pool_meta(dtype)]


def lrn_pool_bwd_meta(dtype: str) -> list[dict]:
    """The same windows as the backward takes them: the LRN ring's width and the pooling windows per pixel (the
    layout reaches it as strides only)."""
    variants = []
    for window in pool_meta(dtype):
        window = {name: value for name, value in window.items() if name != "CHANNELS_LAST"}
        per_pixel = lrn_pool._windows_per_pixel((window["KH"], window["KW"]), (window["SH"], window["SW"]))
        variants.append({**lrn_meta(dtype)[0], **window, "WINDOWS_P2": triton.next_power_of_2(per_pixel)})
    return variants


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
        lambda dtype: [
            variant
            for packed in (False, True)
            for variant in with_tf32(
                dtype, PACKED=packed, stride_grad_c=1, stride_x_c=1, stride_dw_cin=1, stride_partial_dw_cin=1
            )
        ],
        pointers={"partial_dw_ptr": "*acc", "arrivals_ptr": "*i32"},
        uses_dot=True,
        configs_for=conv_configs(conv_tuning.WGRAD_CONFIGS, conv_tuning.WGRAD_PACKED_CONFIGS),
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
    KernelSpec(lrn._lrn_fwd_kernel, lrn_meta, floats=("alpha_over_size", "beta", "k")),
    KernelSpec(lrn._lrn_bwd_kernel, lrn_meta, floats=("alpha_over_size", "beta", "k", "two_alpha_beta_over_size")),
    KernelSpec(pool._max_pool_fwd_kernel, pool_meta, pointers={"pos_ptr": "*u8"}),
    KernelSpec(pool._max_pool_bwd_kernel, pool_meta, pointers={"pos_ptr": "*u8"}),
    KernelSpec(
        lrn_pool._lrn_max_pool_fwd_kernel,
        lrn_pool_fwd_meta,
        pointers={"pos_ptr": "*u8"},
        floats=("alpha_over_size", "beta", "k"),
        configs_attribute="_FWD_GPU_CONFIGS",
    ),
    KernelSpec(
        lrn_pool._lrn_max_pool_bwd_kernel,
        lrn_pool_bwd_meta,
        pointers={"pos_ptr": "*u8"},
        floats=("alpha_over_size", "beta", "k", "two_alpha_beta_over_size"),
        configs_attribute="_BWD_GPU_CONFIGS",
    ),
    KernelSpec(dropout._dropout_kernel, lambda dtype: [{}], pointers={"seed_ptr": "*i64"}, floats=("p", "scale")),
    KernelSpec(
        augment._crop_normalize_kernel,
        # As stored (227 crops of a 256 store), rescaled 256 -> 253 (224 crops: 5 taps a side) and 256 -> 76 (67
        # crops: 9 taps); the strides of 1 a launch has (RGB pixels, the output's innermost dimension) as constants.
        lambda dtype: [
            {"TAPS": taps, "CHANNELS_LAST": last, "stride_image_c": 1, ("stride_out_c" if last else "stride_out_w"): 1}
            for taps in (0, 5, 9)
            for last in (False, True)
        ],
        pointers={
            "image_ptr": "*u8",
            "box_ptr": "*i32",
            "start_ptr": "*i32",
            **dict.fromkeys(("shift_ptr", "mean_ptr", "scale_ptr", "weight_ptr"), "*fp32"),
        },
        divisible=("side", "stride_image_n", "stride_image_h"),  # a 256 store: 256, 196,608 and 768
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
                configs = configs if all_configs else spec.default_configs(configs)
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
