"""Every Triton kernel compiles for an H100 (sm_90) in each dtype it takes, with its GPU autotuning configs.

The rest of the suite runs the kernels in Triton's CPU interpreter, which never lowers them to GPU code: type errors,
unsupported ops, tiles that need more shared memory than the GPU has, and matmuls that miss the tensor cores only show
when a kernel is compiled for a GPU. Triton compiles for a GPU target without a GPU or a driver, so this runs on any
machine: `bench.kernel_specs` says how each kernel is compiled, and `bench.offline_compile` compiles them in a fresh
process (TRITON_INTERPRET is read when triton is imported).

`pytest -s tests/test_gpu_compile.py` prints the shared memory, registers and spills of every compile.
By default each conv kernel compiles its first config per precision, and the other kernels every config in bf16 and
fp32 (AlexNet's) and their first in fp16 and fp64 (bench.kernel_specs.TRAINING_DTYPES);
ALEXNET_TRITON_COMPILE_ALL_CONFIGS=1 compiles every config of every kernel (several minutes).
A conv config (the kernels with tl.dot) that spills registers fails: the census (python -m bench.census) chose
configs that do not, and a spill in the hot loop costs more than the tile gains. So does one with more than 4 warps
(their loops' div/mod index math miscompiled at 8: triton-lang/triton#1254), and a second config for ReLU's mask
(its bias sum's order would follow the tuning).
"""

import importlib
import os
import pkgutil

import pytest
import triton
import triton.language as tl
from alexnet_triton.kernels import autotune, conv_tuning
from triton.runtime.autotuner import Autotuner, Heuristics

from bench.kernel_specs import SPEC_BY_NAME, SPECS, KernelSpec, compile_cases, compile_specs, unspecialized
from bench.offline_compile import missing_nvidia_backend

# An H100's limits, checked when a kernel is loaded; the autotuner drops a config over them (OutOfResources). That is
# acceptable for some configs of a kernel, not for all: 227 KiB of shared memory per block
# (cudaDevAttrMaxSharedMemoryPerBlockOptin), 64Ki registers and 1024 threads per block.
H100_MAX_SHARED_BYTES = 232448
H100_MAX_REGISTERS_PER_BLOCK = 65536
H100_MAX_THREADS_PER_BLOCK = 1024

ALL_CONFIGS = os.environ.get("ALEXNET_TRITON_COMPILE_ALL_CONFIGS", "") not in ("", "0")


@pytest.fixture(scope="module")
def compiled(request, tmp_path_factory):
    """Kernel name -> its compile results, for the kernels this session runs, compiled together."""
    reason = missing_nvidia_backend()
    if reason is not None:
        pytest.skip(reason)
    wanted = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec is not None and "kernel" in callspec.params:
            wanted.add(callspec.params["kernel"])
    specs = [spec for spec in SPECS if spec.name in wanted]  # in SPECS' order: the slowest (conv) first
    folder = tmp_path_factory.mktemp("gpu_compile")
    return compile_specs(specs, folder, all_configs=ALL_CONFIGS, timeout=3600 if ALL_CONFIGS else 600)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_autotune_keys_name_kernel_arguments():
    """The autotuner silently drops a key that names no argument (a renamed stride, say), and would then reuse a
    config across layouts; every kernel file's decorator refuses one at import instead."""

    @triton.jit
    def kernel(x_ptr, numel, stride_x_c, BLOCK: tl.constexpr):
        pass

    def tune(key):
        return autotune.tuned([triton.Config({"BLOCK": 16})], key, lambda args: {"BLOCK": 16})(kernel)

    tune(["numel", "stride_x_c"])
    with pytest.raises(ValueError, match=r"autotune key \['sx_c'\] names no argument of kernel"):
        tune(["numel", "sx_c"])


CONV_CONFIG_LISTS = ["FWD_CONFIGS", "FWD_PACKED_CONFIGS", "WGRAD_CONFIGS", "WGRAD_PACKED_CONFIGS", "GATHER_CONFIGS"]
CONV_KERNELS = ["_conv_fwd_kernel", "_conv_wgrad_kernel", "_conv_dgrad_gather_kernel"]


def test_conv_configs_run_at_most_4_warps():
    """The conv kernels loop over (tap, channel block) or pixel blocks with div/mod index math, which Triton has
    miscompiled at num_warps=8 (non-1x1 convolutions came out wrong: pytorch/pytorch#173068, after
    triton-lang/triton#1254; Inductor caps its conv templates at 4 warps): no list the autotuner reads offers
    more."""
    wide = [
        f"{name}[{precision!r}]: {config}"
        for name in CONV_CONFIG_LISTS
        for precision, configs in getattr(conv_tuning, name).items()
        for config in configs
        if config.num_warps > 4
    ]
    wide += [
        f"TUNED_CONFIGS[{kernel!r}]: {config}"
        for kernel in CONV_KERNELS
        for config in conv_tuning.TUNED_CONFIGS[kernel]
        if config.num_warps > 4
    ]
    assert not wide, "conv configs with more than 4 warps:\n" + "\n".join(wide)


