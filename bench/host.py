"""Host overhead: the Python and C++ a warm GPU run executes on the host for each public op call, and the launches
of a training step, measured on a CPU with every Triton launch stopped at the compiled kernel's launch.

    python -m bench.host                                  # the markdown table (about 20 s)
    python -m bench.host --out bench/results/host-overhead.md
    python -m bench.host --json results.json              # every sample and count, as JSON
    python -m bench.host --profile conv2:forward+backward # cProfile of our op's calls

What runs as on a GPU: the public function's checks, autocast and dispatch, torch's dispatcher and autograd,
torch.library.triton_op and wrap_triton, the launcher (`kernels/_common.py`), the checked autotuner's key and
cache lookup, output allocation, every ATen op a launcher issues, and either Triton's own `JITFunction.run` (binding
the arguments, the specialization key, the compiled-kernel cache lookup) or, for a launch repeated at a key it ran
at, the launcher's remembered launch (`kernels/launch_cache.py`), down to `CompiledKernel.run`, the compiled launcher
that would call the driver. There each launch is recorded by name and returns.

How: in a process without TRITON_INTERPRET (the kernels are then the compiled path's objects: CheckedAutotuner
over JITFunction; `python -m bench.host` starts one itself if need be), CPU tensors are sent down the compiled path
(`backend()` answers "triton" for them), Triton's active driver is a stand-in for CUDA's (device 0, stream 0, an
sm_90 target), each kernel variant is "compiled" into a stub whose `run` records the launch (a variant's first
call goes through Triton's cache miss, later calls through its cache hit, as in a warm GPU run), and each autotuner
answers from memory: its first call at a key caches the first candidate its pruning keeps, without running or
checking anything; every later call is the warm path unchanged. `--stub-at jit-run` stops at JITFunction.run
instead, leaving Triton's own per-launch work out.

Not included: the driver's launch call and the compiled launcher's C code that packs the arguments for it, the
CUDA device guard a launch enters on a GPU (`torch.cuda.device`; skipped for CPU tensors), the real
`torch.cuda.current_device` and current-stream queries (the stand-in driver answers 0), the SM-count query of a
conv launch (`conv_tuning.sm_count`, asked once per device on a GPU), CUDA's caching allocator (the CPU's allocator
serves), and any GPU time.

Timed shapes ("host-bound"): each of AlexNet's per-tower layer cases keeps its op, arguments, kernel, stride,
padding, rank and layout, at batch 1 with 16 channels (3 where the paper's layer has fewer than 16, so conv1 keeps
its packed path) and maps of a few pixels: at the paper's shapes the CPU would also do the data work of the ATen
ops a launcher issues (weight copies, partial sums), which a GPU does on the device (`--paper-shapes` times there
anyway). That the small call takes the same path is checked: it must launch the same Triton kernels and ATen ops,
in the same order, as the paper's shapes, or the run fails. 4-D arguments are channels_last (the fast path).

Launches are counted, not timed: Triton's by the stubs, ATen's by a TorchDispatchMode (AtenLaunches: an ATen op
that computes or moves tensor data counts one launch; views, allocations and metadata queries count none; a
composite op counts what it runs; a multi-tensor op such as the fused SGD step counts one, though CUDA launches it
once per few hundred chunks; cuDNN may launch more than one kernel for a convolution). Eager is PyTorch's ops on
the same CPU tensors, ATen's CPU kernels standing in for its CUDA ones (dropout as ATen runs it for CUDA tensors:
one native_dropout); the training step's eager twin is `twin.GroupedAlexNet`. Ours' step is counted with the
reductions split as for an H100, at batch 128 by default (a launcher's splits depend on the batch).
"""

import argparse
import contextlib
import gc
import importlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import torch
import torch.nn.functional as F
import triton
from alexnet_triton.kernels import _common, autotune, launch_cache
from alexnet_triton.kernels import conv_tuning as tuning
from torch.utils._python_dispatch import TorchDispatchMode

import alexnet_triton as at
from alexnet_triton.model import DROPOUT_P, OVERLAPPING_POOL, PAPER_LRN, layer_shapes
from alexnet_triton.twin import GroupedAlexNet
from bench.workloads import CLASSES, DIRECTIONS, OpCase, alexnet_cases, conv_case

IMPLEMENTATIONS = ("ours", "eager")
# An H100's streaming multiprocessors: launchers split a reduction over SMs when a GEMM has fewer output tiles
# than that (fc6 and fc7), which adds ATen ops; the training step is counted as on an H100.
H100_SMS = 132
# The per-op case's channels and maps at host-bound shapes (see the module docstring).
SMALL_CHANNELS = 16
SMALL_MAP = 5
# The modules whose public functions pick a backend (each imported `backend` by name).
FUNCTIONAL_MODULES = tuple(
    f"alexnet_triton.functional.{name}" for name in ("conv", "lrn", "pool", "lrn_pool", "dropout")
)


# ---------------------------------------------------------------------------------------------
# Stopping every Triton launch at the compiled kernel's launch
# ---------------------------------------------------------------------------------------------


