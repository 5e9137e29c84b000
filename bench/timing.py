"""How a call is timed and its memory measured, the footing every implementation is timed on, and the device's peaks
that numbers are compared with.

GPU time: the host must never be inside a timed window. Our ops spend 25-100 us of Python per call, eager PyTorch
about 10; a window that opens before the host has queued its work times the host. So every window is primed: a
sleep kernel, longer than the host takes to queue the window, runs ahead of the start event, and the window's work
is all queued before the GPU reaches it. What is queued is a CUDA graph of warm calls where the call can be
captured (graph), else the warm calls themselves (primed). A call that waits for the GPU (a host sync) cannot be
primed: it is timed unprimed and says so. Off a GPU, wall-clock. Each result names its method.
"""

import contextlib
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import cycle

import torch
from alexnet_triton.kernels import _common
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.benchmark import Timer

from alexnet_triton.step_graph import CudaGraphs
from alexnet_triton.step_graph import _cause as capture_cause

# H100's L2 is 50 MB: inputs rotate through at least twice that, so a small op reads from memory as it
# would inside a network, rather than from the cache its previous call warmed.
ROTATION_BYTES_PER_L2 = 2
MAX_ROTATION = 16
# A median needs no more, and every round is stored in the JSON.
MAX_ROUNDS = 1000

# The methods, as results name them in extra_info["gpu_timing"].
GRAPH, PRIMED, UNPRIMED, WALL_CLOCK = "cuda-graph", "primed", "unprimed", "wall-clock"
GRAPH_UNPRIMED = f"{GRAPH}, {UNPRIMED}"
METHODS = {
    GRAPH: "a CUDA graph of warm calls replayed between CUDA events, each replay queued behind a sleep kernel",
    GRAPH_UNPRIMED: "a CUDA graph of warm calls replayed between CUDA events; the replay's queuing was never primed",
    PRIMED: "warm calls (their capture failed) queued behind a sleep kernel, between CUDA events",
    UNPRIMED: "warm calls between CUDA events; the call waits for the GPU, so its host time is inside the window",
    WALL_CLOCK: "wall-clock (no GPU)",
}
# Eager calls on the capture's side stream before it (PyTorch's whole-network recipe warms up 3 times): whatever a
# first call on a new stream makes lazily is made outside the graph.
CAPTURE_WARMUP = 3
# A graph holds as many calls as the host queues in about this long (a multiple of the rotation, so every argument
# set is read equally), and at most MAX_GRAPH_CALLS: a replay of a small op is then many of its calls, far longer
# than the events' half-microsecond resolution, while capture stays quick and the graph small.
GRAPH_CALLS_HOST_S = 0.05
MAX_GRAPH_CALLS = 64
# An uncapturable call is queued this many times a window where the host takes under PRIMED_WINDOW_HOST_S for them
# all, so that a window is long next to the events' resolution, and few enough that the launches fit CUDA's queue
# (about a thousand pending launches) while the GPU sleeps.
PRIMED_WINDOW_HOST_S = 1e-3
MAX_PRIMED_CALLS = 8
# The sleep ahead of a window lasts twice the host's time to queue it, plus this: room for the sleep kernel's own
# launch and for the clock's calibration (which only sizes the sleep: whether it was long enough is measured).
PRIME_MARGIN_S = 50e-6
# A window whose queuing outlasted its sleep is timed again behind a sleep twice as long, this many times; a call
# that still outlasts it is waiting for the GPU itself.
PRIME_TRIES = 4
# Windows per result: the budget's worth, within these.
MIN_WINDOWS, MAX_WINDOWS = 10, 200
# Cycles the sleep kernel is calibrated with: a few milliseconds at any clock.
CALIBRATION_CYCLES = 10_000_000


@dataclass(frozen=True)
class Settings:
    device: torch.device
    batch: int
    image_size: int
    warmup: int  # calls before timing: the first compiles and autotunes
    seconds: float  # timing budget per benchmark
    min_rounds: int

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def rotation(device: torch.device, bytes_per_call: int) -> int:
    """How many argument sets to cycle through so the L2 cache cannot hold them all."""
    if device.type != "cuda":
        return 1
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    return max(1, min(MAX_ROTATION, math.ceil(ROTATION_BYTES_PER_L2 * l2_bytes / max(bytes_per_call, 1))))


