"""bench/timing.py: the roofline a measured time is compared with; the GPU's time, by a CUDA graph or a primed queue,
on a simulated GPU whose queue runs work only once the host has queued it (so the host's time leaks into a window
exactly as on a real one); the memory counted from the tensors, against bytes counted by hand; and the footing every
implementation is timed on, under PyTorch's legacy TF32 flags and its newer per-backend precision."""

import contextlib
import types

import pytest
import torch
import torch.nn.functional as F
from alexnet_triton.kernels import _common
from helpers import restore_tf32_settings, tf32_settings

import alexnet_triton as at
from bench import timing
from bench.timing import roofline


def test_roofline_is_the_slower_of_arithmetic_and_memory():
    peaks = {"copy_bytes_per_s": 1e12, "float32_flop_per_s": 1e14}
    memory_bound = roofline({"median_s": 2e-3}, flops=1e10, bytes_moved=1e9, peaks=peaks, dtype_name="float32")
    assert memory_bound["roofline_fraction"] == pytest.approx(0.5)  # 1 ms of copying in 2 ms
    assert memory_bound["gb_per_s"] == pytest.approx(500)
    compute_bound = roofline({"median_s": 4e-3}, flops=1e11, bytes_moved=1e9, peaks=peaks, dtype_name="float32")
    assert compute_bound["roofline_fraction"] == pytest.approx(0.25)
    assert compute_bound["tflop_per_s"] == pytest.approx(25)


# ---- a simulated GPU -----------------------------------------------------------------------------------------------

LAUNCH_LATENCY_S = 3e-6  # from the host's launch to the GPU's start, when the GPU is idle
CAPTURE_FORBIDS = "CUDA error: operation not permitted when stream is capturing"


class FakeGPU:
    """timing.CudaRuntime's stand-in. Two clocks: the host's advances by what each call costs it; the GPU runs each
    queued piece of work once the work before it is done and the host has queued it (an idle GPU waits for the host,
    which is how host time gets inside a window). Events read the GPU's clock when the GPU reaches them; the sleep
    kernel keeps the GPU busy; a capture records the GPU work of what runs inside it and a replay queues it all at once,
    and a host sync inside a capture fails it, as CUDA's does."""

    def __init__(self, replay_host_s=10e-6, sleep_scale=1.0):
        self.host = self.free = 0.0
        self.replay_host_s = replay_host_s
        self.sleep_scale = sleep_scale  # below 1: the clock runs faster than the sleep was calibrated at
        self.recording: list[float] | None = None
        self.sleeps: list[float] = []
        self.captures = self.replays = 0

    def now(self) -> float:
        return self.host

    def queue(self, gpu_s: float) -> float:
        """The GPU's clock when it starts this work."""
        start = max(self.free, self.host + LAUNCH_LATENCY_S)
        self.free = start + gpu_s
        return start

    def launch(self, host_s: float, gpu_s: float) -> None:
        self.host += host_s
        if self.recording is not None:
            self.recording.append(gpu_s)
        else:
            self.queue(gpu_s)

    def synchronize(self) -> None:
        if self.recording is not None:
            raise RuntimeError(CAPTURE_FORBIDS)
        self.host = max(self.host, self.free)

    def event(self):
        gpu = self

        class Event:
            def record(self):
                gpu.host += 1e-6
                self.time = gpu.queue(0.0)

        return Event()

    @staticmethod
    def elapsed_s(start, end) -> float:
        return end.time - start.time

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.host += 2e-6
        self.queue(seconds * self.sleep_scale)

    def graphs(self):
        gpu = self

        class Graph:
            def __init__(self, work):
                self.work = work

            def replay(self):
                gpu.host += gpu.replay_host_s
                gpu.replays += 1
                gpu.queue(sum(self.work))

        class Graphs:
            side_stream = staticmethod(contextlib.nullcontext)

            def capture(self, step):
                gpu.recording = []
                try:
                    outputs = step()
                finally:
                    work, gpu.recording = gpu.recording, None
                gpu.captures += 1
                return Graph(work), outputs

        return Graphs()


