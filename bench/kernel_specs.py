"""How each of this project's Triton kernels is compiled offline for an H100: in each dtype it takes, with its
GPU autotuning configs and the constexpr variants the launchers use (TF32 on and off, AlexNet's LRN window and
pools, from `alexnet_triton.model`).

    results = compile_specs(SPECS, folder)   # kernel name -> one result per case: the case, then its
                                             # error or registers, spills, shared memory, cubin path

Argument types come from the kernels' own Python signatures, so a renamed argument needs no change here unless
it is one of a spec's `pointers` or `floats`.
"""

import dataclasses
import inspect
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.language as tl
from alexnet_triton.kernels import _common, augment, conv, dropout, lrn, lrn_pool, pool

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

    @property
    def function(self):
        """The Python function under the decorators."""
        fn = self.kernel
        while hasattr(fn, "fn"):
            fn = fn.fn
        return fn

    @property
    def name(self) -> str:
        return f"{self.function.__module__.rsplit('.', 1)[-1]}.{self.function.__name__}"


def with_tf32(dtype: str, **meta) -> list[dict]:
    """TF32 follows torch.backends.cudnn.allow_tf32 for fp32 tensors (so both values occur) and is off otherwise."""
    return [{**meta, "TF32": True}, {**meta, "TF32": False}] if dtype == "fp32" else [{**meta, "TF32": False}]


def one_conv_config(configs: list[triton.Config]) -> list[triton.Config]:
    """The conv kernels take 2-10 s per compile (minutes per kernel for all configs and dtypes), so by default only
    BLOCK 64x64x64 with 4 warps: the cheapest to compile of the wgmma (4+ warps) configs, and one whose shared
    memory every dtype fits."""
    chosen = [c for c in configs if c.kwargs == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64} and c.num_warps == 4]
    assert chosen, "conv's _GPU_CONFIGS lost BLOCK 64x64x64 with 4 warps: choose another default in one_conv_config"
    return chosen


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
        lambda dtype: with_tf32(dtype, HAS_BIAS=True),
        uses_dot=True,
        default_configs=one_conv_config,
    ),
    KernelSpec(conv._conv_dgrad_kernel, with_tf32, uses_dot=True, default_configs=one_conv_config),
    KernelSpec(
        conv._conv_wgrad_kernel,
        lambda dtype: with_tf32(dtype, HAS_BIAS=True),
        pointers={"partial_dw_ptr": "*acc", "partial_db_ptr": "*acc"},
        uses_dot=True,
        default_configs=one_conv_config,
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
        lambda dtype: [{"CHANNELS_LAST": False}, {"CHANNELS_LAST": True}],
        pointers={
            "image_ptr": "*u8",
            "box_ptr": "*i32",
            **dict.fromkeys(("shift_ptr", "mean_ptr", "scale_ptr"), "*fp32"),
        },
    ),
]
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


def constexpr_flags(spec: KernelSpec) -> dict[str, bool]:
    """Argument name -> whether it is a tl.constexpr, from the kernel's Python signature."""
    return {
        name: param.annotation is tl.constexpr or "constexpr" in str(param.annotation)
        for name, param in inspect.signature(spec.function).parameters.items()
    }


def signature(spec: KernelSpec, flags: dict[str, bool], dtype: str) -> dict[str, str]:
    acc = "fp64" if dtype == "fp64" else "fp32"
    types = {}
    for name, is_constexpr in flags.items():
        if is_constexpr:
            types[name] = "constexpr"
        elif name in spec.pointers:
            types[name] = spec.pointers[name].replace("acc", acc)
        elif name.endswith("_ptr"):
            types[name] = f"*{dtype}"
        else:
            types[name] = "fp32" if name in spec.floats else "i32"
    return types


def compile_cases(spec: KernelSpec, *, all_configs: bool = False) -> list[dict]:
    """One case per (dtype, constexpr values, GPU config): the arguments of triton.compile, and labels."""
    flags = constexpr_flags(spec)
    unknown = (set(spec.pointers) | set(spec.floats)) - set(flags)
    assert not unknown, f"{spec.name}: the spec names arguments the kernel does not have: {sorted(unknown)}"
    # The kernel file's list: under the interpreter the kernels are not autotuned.
    configs = getattr(sys.modules[spec.function.__module__], spec.configs_attribute)
    configs = configs if all_configs else spec.default_configs(configs)
    cases = []
    for dtype in DTYPES:
        for meta in spec.meta(dtype):
            for config in configs:
                constexprs = {**meta, **config.kwargs}
                missing = {name for name, is_constexpr in flags.items() if is_constexpr} - set(constexprs)
                assert not missing, f"{spec.name}: no value for constexpr {sorted(missing)}"
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages, "num_ctas": config.num_ctas}
                if config.maxnreg is not None:
                    options["maxnreg"] = config.maxnreg
                tensor_cores = spec.uses_dot and (dtype in ("bf16", "fp16") or (dtype == "fp32" and meta["TF32"]))
                cases.append(
                    {
                        "dtype": dtype,
                        "variant": " ".join(f"{key}={value}" for key, value in meta.items()),
                        "config": " ".join(f"{key}={value}" for key, value in config.kwargs.items())
                        + f" warps={config.num_warps} stages={config.num_stages}",
                        "needs_tensor_cores": tensor_cores,
                        "signature": signature(spec, flags, dtype),
                        "constexprs": constexprs,
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