class rotating:  # noqa: N801 (a call, as the function it was)
    """A call without arguments that takes the next argument set each time; `period` calls read every set once."""

    def __init__(self, call: Callable[..., object], argument_sets: list):
        self.call, self.sets, self.period = call, cycle(argument_sets), len(argument_sets)

    def __call__(self) -> object:
        return self.call(*next(self.sets))


# ---- the GPU's time ------------------------------------------------------------------------------------------------


class CudaRuntime:
    """All of torch.cuda that GPU timing uses: the host's clock, events, the sleep kernel, syncs and graphs. Tests
    give gpu_time a stand-in that simulates a GPU's queue."""

    _cycles_per_s: dict[torch.device, float] = {}

    def __init__(self, device: torch.device):
        self.device = device

    now = staticmethod(time.perf_counter)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def event(self):
        return torch.cuda.Event(enable_timing=True)

    @staticmethod
    def elapsed_s(start, end) -> float:
        return start.elapsed_time(end) / 1e3

    def sleep(self, seconds: float) -> None:
        """Queue a kernel that spins for `seconds` (torch.cuda._sleep counts clock cycles: calibrated once)."""
        torch.cuda._sleep(max(1, int(seconds * self.cycles_per_s())))

    def cycles_per_s(self) -> float:
        if self.device not in self._cycles_per_s:
            torch.cuda._sleep(CALIBRATION_CYCLES)  # the first launch loads the kernel
            start, end = self.event(), self.event()
            start.record()
            torch.cuda._sleep(CALIBRATION_CYCLES)
            end.record()
            end.synchronize()
            self._cycles_per_s[self.device] = CALIBRATION_CYCLES / self.elapsed_s(start, end)
        return self._cycles_per_s[self.device]

    def graphs(self) -> CudaGraphs:
        return CudaGraphs(self.device)


def cuda_runtime(device: torch.device) -> CudaRuntime:
    return CudaRuntime(device)


class NotPrimed(Exception):
    """The host took longer to queue a window than every sleep ahead of it: the call waits for the GPU."""


def primed_window(runtime, enqueue: Callable[[], object], host_s: float) -> tuple[float, float]:
    """(GPU seconds between the events around enqueue()'s work, the host's seconds to queue the window), the window
    queued behind a sleep kernel sized to outlast the host's queuing (2 host_s and a margin).

    Checked, not assumed: an event before the sleep times how long the GPU really slept, and since the GPU cannot
    reach that event before the host queues it, the window was all queued before the GPU reached its start exactly
    when the host's time from that event to the end event is shorter than the sleep. A window that fails the check
    is timed again behind a longer sleep; NotPrimed when none holds (the call waits for the GPU)."""
    for _ in range(PRIME_TRIES):
        before, start, end = runtime.event(), runtime.event(), runtime.event()
        queued_from = runtime.now()
        before.record()
        runtime.sleep(2 * host_s + PRIME_MARGIN_S)
        start.record()
        enqueue()
        end.record()
        queued = runtime.now() - queued_from
        runtime.synchronize()
        slept = runtime.elapsed_s(before, start)
        if queued < slept:
            return runtime.elapsed_s(start, end), queued
        host_s = max(2 * host_s, queued)
    raise NotPrimed(f"queuing a window took {queued * 1e6:.0f} us, longer than the {slept * 1e6:.0f} us sleep ahead")


def unprimed_window(runtime, enqueue: Callable[[], object]) -> float:
    start, end = runtime.event(), runtime.event()
    start.record()
    enqueue()
    end.record()
    runtime.synchronize()
    return runtime.elapsed_s(start, end)


def _windows_for(budget_s: float, window_s: float) -> int:
    return max(MIN_WINDOWS, min(MAX_WINDOWS, int(budget_s / max(window_s, 1e-6))))