def test_relu_mask_is_not_tuned():
    """ReLU's mask kernel sums the bias gradient in an order that follows its BLOCK_P: one config keeps that sum the
    same whatever the tuning, the GPU or the layout."""
    assert len(conv_tuning.MASK_CONFIGS) == 1
    assert conv_tuning.TUNED_CONFIGS["_relu_grad_kernel"] == conv_tuning.MASK_CONFIGS


def test_compile_cases_leave_do_not_specialize_arguments_unhinted():
    """Triton hints an integer argument as a multiple of 16 at run time unless the kernel's do_not_specialize names
    it; the offline compile must not hint it either (it would compile code no GPU runs), so a spec that does is
    refused. Every config of every spec makes consistent cases."""

    @triton.jit(do_not_specialize=["pixels"])
    def kernel(x_ptr, pixels, channels, BLOCK: tl.constexpr):
        pass

    assert unspecialized(kernel) == {"pixels"}
    configs = [triton.Config({"BLOCK": 16})]
    spec = KernelSpec(kernel, lambda dtype: [{}], configs_for=lambda dtype, meta: configs, divisible=("channels",))
    assert {tuple(case["divisible"]) for case in compile_cases(spec)} == {("x_ptr", "channels")}
    with pytest.raises(AssertionError, match=r"do_not_specialize.*\['pixels'\]"):
        compile_cases(KernelSpec(kernel, lambda dtype: [{}], configs_for=lambda d, m: configs, divisible=("pixels",)))
    for spec in SPECS:
        assert compile_cases(spec, all_configs=True)


def test_every_kernel_has_a_compile_spec():
    """A new kernel (a tuned or `*_kernel` function in any file of alexnet_triton.kernels) gets compiled too."""
    found = set()
    for module_info in pkgutil.iter_modules(importlib.import_module("alexnet_triton.kernels").__path__):
        module = importlib.import_module(f"alexnet_triton.kernels.{module_info.name}")
        for attribute, value in vars(module).items():
            if isinstance(value, (Autotuner, Heuristics)) or (attribute.endswith("_kernel") and callable(value)):
                found.add(f"{module_info.name}.{attribute}")
    assert found == set(SPEC_BY_NAME), f"kernels without a compile spec: {sorted(found - set(SPEC_BY_NAME))}"


def resource_problem(result: dict) -> str | None:
    """Why an H100 would refuse to load a compiled config (the autotuner then skips it), or None."""
    if result["shared"] > H100_MAX_SHARED_BYTES:
        return f"out of shared memory: {result['shared']} > {H100_MAX_SHARED_BYTES} bytes"
    registers = result["registers"]
    threads = 32 * result["options"]["num_warps"]
    if threads > H100_MAX_THREADS_PER_BLOCK:
        return f"too many threads: {threads} > {H100_MAX_THREADS_PER_BLOCK}"
    if registers is not None and registers * threads > H100_MAX_REGISTERS_PER_BLOCK:
        return f"out of registers: {registers} x {threads} threads > {H100_MAX_REGISTERS_PER_BLOCK}"
    return None


def first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else text


def describe(result: dict) -> str:
    what = f"{result['dtype']:<4} {result['variant']:<46} {result['config']:<48}"
    if "error" in result:
        return f"{what} ERROR {first_line(result['error'])[:200]}"
    spills = f"{result['spill_stores']}/{result['spill_loads']}"
    status = resource_problem(result) or ("ok, tensor cores" if result["tensor_cores"] else "ok")
    return (
        f"{what} shared={result['shared']:>6} registers={result['registers']} spill stores/loads={spills:<11}"
        f" {result['seconds']:4.1f}s  {status}"
    )


@pytest.mark.parametrize("kernel", list(SPEC_BY_NAME))
def test_kernel_compiles_for_h100(kernel, compiled):
    """Per dtype (and TF32 / window / layout variant): no config fails to compile, at least one config fits an H100,
    tl.dot runs on tensor cores where it should, and no config of a kernel with tl.dot spills."""
    results = compiled[kernel]
    print(f"\n{kernel} for sm_90:\n" + "\n".join(describe(result) for result in results))
    problems = []
    variants = {}
    for result in results:
        variants.setdefault((result["dtype"], result["variant"]), []).append(result)
    for (dtype, variant), group in variants.items():
        where = f"{kernel} {dtype} {variant}".rstrip()
        fits = []
        for result in group:
            if "error" in result:
                problems.append(f"{where} {result['config']}: {result['error'][:3000]}")
                continue
            if result["needs_tensor_cores"] and not result["tensor_cores"]:
                problems.append(f"{where} {result['config']}: no wgmma/mma in the PTX: tl.dot fell back to FMA")
            if SPEC_BY_NAME[kernel].uses_dot and (result["spill_stores"] or result["spill_loads"]):
                spills = f"{result['spill_stores']}/{result['spill_loads']}"
                problems.append(f"{where} {result['config']}: spills registers (stores/loads {spills} bytes)")
            if resource_problem(result) is None:
                fits.append(result)
        if not fits:
            refused = "; ".join(f"{r['config']}: {first_line(r.get('error')) or resource_problem(r)}" for r in group)
            problems.append(f"{where}: no config fits an H100: {refused}")
    assert not problems, "\n".join(problems)
