"""How a call is timed and its memory measured, and the device's peaks that numbers are compared with."""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import cycle

import torch
import triton.testing
from torch.utils.benchmark import Timer

# H100's L2 is 50 MB: inputs rotate through at least twice that, so a small op reads from memory as it
# would inside a network, rather than from the cache its previous call warmed.
ROTATION_BYTES_PER_L2 = 2
MAX_ROTATION = 16
# A median needs no more, and every round is stored in the JSON.
MAX_ROUNDS = 1000


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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotation(device: torch.device, bytes_per_call: int) -> int:
    """How many argument sets to cycle through so the L2 cache cannot hold them all."""
    if device.type != "cuda":
        return 1
    l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    return max(1, min(MAX_ROTATION, math.ceil(ROTATION_BYTES_PER_L2 * l2_bytes / max(bytes_per_call, 1))))


def rotating(call: Callable[..., object], argument_sets: list) -> Callable[[], object]:
    """A call without arguments that takes the next argument set each time."""
    sets = cycle(argument_sets)
    return lambda: call(*next(sets))


def run_benchmark(benchmark, settings: Settings, call: Callable[[], object]) -> dict[str, float] | None:
    """Warm up, then time `call` two ways, and return both medians in seconds:

    - ``wall_median_s``: pytest-benchmark's, of calls that each end in a synchronize; what a Python
      caller waits, launch overhead included.
    - ``gpu_median_s`` (on a GPU): triton.testing.do_bench's, from CUDA events around each call with
      the L2 cache flushed in between; the device's time, which the roofline is about.

    ``median_s`` is the GPU time where there is one, else the wall time. None under
    --benchmark-disable, which runs the call once as a smoke test."""

    def timed() -> None:
        call()
        synchronize(settings.device)

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
    medians = {"wall_median_s": benchmark.stats.stats.median, "gpu_median_s": None}
    if settings.on_gpu:
        budget_ms = max(25.0, settings.seconds / 2 * 1e3)
        medians["gpu_median_s"] = triton.testing.do_bench(call, warmup=25, rep=budget_ms, return_mode="median") / 1e3
    medians["median_s"] = medians["gpu_median_s"] or medians["wall_median_s"]
    return medians


def peak_memory(device: torch.device, call: Callable[[], object]) -> int | None:
    """The most memory one call adds on top of what was allocated before it (None off CUDA)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def storage_bytes(tensors) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def saved_for_backward(device: torch.device, forward: Callable[[], torch.Tensor], arguments, compiled: bool):
    """Memory the autograd graph holds after a forward, beyond the op's arguments and output.

    On CUDA the allocator tells, for every implementation alike. Elsewhere the tensors handed to
    save_for_backward are summed; a compiled function is not measured there (saved-tensor hooks make
    torch.compile fall back to eager, so the number would be eager's)."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        out = forward()
        synchronize(device)
        return torch.cuda.memory_allocated(device) - before - out.untyped_storage().nbytes()
    if compiled:
        return None
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = forward()
    held = storage_bytes(saved)
    for known in storage_bytes([*arguments, out]):
        held.pop(known, None)
    return sum(held.values())


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