class FakeOp:
    """A call that costs the host host_s and the GPU gpu_s; capturable=False: its capture fails (a pageable copy,
    say); syncs: it waits for the GPU (a .item()), which also fails a capture."""

    def __init__(self, gpu: FakeGPU, host_s: float, gpu_s: float, period=1, capturable=True, syncs=False):
        self.gpu, self.host_s, self.gpu_s, self.period = gpu, host_s, gpu_s, period
        self.capturable, self.syncs = capturable, syncs
        self.calls = 0

    def __call__(self):
        if not self.capturable and self.gpu.recording is not None:
            raise RuntimeError(CAPTURE_FORBIDS)
        self.calls += 1
        self.gpu.launch(self.host_s, self.gpu_s)
        if self.syncs:
            self.gpu.synchronize()


def test_a_window_opened_before_the_host_has_queued_its_work_times_the_host():
    # The problem this timing solves (triton's do_bench records its start event and then calls): our op costs the
    # host 100 us and the GPU 5 us, and an unprimed window around one call measures the host.
    gpu = FakeGPU()
    op = FakeOp(gpu, host_s=100e-6, gpu_s=5e-6)
    assert timing.unprimed_window(gpu, op) == pytest.approx(100e-6 + 5e-6, rel=0.05)
    assert timing.primed_window(gpu, op, host_s=100e-6)[0] == pytest.approx(5e-6)


def test_a_capturable_call_is_timed_as_a_cuda_graph_of_many_calls_without_the_host():
    gpu = FakeGPU()
    op = FakeOp(gpu, host_s=100e-6, gpu_s=5e-6, period=3)
    result = timing.gpu_time(op, gpu, wall_s=110e-6, budget_s=0.05)
    assert result["gpu_timing"] == timing.GRAPH and result["capture_error"] is None
    assert result["gpu_median_s"] == pytest.approx(5e-6)  # the GPU's 5 us, none of the host's 100
    calls = result["gpu_calls_per_window"]
    assert calls % 3 == 0 and calls == timing.graph_calls(3, 110e-6) == 63  # every argument set equally, <= 64
    assert gpu.captures == 1 and gpu.replays == 1 + result["gpu_windows"]  # one untimed replay uploads the graph
    assert timing.MIN_WINDOWS <= result["gpu_windows"] <= timing.MAX_WINDOWS
    assert len(gpu.sleeps) == result["gpu_windows"]  # every window primed


def test_a_call_slower_than_the_host_makes_a_graph_of_one_rotation():
    gpu = FakeGPU()
    op = FakeOp(gpu, host_s=1e-3, gpu_s=80e-3, period=2)  # a training step: the GPU's 80 ms, the host's 1 ms
    result = timing.gpu_time(op, gpu, wall_s=81e-3, budget_s=0.5)
    assert result["gpu_timing"] == timing.GRAPH and result["gpu_calls_per_window"] == 2
    assert result["gpu_median_s"] == pytest.approx(80e-3)
    assert result["gpu_windows"] == timing.MIN_WINDOWS


def test_a_call_that_cannot_be_captured_is_timed_primed_and_says_why():
    gpu = FakeGPU()
    op = FakeOp(gpu, host_s=100e-6, gpu_s=5e-6, capturable=False)
    result = timing.gpu_time(op, gpu, wall_s=110e-6, budget_s=0.05)
    assert result["gpu_timing"] == timing.PRIMED
    assert result["capture_error"] == f"RuntimeError: {CAPTURE_FORBIDS}"
    assert result["gpu_calls_per_window"] == timing.primed_calls(110e-6) == 8
    assert result["gpu_median_s"] == pytest.approx(5e-6)  # eight calls queued behind the sleep, then timed
    # Each sleep outlasts what the host takes to queue its window.
    assert min(gpu.sleeps) > 8 * 100e-6


def test_whether_the_sleep_outlasted_the_queuing_is_measured_not_assumed():
    # The GPU sleeps 30% of what was asked (calibrated at a lower clock): the first windows would hold host time, are
    # found out by the event ahead of the sleep, and are timed again behind longer sleeps.
    gpu = FakeGPU(sleep_scale=0.3)
    op = FakeOp(gpu, host_s=100e-6, gpu_s=5e-6, capturable=False)
    result = timing.gpu_time(op, gpu, wall_s=110e-6, budget_s=0.05)
    assert result["gpu_timing"] == timing.PRIMED and result["gpu_median_s"] == pytest.approx(5e-6)
    assert len(gpu.sleeps) > result["gpu_windows"]  # some windows were timed again