def graph_calls(period: int, wall_s: float) -> int:
    """Calls one graph captures: a multiple of the rotation's period, about GRAPH_CALLS_HOST_S of host time."""
    wanted = min(MAX_GRAPH_CALLS, GRAPH_CALLS_HOST_S / max(wall_s, 1e-9))
    return period * max(1, int(wanted // period))


def primed_calls(wall_s: float) -> int:
    return max(1, min(MAX_PRIMED_CALLS, int(PRIMED_WINDOW_HOST_S / max(wall_s, 1e-9))))


def gpu_time(call: Callable[[], object], runtime, wall_s: float, budget_s: float) -> dict:
    """The GPU's median seconds per warm call, and how they were measured (the module's docstring):

    - ``gpu_timing``: GRAPH, PRIMED or UNPRIMED; ``gpu_calls_per_window`` and ``gpu_windows``: each window's calls
      and the windows timed; ``capture_error``: why the call could not be captured (PRIMED, UNPRIMED).

    wall_s: a warm call's wall-clock time, which sizes the graph and the windows; budget_s: roughly the GPU time to
    spend. In a graph, consecutive calls take consecutive argument sets (the rotation), so each reads its inputs from
    memory as in the wall-clock timing; the L2 cache is not flushed in between (a flush inside the graph would be
    inside the window)."""
    period = getattr(call, "period", 1)
    graphs = runtime.graphs()
    with graphs.side_stream():
        for _ in range(CAPTURE_WARMUP):
            call()
    runtime.synchronize()
    calls = graph_calls(period, wall_s)
    capture_error = None
    try:
        graph, _ = graphs.capture(lambda: _repeat(call, calls))
    except Exception as error:  # noqa: BLE001 (whatever fails the capture, the call is timed eagerly)
        capture_error = _first_line(capture_cause(error))
    runtime.synchronize()
    if capture_error is None:
        result = _time_windows(runtime, graph.replay, calls, budget_s)
        del graph
        result["gpu_timing"] = GRAPH if result["gpu_timing"] == PRIMED else GRAPH_UNPRIMED
        return {**result, "capture_error": None}
    calls = primed_calls(wall_s)
    return {**_time_windows(runtime, lambda: _repeat(call, calls), calls, budget_s), "capture_error": capture_error}


def _repeat(call: Callable[[], object], times: int) -> tuple:
    """call() `times` times, keeping nothing (a graph's static outputs: none)."""
    for _ in range(times):
        call()
    return ()


def _time_windows(runtime, enqueue: Callable[[], object], calls: int, budget_s: float) -> dict:
    """Primed windows of enqueue() (each `calls` calls), or unprimed ones if the host cannot be kept out."""
    queued_from = runtime.now()
    enqueue()  # untimed: a graph's first replay uploads it; the host's time to queue it sizes the first sleep
    host_s = runtime.now() - queued_from
    runtime.synchronize()
    method, times = PRIMED, []
    try:
        first, host_s = primed_window(runtime, enqueue, host_s)
        times = [first] + [
            primed_window(runtime, enqueue, host_s)[0]
            for _ in range(_windows_for(budget_s, first + 2 * host_s + PRIME_MARGIN_S) - 1)
        ]
    except NotPrimed:
        method = UNPRIMED
        first = unprimed_window(runtime, enqueue)
        times = [first] + [unprimed_window(runtime, enqueue) for _ in range(_windows_for(budget_s, first) - 1)]
    return {
        "gpu_median_s": statistics.median(times) / calls,
        "gpu_timing": method,
        "gpu_calls_per_window": calls,
        "gpu_windows": len(times),
    }


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def run_benchmark(benchmark, settings: Settings, call: Callable[[], object], runtime=None) -> dict | None:
    """Warm up, then time `call` two ways, and return both medians in seconds:

    - ``wall_median_s``: pytest-benchmark's, of calls that each end in a synchronize; what a Python
      caller waits, launch overhead included.
    - ``gpu_median_s`` (on a GPU): the device's time per call, which the roofline is about, by the method
      ``gpu_timing`` names (gpu_time); "wall-clock" off a GPU, where it is None.

    ``median_s`` is the GPU time where there is one, else the wall time. None under
    --benchmark-disable, which runs the call once as a smoke test. runtime: a stand-in for torch.cuda (tests)."""
    if settings.on_gpu and runtime is None:
        runtime = cuda_runtime(settings.device)

    def timed() -> None:
        call()
        if runtime is not None:
            runtime.synchronize()

    if not benchmark.enabled:
        timed()
        return None

    for _ in range(settings.warmup):
        timed()
    rounds = settings.min_rounds
    if settings.seconds > 0:
        # The budget is spent at the speed of a warm call (the first warm-up call includes compilation).
        start = time.perf_counter()
        timed()
        warm = time.perf_counter() - start
        rounds = max(rounds, min(MAX_ROUNDS, math.ceil(settings.seconds / 2 / warm)))
    benchmark.pedantic(timed, rounds=rounds, iterations=1)
    wall = benchmark.stats.stats.median
    medians = {"wall_median_s": wall, "gpu_median_s": None, "gpu_timing": WALL_CLOCK}
    if runtime is not None:
        medians.update(gpu_time(call, runtime, wall, settings.seconds / 2))
    medians["median_s"] = medians["gpu_median_s"] or medians["wall_median_s"]
    return medians


# ---- memory, from the tensors --------------------------------------------------------------------------------------


def storage_bytes(tensors) -> dict[int, int]:
    """Each tensor's storage (once, however many views share it) -> its bytes."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def graph_saved_tensors(out: torch.Tensor) -> list[torch.Tensor]:
    """Every tensor the autograd graph behind `out` holds for its backward: a custom Function's saved_tensors (ours,
    and torch.compile's compiled function), a built-in node's _saved_* fields. The same tensors a saved-tensor hook
    sees being packed, read from the graph itself, so that nothing is hooked while the forward runs (a hook is part
    of what torch.compile guards on, and of what some of its releases refuse)."""
    saved, seen, pending = [], set(), [out.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "saved_tensors"):
            saved += [t for t in node.saved_tensors if isinstance(t, torch.Tensor)]
        else:
            for name in dir(node):
                if name.startswith("_saved_"):
                    value = getattr(node, name)
                    values = value if isinstance(value, (tuple, list)) else (value,)
                    saved += [t for t in values if isinstance(t, torch.Tensor)]
        pending += [child for child, _ in node.next_functions]
    return saved


def saved_for_backward(forward: Callable[[], torch.Tensor], arguments) -> int:
    """Bytes the autograd graph holds after a forward on the output's device, beyond the op's arguments and output:
    the saved tensors' storages, each once (graph_saved_tensors), on every device and for every implementation
    alike. (A Python number an op saves is a CPU scalar, which saved-tensor hooks are not shown; on a GPU it is no
    device memory and not counted.)"""
    out = forward()
    held = storage_bytes(t for t in graph_saved_tensors(out) if t.device == out.device)
    for known in storage_bytes([*arguments, out]):
        held.pop(known, None)
    return sum(held.values())


class CreatedTensors(TorchDispatchMode):
    """While active: the bytes of the tensors that ops create on `device` (each storage once, from when an op returns
    it until it is freed) and the most of them alive at once, `peak`. A storage an op is handed (an argument, or one
    made before) is not counted when an op returns it again (a view, an in-place op). Storages are tracked through
    their Python objects, which PyTorch keeps for as long as the storage lives (autograd's saved tensors included)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = torch.device(device)
        self.created: dict[int, int] = {}  # id of a live storage object -> bytes
        self.known: set[int] = set()  # live storages that existed before the op that returned them
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor):
                self._know(t.untyped_storage())
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and self._same_device(t.device):
                self._created(t.untyped_storage())
        return out

    def _same_device(self, device: torch.device) -> bool:
        return device.type == self.device.type and (self.device.index is None or device.index == self.device.index)

    def _know(self, storage) -> None:
        key = id(storage)
        if key not in self.created and key not in self.known:
            self.known.add(key)
            weakref.finalize(storage, self.known.discard, key)

    def _created(self, storage) -> None:
        key, size = id(storage), storage.nbytes()
        if key in self.created or key in self.known or size == 0:
            return
        self.created[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key: int) -> None:
        self.current -= self.created.pop(key, 0)


def peak_memory(device: torch.device, call: Callable[[], object], compiled: bool = False) -> int | None:
    """The most bytes of tensors one call creates that are alive at once (CreatedTensors), on any device. Memory that
    is no tensor (a cuDNN or cuBLAS workspace) is not counted. None for a torch.compile'd call: dynamo does not
    compile under a dispatch mode, so the number would be eager's."""
    if compiled:
        return None
    with CreatedTensors(device) as counted:
        call()
    return counted.peak


# ---- the footing every implementation is timed on ------------------------------------------------------------------


def matmul_allows_tf32() -> bool:
    """Whether fp32 cuBLAS matmuls may use TF32: the legacy flag, or where PyTorch's newer per-backend precision was
    set apart from it (reading the flag then raises), that setting: the matmul's, else the global one."""
    matmul = torch.backends.cuda.matmul
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        for setting in (matmul, torch.backends):
            precision = getattr(setting, "fp32_precision", "none")
            if precision != "none":
                return precision == "tf32"
        return False


def _matmul_tf32_state() -> list[tuple[str, object]]:
    """The matmul's settings as they are: the legacy flag where it can be read, and the newer precision string where
    this torch has one (which can say what the flag cannot, and is restored last)."""
    matmul, state = torch.backends.cuda.matmul, []
    try:
        state.append(("allow_tf32", matmul.allow_tf32))
    except RuntimeError:
        pass
    if hasattr(matmul, "fp32_precision"):
        state.append(("fp32_precision", matmul.fp32_precision))
    return state


def _set_matmul_tf32(on: bool) -> None:
    """Through the API in use: the legacy flag where it can be read (setting it keeps both APIs agreeing), else the
    newer precision string. Setting the string when nothing else was would make reading the legacy flags, and
    torch.get_float32_matmul_precision, which torch.compile reads, raise for the rest of the run."""
    matmul = torch.backends.cuda.matmul
    try:
        if matmul.allow_tf32 != on:
            matmul.allow_tf32 = on
    except RuntimeError:
        matmul.fp32_precision = "tf32" if on else "ieee"


def _restore_matmul_tf32(state: list[tuple[str, object]]) -> None:
    matmul = torch.backends.cuda.matmul
    for name, value in state:
        if name == "allow_tf32":
            _set_matmul_tf32(value)
        elif getattr(matmul, name) != value:
            setattr(matmul, name, value)


@contextlib.contextmanager
def fair_footing() -> Iterator[bool]:
    """The same footing for every implementation, for the body; PyTorch's settings as they were after. fp32 matrix
    products may use TF32 exactly when cuDNN's convolutions (and so ours, _common.use_tf32) may, so that eager's
    nn.Linear is not held to true fp32 while our whole-map convolutions run TF32; cuDNN picks its algorithms by timing
    them (cudnn.benchmark), as ours are autotuned. Yields whether fp32 may use TF32. Works with the legacy allow_tf32
    flags and with PyTorch's newer per-backend fp32_precision settings, never reading a flag that raises."""
    tf32 = _common.cudnn_allows_tf32()
    saved, benchmark = _matmul_tf32_state(), torch.backends.cudnn.benchmark
    try:
        _set_matmul_tf32(tf32)
        torch.backends.cudnn.benchmark = True
        yield tf32
    finally:
        _restore_matmul_tf32(saved)
        torch.backends.cudnn.benchmark = benchmark


# ---- the device's peaks --------------------------------------------------------------------------------------------


def measure_peaks(device: torch.device) -> dict[str, float]:
    """The device's measured limits: copy bandwidth (a large device-to-device copy) and the rate of a large
    matrix product in bf16, fp16 and fp32 (TF32 where the session allows it; see conftest.py)."""
    on_gpu = device.type == "cuda"
    copy_elements = (1 << 28) if on_gpu else (1 << 24)  # 1 GiB of fp32 on a GPU, 64 MiB on a CPU
    source = torch.randn(copy_elements, device=device)
    target = torch.empty_like(source)
    copy_seconds = _median_seconds("target.copy_(source)", source=source, target=target)
    peaks = {"copy_bytes_per_s": 2 * source.nbytes / copy_seconds}
    del source, target

    size = 8192 if on_gpu else 512
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("float32", torch.float32)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        peaks[f"{name}_flop_per_s"] = 2 * size**3 / _median_seconds("a @ b", a=a, b=b)
    return peaks


def _median_seconds(statement: str, **variables) -> float:
    # torch.utils.benchmark synchronizes CUDA around its blocks and reports the median.
    return Timer(statement, globals=variables).blocked_autorange(min_run_time=0.5).median


def roofline(medians: dict[str, float], flops: int, bytes_moved: int, peaks: dict[str, float], dtype_name: str) -> dict:
    """The medians, achieved rates, and the fastest the call could be on this device (the slower of doing
    its FLOPs at the measured matrix-product rate and moving its bytes at the measured copy bandwidth) as a
    fraction of its measured time."""
    seconds = medians["median_s"]
    bound = max(flops / peaks[f"{dtype_name}_flop_per_s"], bytes_moved / peaks["copy_bytes_per_s"])
    return {
        **medians,
        "tflop_per_s": flops / seconds / 1e12,
        "gb_per_s": bytes_moved / seconds / 1e9,
        "roofline_fraction": bound / seconds,
    }
