"""Every Triton kernel compiles for an H100 (sm_90) in each dtype it takes, with its GPU autotuning configs.

The rest of the suite runs the kernels in Triton's CPU interpreter, which never lowers them to GPU code: type errors,
unsupported ops, tiles that need more shared memory than the GPU has, and matmuls that miss the tensor cores only show
when a kernel is compiled for a GPU. Triton compiles for a GPU target without a GPU or a driver (its NVIDIA backend
ships ptxas), so this runs on any machine. TRITON_INTERPRET is read when triton is imported, so the compiles run in
a fresh process without it.

`pytest -s tests/test_gpu_compile.py` prints the shared memory, registers and spills of every compile.
ALEXNET_TRITON_COMPILE_ALL_CONFIGS=1 compiles every conv config, not just the default one (several minutes).
"""

import dataclasses
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
import triton
import triton.language as tl
from alexnet_triton.kernels import _common, conv, dropout, lrn, pool
from helpers import reference_backend_env
from triton.runtime.autotuner import Autotuner, Heuristics

# An H100's limits, checked when a kernel is loaded; the autotuner drops a config over them (OutOfResources). That is
# acceptable for some configs of a kernel, not for all: 227 KiB of shared memory per block
# (cudaDevAttrMaxSharedMemoryPerBlockOptin), 64Ki registers and 1024 threads per block.
H100_MAX_SHARED_BYTES = 232448
H100_MAX_REGISTERS_PER_BLOCK = 65536
H100_MAX_THREADS_PER_BLOCK = 1024

TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
DTYPES = [TRITON_TYPES[dtype] for dtype in _common.SUPPORTED_DTYPES]

ALL_CONFIGS = os.environ.get("ALEXNET_TRITON_COMPILE_ALL_CONFIGS", "") not in ("", "0")

# Runs in a fresh process. The jobs (kernel, cases) arrive on stdin as JSON; the kernel files are imported and Triton
# warmed up once, then every case compiles in its own forked child, as many at a time as there are CPU cores, so a
# compiler crash is pinned on its case. Everything is written under the folder named by argv[1], the results to
# results.json. Triton runs ptxas with -v, and TRITON_DUMP_PTXAS_LOG makes it print that log (registers, spills) to
# stdout, which the child captures.
COMPILE_SCRIPT = r"""
import contextlib, importlib, io, json, os, re, sys, time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)  # H100


def jit_function(module, name):
    fn = getattr(importlib.import_module(module), name)
    while not isinstance(fn, triton.runtime.JITFunction):  # under @triton.autotune / @triton.heuristics
        fn = fn.fn
    return fn


def compile_case(fn, case):
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            source = ASTSource(fn, case["signature"], constexprs=case["constexprs"])
            compiled = triton.compile(source, target=TARGET, options=case["options"])
    except Exception as error:  # what would stop the autotuner at run time on a GPU
        return {"error": f"{type(error).__name__}: {error}", "seconds": time.perf_counter() - start}
    ptx, ptxas_log = compiled.asm["ptx"], log.getvalue()

    def number(pattern):
        found = re.search(pattern, ptxas_log)
        return int(found.group(1)) if found else None

    return {
        "shared": compiled.metadata.shared,
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "tensor_cores": re.search(r"\b(wgmma\.mma_async|mma\.sync)\b", ptx) is not None,
        "seconds": time.perf_counter() - start,
    }


jobs = json.load(sys.stdin)
functions = [jit_function(job["module"], job["kernel"]) for job in jobs]
scratch = os.path.join(sys.argv[1], "cases")
os.makedirs(scratch)
# The first compile in a process sets Triton and LLVM up (0.5 s): done here, for the cheapest kernel's first case,
# so that every child inherits it.
with open(os.path.join(scratch, f"{len(jobs) - 1}-0.json"), "w") as out:
    json.dump(compile_case(functions[-1], jobs[-1]["cases"][0]), out)
tasks = [(j, i) for j, job in enumerate(jobs) for i in range(len(job["cases"]))]  # slowest kernels first
tasks.remove((len(jobs) - 1, 0))
running, pending = {}, list(reversed(tasks))
while pending or running:
    while pending and len(running) < len(os.sched_getaffinity(0)):
        j, i = task = pending.pop()
        path = os.path.join(scratch, f"{j}-{i}")
        pid = os.fork()
        if pid == 0:
            try:
                with open(path + ".err", "w") as err:
                    os.dup2(err.fileno(), 2)
                result = compile_case(functions[j], jobs[j]["cases"][i])
                with open(path + ".json", "w") as out:
                    json.dump(result, out)
            finally:
                os._exit(0)
        running[pid] = task
    pid, status = os.wait()
    j, i = running.pop(pid)
    path = os.path.join(scratch, f"{j}-{i}")
    if not os.path.exists(path + ".json"):
        with open(path + ".err") as err:
            stderr = err.read()[-3000:]
        result = {"error": f"the compiler crashed (wait status {status}): {stderr}"}
        with open(path + ".json", "w") as out:
            json.dump(result, out)
results = {}
for j, job in enumerate(jobs):
    results[job["name"]] = []
    for i in range(len(job["cases"])):
        with open(os.path.join(scratch, f"{j}-{i}.json")) as f:
            results[job["name"]].append(json.load(f))
with open(os.path.join(sys.argv[1], "results.json"), "w") as out:
    json.dump(results, out)
"""