def test_a_call_that_waits_for_the_gpu_is_timed_unprimed_and_says_so():
    gpu = FakeGPU()
    op = FakeOp(gpu, host_s=100e-6, gpu_s=5e-6, syncs=True)
    result = timing.gpu_time(op, gpu, wall_s=110e-6, budget_s=0.05)
    assert result["gpu_timing"] == timing.UNPRIMED and CAPTURE_FORBIDS in result["capture_error"]
    assert result["gpu_median_s"] > 100e-6  # the host is in its window, and the method says so


class FakeBenchmark:
    """pytest-benchmark's fixture, as run_benchmark uses it: pedantic runs the rounds; the median is given."""

    enabled = True

    def __init__(self, median_s: float):
        self.stats = types.SimpleNamespace(stats=types.SimpleNamespace(median=median_s))
        self.rounds = 0

    def pedantic(self, target, rounds, iterations):
        for _ in range(rounds):
            target()
        self.rounds = rounds


def settings_on(device: str) -> timing.Settings:
    return timing.Settings(torch.device(device), batch=2, image_size=67, warmup=2, seconds=0.0, min_rounds=3)


def test_on_a_gpu_the_result_holds_both_times_and_the_method():
    gpu = FakeGPU()
    op = FakeOp(gpu, host_s=100e-6, gpu_s=5e-6, period=2)
    medians = timing.run_benchmark(FakeBenchmark(110e-6), settings_on("cuda"), op, runtime=gpu)
    assert medians["wall_median_s"] == 110e-6  # what a Python caller waits
    assert medians["median_s"] == medians["gpu_median_s"] == pytest.approx(5e-6)
    assert medians["gpu_timing"] == timing.GRAPH and medians["gpu_calls_per_window"] % 2 == 0


def test_on_a_cpu_the_time_is_wall_clock_and_says_so():
    calls = []
    benchmark = FakeBenchmark(2e-3)
    medians = timing.run_benchmark(benchmark, settings_on("cpu"), lambda: calls.append(1))
    assert medians == {"wall_median_s": 2e-3, "gpu_median_s": None, "gpu_timing": "wall-clock", "median_s": 2e-3}
    assert len(calls) == 2 + 3 and benchmark.rounds == 3  # warm-up, then the rounds


def test_rotating_takes_the_sets_in_turn_and_tells_its_period():
    seen = []
    call = timing.rotating(lambda a, b: seen.append((a, b)), [(1, 2), (3, 4), (5, 6)])
    for _ in range(4):
        call()
    assert call.period == 3 and seen == [(1, 2), (3, 4), (5, 6), (1, 2)]


# ---- memory, from the tensors, against bytes counted by hand -------------------------------------------------------

CPU = torch.device("cpu")


def test_peak_memory_counts_each_created_storage_while_it_lives():
    x = torch.randn(2, 8, 13, 13)  # 10,816 bytes
    with torch.no_grad():
        # x * 2 lives while exp makes its result: two maps at once; the sum's 4 bytes come after the first is freed.
        assert timing.peak_memory(CPU, lambda: (x * 2).exp().sum()) == 2 * x.nbytes
        assert timing.peak_memory(CPU, lambda: x.view(-1)[:5]) == 0  # a view of an argument creates nothing
        assert timing.peak_memory(CPU, lambda: (x * 2).add_(1).view(-1)) == x.nbytes  # in place: the same storage
    # Each 4,000-byte tensor is freed after its sum; the sums (4 bytes each) are kept: at most one tensor and 3 sums.
    assert timing.peak_memory(CPU, lambda: [torch.empty(1000).sum() for _ in range(3)]) == 4000 + 3 * 4
    assert timing.peak_memory(CPU, lambda: [torch.empty(1000) for _ in range(3)]) == 3 * 4000
    assert timing.peak_memory(CPU, lambda: x * 2, compiled=True) is None  # dynamo would run it eagerly