class LaunchLog:
    """The Triton launches the stubs saw, by kernel name, each with the phase it happened in; with `arguments` a
    list, also what each compiled launch was given (described: tensors by dtype, shape and strides)."""

    def __init__(self):
        self.launches: list[tuple[str, str]] = []
        self.phase = "-"
        self.arguments: list | None = None

    def record(self, name: str, launch_arguments: tuple = ()) -> None:
        self.launches.append((self.phase, name))
        if self.arguments is not None:
            self.arguments.append((name, [_described(value) for value in launch_arguments]))

    def clear(self) -> None:
        self.launches.clear()


def _described(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.stride(), value.data_ptr() % 16)
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return f"{type(value).__name__}@{id(value)}"  # a hook chain, a handle: the same object or not


TRITON = LaunchLog()


class StubKernel:
    """What Triton's compile would have returned for one kernel variant: `run` is where the compiled launcher
    (the driver's launch) would be called; it records the launch instead."""

    def __init__(self, name: str):
        self.name = name
        self.function = None  # the CUfunction handle
        self.packed_metadata = None

    def launch_metadata(self, grid, stream, *args):
        return None  # CompiledKernel.launch_metadata's answer without a launch_enter_hook

    def run(self, *launch_arguments) -> None:
        TRITON.record(self.name, launch_arguments)


class StubDriver:
    """Triton's active driver, answering for a current CUDA device 0 of compute capability 9.0 (an H100)."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int) -> int:
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _stub_compile(self, key, signature, device, *rest, **options):
    """JITFunction._do_compile: a stub kernel, cached under Triton's own key, so later calls hit its cache."""
    kernel = StubKernel(self.__name__)
    self.device_caches[device][0][key] = kernel
    return kernel


def _stub_run(self, *args, grid, warmup, **kwargs):
    """JITFunction.run, for --stub-at jit-run: the launch recorded where Triton's run would begin."""
    TRITON.record(self.__name__)


def _from_memory(self, key, args, kwargs, named):
    """CheckedAutotuner.tune: the first candidate the pruning keeps, cached at the key; nothing run or checked."""
    candidates = self.prune(self.configs, named) if self.prune else list(self.configs)
    self.cache[key] = candidates[0]
    return candidates[0]


def _on_the_compiled_path(device) -> str:
    return "triton"


STUB_LEVELS = ("launch", "jit-run")


@contextlib.contextmanager
def compiled_path_on_cpu(*, stub_at: str = "launch", sms: int | None = None) -> Iterator[None]:
    """Within it, the public ops take the compiled (GPU) path on CPU tensors and every Triton launch is stopped
    and recorded in TRITON: at the compiled kernel's launch (stub_at="launch") or at JITFunction.run
    ("jit-run", which leaves out Triton's binding, specialization key and cache lookup). sms: the SM count the
    launchers plan their reduction splits for (None: a CPU's answer, no splits). Everything is restored on exit.

    Needs a process whose kernels were built without TRITON_INTERPRET (`python -m bench.host` is one)."""
    if _common.INTERPRET:
        raise RuntimeError(
            "the kernels were built for Triton's interpreter (TRITON_INTERPRET=1 before import); measure host "
            "overhead in a process without it: python -m bench.host, or bench.host.measure_in_subprocess"
        )
    if stub_at not in STUB_LEVELS:
        raise ValueError(f"stub_at must be one of {STUB_LEVELS}, got {stub_at!r}")
    from triton.runtime.jit import JITFunction

    driver = importlib.import_module("triton.runtime.driver").driver
    modules = [importlib.import_module(name) for name in FUNCTIONAL_MODULES]
    tuners = _autotuners()
    saved = {
        "tuned": [dict(tuner.cache) for tuner in tuners],
        "devices": [set(tuner.fn.device_caches) for tuner in tuners],
        "backends": [module.backend for module in modules],
        "driver": driver._active,
        "compile": JITFunction.__dict__["_do_compile"],
        "run": JITFunction.__dict__["run"],
        "tune": autotune.CheckedAutotuner.__dict__["tune"],
        "sm_count": tuning.sm_count,
    }
    launch_cache.forget()  # launches remembered outside are not the stubs' (and theirs must not outlive them)
    try:
        for module in modules:
            module.backend = _on_the_compiled_path
        driver.set_active(StubDriver())
        JITFunction._do_compile = _stub_compile
        if stub_at == "jit-run":
            JITFunction.run = _stub_run
        autotune.CheckedAutotuner.tune = _from_memory
        tuning.sm_count = (lambda device: sms) if sms is not None else saved["sm_count"]
        yield
    finally:
        launch_cache.forget()
        for module, backend in zip(modules, saved["backends"], strict=True):
            module.backend = backend
        driver._active = saved["driver"]
        JITFunction._do_compile = saved["compile"]
        JITFunction.run = saved["run"]
        autotune.CheckedAutotuner.tune = saved["tune"]
        tuning.sm_count = saved["sm_count"]
        for tuner, tuned, devices in zip(tuners, saved["tuned"], saved["devices"], strict=True):
            tuner.cache.clear()  # what it answered from memory is no tuning result
            tuner.cache.update(tuned)
            for device in set(tuner.fn.device_caches) - devices:  # made for the stand-in driver's target
                del tuner.fn.device_caches[device]
            for kernels, *_ in tuner.fn.device_caches.values():
                for key in [key for key, kernel in kernels.items() if isinstance(kernel, StubKernel)]:
                    del kernels[key]