# ---------------------------------------------------------------------------------------------
# What each kernel is compiled with
# ---------------------------------------------------------------------------------------------


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
    configs_to_compile: Callable[[list[triton.Config]], list[triton.Config]] = list

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
    memory every dtype fits. ALEXNET_TRITON_COMPILE_ALL_CONFIGS=1 compiles them all."""
    if ALL_CONFIGS:
        return configs
    chosen = [c for c in configs if c.kwargs == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64} and c.num_warps == 4]
    assert chosen, "conv's _GPU_CONFIGS lost BLOCK 64x64x64 with 4 warps: choose another default in one_conv_config"
    return chosen


def lrn_meta(dtype: str) -> list[dict]:
    return [{"SIZE": 5, "SIZE_P2": 8}]  # AlexNet's window


def pool_meta(dtype: str) -> list[dict]:
    """AlexNet's overlapping pool in NCHW, and a padded one in channels_last: both layouts, with and without padding."""
    window = {"KH": 3, "KW": 3, "SH": 2, "SW": 2}
    return [
        {**window, "PH": 0, "PW": 0, "CHANNELS_LAST": False},
        {**window, "PH": 1, "PW": 1, "CHANNELS_LAST": True},
    ]


SPECS = [
    KernelSpec(
        conv._conv_fwd_kernel,
        lambda dtype: with_tf32(dtype, HAS_BIAS=True),
        uses_dot=True,
        configs_to_compile=one_conv_config,
    ),
    KernelSpec(conv._conv_dgrad_kernel, with_tf32, uses_dot=True, configs_to_compile=one_conv_config),
    KernelSpec(
        conv._conv_wgrad_kernel,
        lambda dtype: with_tf32(dtype, HAS_BIAS=True),
        pointers={"dw_part_ptr": "*acc", "db_part_ptr": "*acc"},
        uses_dot=True,
        configs_to_compile=one_conv_config,
    ),
    KernelSpec(lrn._lrn_fwd_kernel, lrn_meta, floats=("alpha_over_size", "beta", "k")),
    KernelSpec(lrn._lrn_bwd_kernel, lrn_meta, floats=("alpha_over_size", "beta", "k", "two_alpha_beta_over_size")),
    KernelSpec(pool._max_pool_fwd_kernel, pool_meta, pointers={"pos_ptr": "*u8"}),
    KernelSpec(pool._max_pool_bwd_kernel, pool_meta, pointers={"pos_ptr": "*u8"}),
    KernelSpec(dropout._dropout_kernel, lambda dtype: [{}], pointers={"seed_ptr": "*i64"}, floats=("p", "scale")),
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


def compile_cases(spec: KernelSpec) -> list[dict]:
    """One case per (dtype, constexpr values, GPU config): the arguments of triton.compile, and labels."""
    flags = constexpr_flags(spec)
    unknown = (set(spec.pointers) | set(spec.floats)) - set(flags)
    assert not unknown, f"{spec.name}: the spec names arguments the kernel does not have: {sorted(unknown)}"
    # The kernel file's list: under the interpreter the kernels are not autotuned.
    configs = spec.configs_to_compile(sys.modules[spec.function.__module__]._GPU_CONFIGS)
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


# ---------------------------------------------------------------------------------------------
# Compiling, in a fresh process
# ---------------------------------------------------------------------------------------------


def nvidia_backend_missing() -> str | None:
    """Why this machine cannot compile for an NVIDIA GPU, or None when it can."""
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        return "Triton's NVIDIA backend (triton.backends.nvidia) is not installed"
    try:
        triton.knobs.nvidia.ptxas  # noqa: B018 (looks for ptxas and runs `ptxas --version`)
    except Exception as error:
        return f"Triton's NVIDIA backend has no working ptxas: {type(error).__name__}: {error}"
    return None


def compile_in_fresh_process(specs: list[KernelSpec], workdir) -> dict[str, list[dict]]:
    """Kernel name -> one result per case of compile_cases: the case, and its error or its resource use."""
    cases = {spec.name: compile_cases(spec) for spec in specs}
    jobs = [
        {
            "name": spec.name,
            "module": spec.function.__module__,
            "kernel": spec.function.__name__,
            "cases": cases[spec.name],
        }
        for spec in specs
    ]
    # A fresh cache, so every kernel is really compiled (and ptxas prints its log) on every run.
    env = reference_backend_env(TRITON_CACHE_DIR=str(workdir / "cache"), TRITON_DUMP_PTXAS_LOG="1")
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT, str(workdir)],
        input=json.dumps(jobs),
        env=env,
        capture_output=True,
        text=True,
        timeout=3600 if ALL_CONFIGS else 600,
    )
    assert result.returncode == 0, f"the compile process failed:\n{result.stderr[-5000:]}"
    outcomes = json.loads((workdir / "results.json").read_text())
    return {
        name: [{**case, **outcome} for case, outcome in zip(cases[name], outcomes[name], strict=True)] for name in cases
    }


@pytest.fixture(scope="module")
def compiled(request, tmp_path_factory):
    """Kernel name -> its compile results, for the kernels this session runs, compiled together."""
    reason = nvidia_backend_missing()
    if reason is not None:
        pytest.skip(reason)
    wanted = set()
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "module", None) is request.module and callspec is not None and "kernel" in callspec.params:
            wanted.add(callspec.params["kernel"])
    specs = [spec for spec in SPECS if spec.name in wanted]  # in SPECS' order: the slowest (conv) first
    return compile_in_fresh_process(specs, tmp_path_factory.mktemp("gpu_compile"))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


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
    and tl.dot runs on tensor cores where it should."""
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
            if resource_problem(result) is None:
                fits.append(result)
        if not fits:
            refused = "; ".join(f"{r['config']}: {first_line(r.get('error')) or resource_problem(r)}" for r in group)
            problems.append(f"{where}: no config fits an H100: {refused}")
    assert not problems, "\n".join(problems)