def test_memory_of_our_ops_and_eagers_by_hand():
    # The pool at 3/2 on 13x13 maps: 6x6 outputs, 2 x 8 x 36 = 576 elements. Ours saves one position byte each; eager
    # saves int64 indices. At.dropout saves its 8-byte seed; eager (on a CPU) its scaled fp32 mask.
    x = torch.randn(2, 8, 13, 13, requires_grad=True)
    assert timing.saved_for_backward(lambda: at.max_pool2d(x, 3, 2), [x]) == 576
    assert timing.saved_for_backward(lambda: F.max_pool2d(x, 3, 2), [x]) == 576 * 8
    assert timing.saved_for_backward(lambda: at.dropout(x, 0.5), [x]) == 8
    assert timing.saved_for_backward(lambda: F.dropout(x, 0.5), [x]) == x.nbytes
    # Peak, forward: our pool writes the output (576 fp32) and the positions (576 bytes); dropout its output and seed.
    assert timing.peak_memory(CPU, lambda: at.max_pool2d(x, 3, 2)) == 576 * 4 + 576
    assert timing.peak_memory(CPU, lambda: at.dropout(x, 0.5)) == x.nbytes + 8
    # Forward and backward: the pool's output and positions, the incoming gradient, then the input's gradient.
    grad = torch.randn(2, 8, 6, 6)

    def pool_both_ways():
        return torch.autograd.grad(at.max_pool2d(x, 3, 2), [x], grad)

    assert timing.peak_memory(CPU, pool_both_ways) == 576 * 4 + 576 + x.nbytes


def saved_by_hooks(forward, arguments) -> int:
    """What a saved-tensor hook sees packed (the CPU path's way before): the graph walk must find the same."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = forward()
    held = timing.storage_bytes(saved)
    for known in timing.storage_bytes([*arguments, out]):
        held.pop(known, None)
    return sum(held.values())


def test_the_graph_holds_what_saved_tensor_hooks_see():
    x = torch.randn(2, 8, 13, 13, requires_grad=True)
    w, b = torch.randn(8, 8, 3, 3, requires_grad=True), torch.randn(8, requires_grad=True)
    cases = {
        "conv2d_relu": (lambda: at.conv2d_relu(x, w, b, 1, 1), lambda: F.relu(F.conv2d(x, w, b, 1, 1)), [x, w, b]),
        "lrn": (lambda: at.local_response_norm(x, 5, 1e-4, 0.75, 2.0), None, [x]),
        "lrn_max_pool2d": (lambda: at.lrn_max_pool2d(x, 5, 3, 2), None, [x]),
        "tanh then pool": (None, lambda: F.max_pool2d(torch.tanh(x), 3, 2), [x]),  # a saved intermediate
    }
    for name, (ours, eager, arguments) in cases.items():
        for forward in (f for f in (ours, eager) if f is not None):
            assert timing.saved_for_backward(forward, arguments) == saved_by_hooks(forward, arguments), name
    assert timing.saved_for_backward(cases["tanh then pool"][1], [x]) == x.nbytes + 576 * 8  # tanh's result, indices


def test_a_compiled_functions_saved_tensors_are_read_from_its_graph():
    # torch.compile's compiled function is a custom Function node: its saved tensors are read from it, with nothing
    # hooked into the run (aot_eager: AOTAutograd's graphs, run by eager kernels, so no C++ is compiled here).
    torch._dynamo.reset()
    x = torch.randn(64, requires_grad=True)
    compiled = torch.compile(lambda t: (t * 2).sin(), backend="aot_eager", fullgraph=True)
    out = compiled(x)
    assert type(out.grad_fn).__name__ == "CompiledFunctionBackward"
    held = [t for t in out.grad_fn.saved_tensors if t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()]
    assert timing.saved_for_backward(lambda: compiled(x), [x]) == sum(t.untyped_storage().nbytes() for t in held)
    torch._dynamo.reset()


# ---- the footing: TF32 under either of PyTorch's APIs --------------------------------------------------------------

NEW_API = hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision")


def read_settings() -> dict:
    """Every TF32 reading a run makes, each as it answers: a value, or "raises"."""
    readings = {
        "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "get_float32_matmul_precision": torch.get_float32_matmul_precision,  # torch.compile reads it
        "cudnn.benchmark": lambda: torch.backends.cudnn.benchmark,
    }
    if NEW_API:
        owners = {"": torch.backends, "cudnn.": torch.backends.cudnn, "cudnn.conv.": torch.backends.cudnn.conv,
                  "cudnn.rnn.": torch.backends.cudnn.rnn, "matmul.": torch.backends.cuda.matmul}  # fmt: skip
        readings |= {f"{name}fp32_precision": (lambda o=owner: o.fp32_precision) for name, owner in owners.items()}
    answers = {}
    for name, read in readings.items():
        try:
            answers[name] = read()
        except RuntimeError:
            answers[name] = "raises"
    return answers


def set_attributes(*settings):
    def apply():
        for owner, name, value in settings:
            setattr(owner, name, value)

    return apply


CUDNN, MATMUL = torch.backends.cudnn, torch.backends.cuda.matmul
STATES = {
    # name: (what sets it, whether it needs the newer API). Tests start with TF32 off (tests/conftest.py).
    "as a test starts": (set_attributes(), False),
    "PyTorch's defaults, legacy flags": (set_attributes((CUDNN, "allow_tf32", True), (MATMUL, "allow_tf32", False)),
                                         False),
    "legacy flags the other way": (set_attributes((CUDNN, "allow_tf32", False), (MATMUL, "allow_tf32", True)), False),
    # cuDNN's conv and rnn set apart: reading cudnn.allow_tf32 raises.
    "cudnn conv ieee through the newer API": (
        set_attributes((CUDNN.rnn, "fp32_precision", "tf32"), (CUDNN.conv, "fp32_precision", "ieee")), True
    ),
    "cudnn conv tf32, matmul ieee, newer API": (
        set_attributes((CUDNN.conv, "fp32_precision", "tf32"), (CUDNN.rnn, "fp32_precision", "ieee"),
                       (MATMUL, "fp32_precision", "ieee")),
        True,
    ),
    "matmul tf32 through the newer API": (set_attributes((MATMUL, "fp32_precision", "tf32")), True),
}  # fmt: skip


@contextlib.contextmanager
def tf32_state(name: str):
    """PyTorch's TF32 settings as the named state has them, for the body; as they were after."""
    apply, needs_new_api = STATES[name]
    if needs_new_api and not NEW_API:
        pytest.skip(f"torch {torch.__version__} has no per-backend fp32_precision")
    saved, benchmark = tf32_settings(), torch.backends.cudnn.benchmark
    try:
        apply()
        yield
    finally:
        restore_tf32_settings(saved)
        torch.backends.cudnn.benchmark = benchmark