def _autotuners() -> list:
    """Every kernel's CheckedAutotuner (each launch goes through one)."""
    tuners = []
    for name in ("conv", "conv_grad", "dropout", "lrn", "lrn_pool", "pool", "augment"):
        module = importlib.import_module(f"alexnet_triton.kernels.{name}")
        tuners += [value for value in vars(module).values() if isinstance(value, autotune.CheckedAutotuner)]
    return tuners


# ---------------------------------------------------------------------------------------------
# Counting ATen's launches
# ---------------------------------------------------------------------------------------------

# ATen ops that launch no kernel on a GPU: allocation, metadata, and aliasing the schema does not mark as a view.
NO_LAUNCH = frozenset(
    {
        "aten::empty",
        "aten::empty_like",
        "aten::empty_strided",
        "aten::new_empty",
        "aten::new_empty_strided",
        "aten::detach",
        "aten::alias",
        "aten::_unsafe_view",  # a view that reshape makes of a fresh copy; its schema marks no alias
        "aten::lift_fresh",
        "aten::set_",
        "aten::resize_",
        "aten::is_same_size",
        "aten::_has_compatible_shallow_copy_type",
        "aten::sym_size",
        "aten::sym_stride",
        "aten::sym_numel",
        "aten::sym_storage_offset",
        "aten::record_stream",
    }
)


def launches_a_kernel(func) -> bool:
    """The counting rule for an ATen op that reaches a backend (composite ops are counted by what they run): it
    launches one kernel on a GPU unless it only views its input (its schema returns an alias), allocates, or
    reads metadata (NO_LAUNCH)."""
    return not func.is_view and func._schema.name not in NO_LAUNCH


class AtenLaunches(TorchDispatchMode):
    """Records every ATen op that reaches the dispatcher's Python key, with the phase it ran in (`phase`):
    `launches` those that launch a kernel by `launches_a_kernel`, `skipped` the others. A call of one of our
    torch.library ops is not an ATen launch: its implementation runs under this mode, so the ATen ops it issues
    are counted (and its Triton launches reach the stubs)."""

    def __init__(self):
        super().__init__()
        self.launches: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        self.phase = "-"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "alexnet_triton":
            from torch._library.custom_ops import OPDEFS

            with self:  # the op's implementation as its backend kernel runs it, seen by this mode
                return OPDEFS[func._schema.name]._init_fn(*args, **kwargs)
        if func.namespace == "aten" and torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), "CompositeImplicitAutograd"
        ):
            # Below autograd (inside our ops) a composite op such as contiguous or reshape arrives whole; what it
            # does (a clone, or nothing) is what a GPU launches.
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        launches = func.namespace == "aten" and launches_a_kernel(func)
        (self.launches if launches else self.skipped).append((self.phase, func._schema.name))
        return func(*args, **kwargs)


@dataclass
class Count:
    """Launches in a window: Triton's by kernel name, ATen's by op name, each with its phase."""

    triton: list[tuple[str, str]] = field(default_factory=list)
    aten: list[tuple[str, str]] = field(default_factory=list)

    def names(self, kind: str, phase: str | None = None) -> list[str]:
        return [name for p, name in getattr(self, kind) if phase is None or p == phase]

    def total(self, kind: str, phase: str | None = None) -> int:
        return len(self.names(kind, phase))


class counting:  # noqa: N801 (used as a context manager, like torch's modes)
    """with counting() as counted: ...; then counted.count holds the launches made inside (Triton's and ATen's);
    counted.phase(name) tags what follows with a phase."""

    def __init__(self):
        self.count = Count()
        self.mode = AtenLaunches()

    def __enter__(self) -> "counting":
        TRITON.clear()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)
        self.count.triton = list(TRITON.launches)
        self.count.aten = list(self.mode.launches)
        TRITON.clear()
        TRITON.phase = "-"

    def phase(self, name: str) -> None:
        self.mode.phase = TRITON.phase = name


# ---------------------------------------------------------------------------------------------
# The cases: each public op at AlexNet's per-tower layer shapes, forward and forward+backward
# ---------------------------------------------------------------------------------------------


def lrn_pool_cases(batch: int, image_size: int) -> dict[str, OpCase]:
    """lrn_max_pool2d at layers 1 and 2 (what AlexNet runs there), ours and the eager composite."""
    kernel, stride = OVERLAPPING_POOL
    lrn = {name: PAPER_LRN[name] for name in ("alpha", "beta", "k")}
    cases = {}
    for shape in layer_shapes(image_size):
        if shape.layer.lrn and shape.layer.pool:
            name = f"lrn_pool{shape.layer.number}"
            cases[name] = OpCase(
                name,
                "lrn_max_pool2d",
                shapes=((batch, shape.out_channels, shape.output_size, shape.output_size),),
                needs_grad=(True,),
                ours=lambda x: at.lrn_max_pool2d(x, PAPER_LRN["size"], kernel, stride, **lrn),
                eager=lambda x: F.max_pool2d(F.local_response_norm(x, **PAPER_LRN), kernel, stride),
            )
    return cases