@pytest.mark.parametrize("state", STATES)
def test_fair_footing_sets_matmuls_like_convolutions_and_puts_every_setting_back(state):
    with tf32_state(state):
        before = read_settings()
        with timing.fair_footing() as tf32:
            assert tf32 == _common.cudnn_allows_tf32()
            assert timing.matmul_allows_tf32() == tf32
            assert torch.backends.cudnn.benchmark
            inside = read_settings()
            # What could be read before still can (torch.compile reads the matmul precision): never a new "raises".
            assert all(inside[name] != "raises" for name, value in before.items() if value != "raises"), inside
        assert read_settings() == before


def test_the_benchs_flag_code_runs_under_the_newer_api():
    # Setting cuDNN's conv precision apart makes reading torch.backends.cudnn.allow_tf32 raise (torch 2.9+): the
    # benchmark session's fixture and its machine info must not read it.
    from bench import conftest

    config = types.SimpleNamespace(getoption=lambda name: None, stash=pytest.Stash())
    with tf32_state("cudnn conv ieee through the newer API"):
        with pytest.raises(RuntimeError):
            torch.backends.cudnn.allow_tf32  # noqa: B018 (the read is what raises)
        with timing.fair_footing() as tf32:
            assert tf32 is False and timing.matmul_allows_tf32() is False
            info = {}
            conftest.pytest_benchmark_update_machine_info(config, info)
    assert info["alexnet_triton"]["cudnn_allow_tf32"] is False and info["alexnet_triton"]["matmul_allow_tf32"] is False
    assert info["alexnet_triton"]["gpu_timing"] is None  # a CPU run: wall-clock