def cuda_dropout(x: torch.Tensor, p: float = DROPOUT_P, training: bool = True) -> torch.Tensor:
    """F.dropout as ATen runs it for a CUDA tensor: one fused native_dropout (and native_dropout_backward). For
    a CPU tensor ATen's dropout decomposes instead (bernoulli_, div_, mul), which a GPU never runs."""
    return torch.native_dropout(x, p, training)[0] if training else x


class CudaDropout(torch.nn.Dropout):
    """nn.Dropout computing cuda_dropout: the twin's dropout as it runs on a GPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cuda_dropout(x, self.p, self.training)


def paper_cases(batch: int) -> dict[str, OpCase]:
    """Every public op at AlexNet's per-tower layer shapes (227x227 images) at a batch size; eager dropout as
    on CUDA (cuda_dropout)."""
    cases = alexnet_cases(batch, 227)
    lrn_pool = lrn_pool_cases(batch, 227)
    order = ["conv1", "conv2", "conv3", "conv4", "conv5", *lrn_pool]
    every = {**cases, **lrn_pool}
    return {
        name: replace(every[name], eager=cuda_dropout) if every[name].op == "dropout" else every[name]
        for name in order + [n for n in cases if n not in order]
    }


def small_cases() -> dict[str, OpCase]:
    """The same cases at host-bound shapes: batch 1, SMALL_CHANNELS channels (fewer where the paper's layer has
    fewer), maps of a few pixels; conv kernels, strides and paddings as the paper's."""
    cases = {}
    for name, case in paper_cases(1).items():
        if case.op == "conv2d_relu":
            shape = next(s for s in layer_shapes(227) if s.layer.name == name)
            k, stride, padding = shape.kernel, shape.layer.stride, shape.layer.padding
            side = max(k + stride - 2 * padding, 3)  # two output pixels or more; larger than the kernel
            small = replace(
                shape,
                in_channels=min(shape.in_channels, SMALL_CHANNELS),
                out_channels=SMALL_CHANNELS,
                input_size=side,
            )
            cases[name] = conv_case(small, 1)
        else:
            (shape,) = case.shapes
            smaller = (1, min(shape[1], SMALL_CHANNELS), *(min(side, SMALL_MAP) for side in shape[2:]))
            cases[name] = replace(case, shapes=(smaller,))
    return cases


def make_call(case: OpCase, impl: str, direction: str, device="cpu") -> Callable[[], object]:
    """One call of the case as bench/test_ops.py times it: the forward under no_grad, or the forward and
    torch.autograd.grad of every argument that needs a gradient. 4-D arguments (inputs, conv weights) are
    channels_last, the fast path (a model after .to(memory_format=torch.channels_last), --channels-last)."""
    function = case.ours if impl == "ours" else case.eager
    arguments = []
    for shape, needs_grad in zip(case.shapes, case.needs_grad, strict=True):
        tensor = torch.randn(shape, device=device)
        if len(shape) == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        arguments.append(tensor.requires_grad_(needs_grad))
    with torch.no_grad():
        grad_out = torch.randn_like(case.eager(*arguments))
    inputs = [a for a in arguments if a.requires_grad]
    if direction == "forward":

        def forward():
            with torch.no_grad():
                return function(*arguments)

        return forward

    def forward_backward():
        return torch.autograd.grad(function(*arguments), inputs, grad_out)

    return forward_backward


def count_call(call: Callable[[], object]) -> Count:
    call()  # warm: Triton's cache and the autotuner's answer for this key
    with counting() as counted:
        call()
    return counted.count


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


ROUNDS = 10


def time_calls(calls: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[int]]:
    """Nanoseconds of each call, `repeats` times, in ROUNDS rounds that take turns between the calls so that a
    busy machine slows them alike; the garbage collector collects first and is off while timing."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[int]] = {name: [] for name in calls}
    clock = time.perf_counter_ns
    per_round = math.ceil(repeats / ROUNDS)
    gc.collect()
    gc.disable()
    try:
        for _ in range(ROUNDS):
            for name, call in calls.items():
                times = samples[name]
                for _ in range(per_round):
                    start = clock()
                    call()
                    times.append(clock() - start)
    finally:
        gc.enable()
    return samples


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1e3


class Replay:
    """A clock for pytest-benchmark that reads measured samples back (bench/test_host.py): called at a round's
    start and end, it moves on by the next sample in between."""

    __name__ = "bench.host samples (measured in a subprocess)"

    def __init__(self, samples_ns: list[int]):
        self.samples = iter(samples_ns)
        self.now = 0.0
        self.ending = False

    def __call__(self) -> float:
        if self.ending:
            self.now += next(self.samples) / 1e9
        self.ending = not self.ending
        return self.now


# ---------------------------------------------------------------------------------------------
# The training step
# ---------------------------------------------------------------------------------------------


LAYOUTS = ("contiguous", "channels_last")
PHASES = ("forward", "backward", "optimizer")


def build_models(image_size: int, layout: str) -> dict[str, torch.nn.Module]:
    """Ours (at.AlexNet, both towers on the CPU) and its eager twin with the same weights, dropout as on CUDA,
    in the layout a run uses: NCHW (the trainer's default) or channels_last (--channels-last)."""
    torch.manual_seed(0)
    ours = at.AlexNet(CLASSES, image_size=image_size, init="kaiming")
    twin = GroupedAlexNet.from_towers(ours)
    for parent in list(twin.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.Dropout:
                setattr(parent, name, CudaDropout(child.p))
    models = {"ours": ours, "eager": twin}
    if layout == "channels_last":
        models = {impl: model.to(memory_format=torch.channels_last) for impl, model in models.items()}
    return models


def count_training_step(
    model: torch.nn.Module, batch: int, image_size: int, layout: str = "contiguous", warm_steps: int = 1
) -> Count:
    """Launches of one training step as the trainer runs it (train.py: forward, cross-entropy on fp32 logits,
    zero_grad(set_to_none=True), backward, fused SGD with momentum and weight decay), counted by phase, after
    warm_steps steps (the first compiles, tunes and makes the momentum buffers). Images in the model's layout."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    images = torch.randn(batch, 3, image_size, image_size)
    if layout == "channels_last":
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(CLASSES, (batch,))

    def step(phase: Callable[[str], None]) -> None:
        phase("forward")
        loss = F.cross_entropy(model(images).float(), labels)
        phase("backward")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        phase("optimizer")
        optimizer.step()

    for _ in range(warm_steps):
        step(lambda name: None)
    TRITON.phase = "-"
    with counting() as counted:
        step(counted.phase)
    return counted.count


# ---------------------------------------------------------------------------------------------
# The whole measurement
# ---------------------------------------------------------------------------------------------


def sequence(count: Count) -> dict[str, list[str]]:
    return {"triton": count.names("triton"), "aten": count.names("aten")}


def measure(
    *, repeats: int = 500, warmup: int = 5, cases: list[str] | None = None, stub_at: str = "launch",
    paper_shapes: bool = False, verify_batch: int = 2, time_ops: bool = True, step_batch: int = 128,
    twin_batch: int = 2, image_size: int = 227, layouts: tuple[str, ...] = LAYOUTS, check: bool = False,
) -> dict:  # fmt: skip
    """Every op case (ours and eager, forward and forward+backward), timed and counted (measure_ops); a training
    step of each network counted (count_steps); with check, the harness's self-check. JSON-ready."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gc.collect()
    gc.freeze()  # what the imports made is never garbage: the collections before each timing skip it
    try:
        results = {
            "ops": measure_ops(repeats, warmup, cases, stub_at, paper_shapes, verify_batch, time_ops),
            "steps": count_steps(step_batch, twin_batch, image_size, layouts, stub_at) if step_batch else {},
        }
        if check:
            results["checks"] = self_check()
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
    results["settings"] = {
        "repeats": repeats, "warmup": warmup, "stub_at": stub_at, "threads": 1,
        "timed_shapes": "paper" if paper_shapes else "host-bound", "verify_batch": verify_batch,
        "step_batch": step_batch, "twin_batch": min(step_batch, twin_batch), "image_size": image_size,
        "sms": H100_SMS,
    }  # fmt: skip
    results["machine"] = machine()
    return results


def measure_ops(
    repeats: int, warmup: int, cases: list[str] | None, stub_at: str, paper_shapes: bool, verify_batch: int,
    time_ops: bool,
) -> list[dict]:  # fmt: skip
    """One row per op case and direction: each implementation's launches and, with time_ops, its samples. The
    host-bound call must launch what the paper's shapes at verify_batch launch (AssertionError otherwise).
    paper_shapes: time at the paper's shapes instead (the CPU then does the ATen ops' data work too)."""
    paper = paper_cases(verify_batch)
    timed = paper if paper_shapes else small_cases()
    rows = []
    with compiled_path_on_cpu(stub_at=stub_at):
        for name in [name for name in timed if cases is None or name in cases]:
            for direction in DIRECTIONS:
                calls = {impl: make_call(timed[name], impl, direction) for impl in IMPLEMENTATIONS}
                row = {"case": name, "op": timed[name].op, "direction": direction}
                for impl, call in calls.items():
                    counted = count_call(call)
                    at_paper = count_call(make_call(paper[name], impl, direction))
                    if sequence(counted) != sequence(at_paper):
                        raise AssertionError(
                            f"{name} {direction} {impl}: the host-bound shapes take another path than the paper's: "
                            f"{sequence(counted)} against {sequence(at_paper)}"
                        )
                    row[impl] = sequence(counted)
                row["shapes"] = {"timed": [list(s) for s in timed[name].shapes],
                                 "paper": [list(s) for s in paper[name].shapes]}  # fmt: skip
                if time_ops:
                    samples = time_calls(calls, repeats, warmup)
                    for impl in IMPLEMENTATIONS:
                        row[impl]["samples_ns"] = samples[impl]
                        row[impl]["median_us"] = median_us(samples[impl])
                rows.append(row)
    return rows


def count_steps(step_batch: int, twin_batch: int, image_size: int, layouts, stub_at: str) -> dict:
    """Launches of a training step by phase, ours at step_batch and the twin at twin_batch or less (its launches do
    not depend on the batch, and its CPU step computes for real), each layout, reductions split for an H100."""
    batches = {"ours": step_batch, "eager": min(step_batch, twin_batch)}
    steps = {}
    torch.set_num_threads(os.cpu_count() or 1)  # counting, not timing
    try:
        with compiled_path_on_cpu(stub_at=stub_at, sms=H100_SMS):
            for layout in layouts:
                for impl, model in build_models(image_size, layout).items():
                    counted = count_training_step(model, batches[impl], image_size, layout)
                    steps[f"{impl} {layout}"] = {
                        phase: {"triton": counted.names("triton", phase), "aten": counted.names("aten", phase)}
                        for phase in PHASES
                    }
    finally:
        torch.set_num_threads(1)
    return steps


# ---------------------------------------------------------------------------------------------
# Proof that the harness counts right (tests/test_bench_host.py reads it)
# ---------------------------------------------------------------------------------------------


def self_check(image_size: int = 67) -> dict:
    """Facts about the harness, each measured: that no kernel is compiled or launched for real, that a launch or
    an ATen op planted in a call is counted (and a view, an allocation or a no-op contiguous is not), that what
    our ops issue inside is counted, that the stubs are gone afterwards, and that the twin's launches do not
    depend on the batch."""
    import triton.compiler

    facts: dict = {}
    x = torch.randn(1, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    nchw_weight, bias = torch.randn(16, 16, 3, 3), torch.randn(16)
    calls = {"compile": 0}

    def refuse(*args, **kwargs):
        calls["compile"] += 1
        raise AssertionError("triton.compile was called: a kernel was really compiled")

    saved_compile = triton.compiler.compile, triton.compiler.compiler.compile
    triton.compiler.compile = triton.compiler.compiler.compile = refuse
    try:
        with compiled_path_on_cpu():
            fresh = torch.randn(1, 16, 7, 7).contiguous(memory_format=torch.channels_last)  # a variant never seen
            facts["fresh_variant"] = count_call(lambda: at.max_pool2d(fresh, 3, 2)).names("triton")
            kernels = [kernel for tuner in _autotuners() for caches in tuner.fn.device_caches.values()
                       for kernel in caches[0].values()]  # fmt: skip
            facts["cached_kernels"] = len(kernels)
            facts["cached_kernels_all_stubs"] = all(isinstance(kernel, StubKernel) for kernel in kernels)
            facts["remembered_launches"] = remembered_launches()

            pool = lambda: at.max_pool2d(x, 3, 2)  # noqa: E731
            facts["pool"] = sequence(count_call(pool))
            planted = {
                "clone": lambda: pool().clone(),
                "view": lambda: pool().unsqueeze(0),
                "empty_like": lambda: torch.empty_like(pool()),
                "contiguous_noop": lambda: pool().contiguous(memory_format=torch.channels_last),
                "contiguous_copy": lambda: pool().contiguous(),
            }
            facts["planted_aten"] = {name: count_call(call).names("aten") for name, call in planted.items()}
            conv = lambda: at.conv2d_relu(x, nchw_weight, bias, 1, 1)  # noqa: E731
            with torch.no_grad():
                facts["conv_nchw_weight"] = sequence(count_call(conv))
                launch = _common.launcher.__getitem__

                def twice(self, grid):
                    once = launch(self, grid)
                    return lambda *args, **kwargs: (once(*args, **kwargs), once(*args, **kwargs))[1]

                _common.launcher.__getitem__ = twice
                try:
                    facts["conv_launched_twice"] = sequence(count_call(conv))
                finally:
                    _common.launcher.__getitem__ = launch
        with compiled_path_on_cpu(stub_at="jit-run"), torch.no_grad():
            facts["conv_stopped_at_jit_run"] = sequence(count_call(conv))
    finally:
        triton.compiler.compile, triton.compiler.compiler.compile = saved_compile
    facts["compile_calls"] = calls["compile"]

    from alexnet_triton.functional import dispatch

    modules = [importlib.import_module(name) for name in FUNCTIONAL_MODULES]
    facts["restored"] = {
        "backends": all(module.backend is dispatch.backend for module in modules),
        "autotuner_caches_empty": all(not tuner.cache for tuner in _autotuners()),
        "no_stub_kernels": not any(
            isinstance(kernel, StubKernel)
            for tuner in _autotuners()
            for caches in tuner.fn.device_caches.values()
            for kernel in caches[0].values()
        ),
        "cpu_backend": at.backend("cpu"),
    }

    twin = build_models(image_size, "contiguous")["eager"]
    facts["twin_step_by_batch"] = {
        batch: sequence(count_training_step(twin, batch, image_size, warm_steps=1)) for batch in (2, 3)
    }
    return facts


def remembered_launches() -> dict:
    """Per op case, forward and backward: the compiled launches of a call at a new key (the whole way through the
    autotuner and JITFunction.run), of the same call repeated (launch_cache's way), whether they were given the
    same arguments, and how often JITFunction.run ran during the repeat; and the repeat once more with a launch
    hook set (which must go the whole way again)."""
    from triton.runtime.jit import JITFunction

    runs = {"count": 0}
    jit_run = JITFunction.run

    def counted_run(self, *args, **kwargs):
        runs["count"] += 1
        return jit_run(self, *args, **kwargs)

    facts = {}
    JITFunction.run = counted_run
    TRITON.arguments = []
    try:
        for name, case in small_cases().items():
            launch_cache.forget()
            call = make_call(case, "ours", "forward+backward")
            seen = []
            for hooked in (False, False, True):
                TRITON.arguments.clear()
                runs["count"] = 0
                with launch_hook(_no_op_hook) if hooked else contextlib.nullcontext():
                    call()
                seen.append((list(TRITON.arguments), runs["count"]))
            (first, first_runs), (again, again_runs), (hooked_args, hooked_runs) = seen
            facts[name] = {
                "launches": len(first),
                "same_arguments": first == again,
                "jit_runs_first": first_runs,
                "jit_runs_again": again_runs,
                "jit_runs_hooked": hooked_runs,
            }
    finally:
        JITFunction.run = jit_run
        TRITON.arguments = None
        launch_cache.forget()
    return facts


@contextlib.contextmanager
def launch_hook(hook) -> Iterator[None]:
    """Triton's launch_enter_hook set to hook within: added to its HookChain (Triton 3.5+), else the knob itself."""
    from triton import knobs

    chain = knobs.runtime.launch_enter_hook
    if hasattr(chain, "add"):
        chain.add(hook)
        try:
            yield
        finally:
            chain.remove(hook)
        return
    knobs.runtime.launch_enter_hook = hook
    try:
        yield
    finally:
        knobs.runtime.launch_enter_hook = chain


def _no_op_hook(metadata) -> None:
    """A launch hook that does nothing (as a profiler's would, in effect): launches must go the whole way."""


def machine() -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_in_subprocess(argv: list[str], timeout: float = 600) -> dict:
    """`python -m bench.host --json - ARGV` in a fresh process without TRITON_INTERPRET (a process whose kernels
    were built for the interpreter, as the test and bench suites' on a CPU, cannot measure), its results."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-m", "bench.host", "--json", "-", *argv],
        cwd=root, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"python -m bench.host failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _launches(entry: dict) -> str:
    return f"{len(entry['triton'])} + {len(entry['aten'])}"


def table(results: dict, label: str | None = None) -> str:
    settings, about = results["settings"], results["machine"]
    command = settings.get("command", "python -m bench.host")
    stop = "the compiled kernel's launch" if settings["stub_at"] == "launch" else "Triton's JITFunction.run"
    if settings["timed_shapes"] == "paper":
        shapes = (
            f"AlexNet's per-tower layer shapes at batch {settings['verify_batch']} (the CPU also does the data work "
            "of the ATen ops: ours' weight copies and partial sums, eager's whole computation)"
        )
    else:
        shapes = (
            "each of AlexNet's per-tower layer cases at host-bound sizes: batch 1, 16 channels (conv1's 3 kept), "
            "maps of a few pixels, the paper's kernels, strides and paddings; checked to launch the same Triton "
            f"kernels and ATen ops, in the same order, as the paper's shapes at batch {settings['verify_batch']}"
        )
    lines = [
        "# Host overhead: Triton launches stubbed, not GPU time" + (f" ({label})" if label else ""),
        "",
        f"{about['date']}, `{command}` (bench/host.py): {about['cpu']}, {about['cores']} cores, one torch "
        f"thread, Python {about['python']}, torch {about['torch']}, triton {about['triton']}. Other work shared the "
        f"machine (load average {about['load_average']:.1f} at the end), so each figure is the median of "
        f"{settings['repeats']} calls, ours and eager taking turns.",
        "",
        f"Host time of one call: the Python and C++ a warm GPU run executes on the host for it, every Triton launch "
        f"stopped at {stop} (recorded there), on CPU tensors sent down the compiled path; autotuners answer from "
        "memory. Not included: the driver's launch call and the compiled launcher's argument packing, the CUDA "
        "device guard of each launch, the SM-count query of a conv launch, CUDA's caching allocator (the CPU's "
        "allocator serves), and all GPU time. "
        "Eager: PyTorch's ops (F.conv2d + F.relu, F.local_response_norm, F.max_pool2d, dropout as on CUDA) on the "
        "same CPU tensors, ATen's CPU kernels standing in for its CUDA ones (their tiny data work included, "
        f"cuDNN's host work not). Shapes: {shapes}. 4-D arguments channels_last; fp32.",
        "",
        "Launches: Triton + ATen per call. ATen: each op that computes or moves data counts one launch; views, "
        "allocations and metadata count none.",
        "",
    ]
    if results["ops"]:
        lines += [
            "| op | layer | direction | ours µs | eager µs | ours / eager | ours launches | eager launches |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in results["ops"]:
            ours, eager = row["ours"], row["eager"]
            times = "— | — | —"  # --no-timing
            if "median_us" in ours:
                ratio = ours["median_us"] / eager["median_us"]
                times = f"{ours['median_us']:.0f} | {eager['median_us']:.0f} | {ratio:.1f}"
            launches = f"{_launches(ours)} | {_launches(eager)}"
            lines.append(f"| {row['op']} | {row['case']} | {row['direction']} | {times} | {launches} |")
        lines.append("")
    if results["steps"]:
        lines += step_table(results)
    return "\n".join(lines)


def step_table(results: dict) -> list[str]:
    settings, steps = results["settings"], results["steps"]
    lines = [
        f"## Launches per training step ({settings['image_size']}x{settings['image_size']}, fp32, reductions split "
        f"as for an H100's {settings['sms']} SMs)",
        "",
        "The trainer's step (train.py): forward, cross-entropy, zero_grad(set_to_none=True), backward, fused SGD "
        f"with momentum and weight decay; counted after a warm step. Ours: `at.AlexNet` at batch "
        f"{settings['step_batch']}, both towers on one device (how a launcher splits a reduction depends on the "
        f"batch); eager: `twin.GroupedAlexNet` holding the same weights, its dropout as on CUDA, at batch "
        f"{settings['twin_batch']} (its launches do not depend on the batch; its CPU step computes for real). "
        "contiguous: the trainer's default; channels_last: model and images channels_last (--channels-last).",
        "",
        "| network | layout | phase | Triton | ATen | all | ATen ops |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, phases in steps.items():
        impl, layout = name.split()
        totals = [0, 0]
        for phase, entry in phases.items():
            triton_launches, aten_launches = len(entry["triton"]), len(entry["aten"])
            totals[0] += triton_launches
            totals[1] += aten_launches
            ops = ", ".join(f"{op.removeprefix('aten::')} {n}" for op, n in Counter(entry["aten"]).most_common())
            lines.append(
                f"| {impl} | {layout} | {phase} | {triton_launches} | {aten_launches} "
                f"| {triton_launches + aten_launches} | {ops or '—'} |"
            )
        lines.append(f"| {impl} | {layout} | **step** | **{totals[0]}** | **{totals[1]}** | **{sum(totals)}** | |")
    lines.append("")
    return lines


def profile(case: str, direction: str = "forward+backward", *, calls: int = 200, stub_at: str = "launch") -> int:
    """Prints cProfile's top 25 functions by cumulative time over `calls` warm calls of our op at the host-bound
    shapes."""
    import cProfile
    import pstats

    torch.set_num_threads(1)
    with compiled_path_on_cpu(stub_at=stub_at):
        call = make_call(small_cases()[case], "ours", direction)
        for _ in range(10):
            call()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            call()
        profiler.disable()
    print(f"{case} {direction}, ours, {calls} calls:")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.host", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument("--label", help="added to the table's title (e.g. 'before issue 22')")
    parser.add_argument("--json", help="write every sample and count as JSON here ('-': stdout, no table)")
    parser.add_argument("--repeats", type=int, default=500, help="timed calls per op case and implementation")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--step-batch", type=int, default=128, help="our training step's batch (0: no step)")
    parser.add_argument("--twin-batch", type=int, default=2, help="the twin's step batch (its launches do not vary)")
    parser.add_argument("--image-size", type=int, default=227, help="the training step's image side")
    parser.add_argument("--verify-batch", type=int, default=2, help="batch of the paper-shape path check")
    parser.add_argument("--cases", help="comma-separated op cases (conv1, lrn_pool1, pool5, ...; default all)")
    parser.add_argument("--no-timing", action="store_true", help="count launches only")
    parser.add_argument("--stub-at", choices=STUB_LEVELS, default="launch", help="where each Triton launch stops")
    parser.add_argument("--self-check", action="store_true", help="add the harness's self-check to the JSON")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="the training steps' layouts")
    parser.add_argument(
        "--profile", metavar="CASE:DIRECTION",
        help="instead: cProfile 200 calls of ours (e.g. conv2:forward+backward), top 25 by cumulative time",
    )  # fmt: skip
    parser.add_argument(
        "--paper-shapes", action="store_true",
        help="time at the paper's shapes (batch --verify-batch): the CPU then also does the ATen ops' data work",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if _common.INTERPRET:  # the kernels are the interpreter's: measure in a process without it
        env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "bench.host", *(argv or sys.argv[1:])], env=env)
    if args.profile:
        return profile(*args.profile.split(":"), stub_at=args.stub_at)
    results = measure(
        repeats=args.repeats, warmup=args.warmup, step_batch=args.step_batch, twin_batch=args.twin_batch,
        image_size=args.image_size,
        stub_at=args.stub_at, cases=args.cases.split(",") if args.cases else None, verify_batch=args.verify_batch,
        time_ops=not args.no_timing, paper_shapes=args.paper_shapes, check=args.self_check,
        layouts=tuple(args.layouts.split(",")),
    )  # fmt: skip
    if args.json == "-":
        json.dump(results, sys.stdout)
        return 0
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out)
    results["settings"]["command"] = "python -m bench.host " + shlex.join(argv if argv is not None else sys.argv[1:])
    text = table(results, args.label)
    print(text)
    if args.out:
        with open(args.out, "w") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
