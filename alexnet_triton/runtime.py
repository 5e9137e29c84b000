"""The trainer's process and device: one process or one of torchrun's, its device, the sums and checks
across processes, each process's random stream, and the Ctrl-C / SIGTERM request to stop, which several processes
agree on together with a non-finite loss (StopRequest, agree)."""

import ctypes
import ctypes.util
import math
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | None) -> torch.device:
    """The device asked for (cuda, cuda:1, cpu), or when none is: cuda if a GPU is available, else cpu. A CUDA
    device always comes back with its index (cuda means the current one), as torch.cuda.set_device and device
    guards require."""
    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if chosen.type == "cuda" and chosen.index is None and torch.cuda.is_available():
        chosen = torch.device("cuda", torch.cuda.current_device())
    return chosen


def start_runtime(device: str | None = None) -> Runtime:
    """One process, or one of WORLD_SIZE started by torchrun (NCCL on GPUs, gloo on CPUs). device: cuda or
    cpu (default: cuda when available)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    chosen = resolve_device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for but no CUDA GPU is available")
    if chosen.type == "cuda" and world_size > 1:
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    else:
        # Early in training many activations are tiny; denormal arithmetic makes CPUs ~10x slower.
        torch.set_flush_denormal(True)
        keep_freed_memory()
    if world_size > 1:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Runtime(rank, world_size, chosen)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the kernel.

    PyTorch's CPU allocator is plain malloc, and glibc serves every block over 32 MB by mmap and unmaps it
    on free, so a CPU training step page-faults its gradients (230 MB for the built-in run's AlexNet) and
    activations back in every time. Kept in the heap they are reused: a training step 1.2-1.3x faster on
    this project's 2-core machine, for a resident size that stays at the run's peak. The same setting
    jemalloc or tcmalloc give by LD_PRELOAD, in-process. Returns False (and changes nothing) where the C
    library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it: musl's mallopt ignores these settings)
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # No block by mmap; trim the heap's top only when 2 GB lie free there.
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


def stop_runtime(runtime: Runtime) -> None:
    if runtime.world_size > 1:
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], runtime: Runtime) -> list[float]:
    """Each value summed over all processes (the values themselves in a single process)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    if runtime.world_size > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def check_ranks_agree(model: torch.nn.Module, runtime: Runtime) -> None:
    """Data-parallel processes must end with the same weights; a cheap fingerprint proves it."""
    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(runtime.device)
    gathered = [torch.empty_like(fingerprint) for _ in range(runtime.world_size)]
    dist.all_gather(gathered, fingerprint)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("data-parallel processes ended with different weights")
    if runtime.is_main:
        print(f"all {runtime.world_size} ranks agree on the final weights")


# A second SIGINT this soon after the stop request, in a process of several, is the terminal's Ctrl-C forwarded by the
# torchrun agent (its handler forwards it at once, milliseconds later); a person's second Ctrl-C comes later.
FORWARDED_SIGINT_S = 2.0


class StopRequest:
    """Ctrl-C or SIGTERM: the run stops where it can continue from, saves last.pt and exits; --resume continues it.
    A second Ctrl-C stops at once.

    In one process the loop stops after the current step: `requested` is the host's own flag, read after every step
    at no cost. With several processes (torchrun) the stop is a decision every process makes together. A signal
    reaches one process (a preempted worker), or each at its own moment, and a process that left the loop alone would
    leave the others inside a collective it never joins (gloo aborts with a size mismatch, NCCL hangs until its
    timeout). So the processes agree (agree(): one all-reduce of two numbers, the stop and StepLog's non-finite-loss
    verdict) at the points every process reaches at the same step: the training loop's logging points (every
    --log-every N steps, an epoch's first step and its end, where the host reads the device anyway) and the end of
    each evaluation. Every process then leaves the loop after that same step, and `agreed` says so. A stop asked
    between two logging points waits for the next one: up to N - 1 more steps; one asked during evaluation is agreed
    when the evaluation (whose sums are themselves an all-reduce) is over.

    Ctrl-C at a terminal reaches torchrun's workers twice: from the terminal, and forwarded by the torchrun agent a
    moment later; so with several processes a second SIGINT within FORWARDED_SIGINT_S of the first is that same
    Ctrl-C, and only a later one stops at once."""

    def __init__(self, runtime: Runtime | None = None, every: int = 1):
        self.runtime = runtime or Runtime(0, 1, torch.device("cpu"))
        self.every = every  # the steps between agreement points (--log-every), for the message
        self.requested = False  # a signal reached this process
        self.agreed = False  # every process knows a stop was asked for (in one process: requested)
        self.requested_at = -math.inf  # time.monotonic() of the request

    @property
    def now(self) -> bool:
        """Whether the loop leaves after the current step: this process's request in one process, the agreed stop in
        several (read at any step; it changes only at an agreement point)."""
        return self.agreed if self.runtime.world_size > 1 else self.requested

    def agree(self, nonfinite: tuple[int, float] | None = None) -> "Verdict":
        """An agreement point: every process calls it at the same step (a collective in several processes, nothing
        in one). nonfinite: this process's first non-finite loss (step, value) since its last agreement, or None.
        Returns the verdict of all processes; a stop in it stays agreed."""
        verdict = agree(self.runtime, self.requested, nonfinite)
        self.agreed = self.agreed or verdict.stop
        return verdict

    def install(self) -> None:
        def handler(signum, frame):
            now = time.monotonic()
            if self.requested and signum == signal.SIGINT:
                if self.runtime.world_size > 1 and now - self.requested_at < FORWARDED_SIGINT_S:
                    return  # torchrun's copy of the terminal's Ctrl-C
                raise KeyboardInterrupt
            self.requested, self.requested_at = True, now
            name = signal.Signals(signum).name
            if self.runtime.world_size > 1:
                print(
                    f"\n{name} on rank {self.runtime.rank}: every process stops at the next logging point (within "
                    f"{self.every} steps) or evaluation's end, and saves (Ctrl-C again to stop at once)"
                )
            else:
                print(f"\n{name}: saving after this step (Ctrl-C again to stop at once)")

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


@dataclass
class Verdict:
    """What every process agreed at an agreement point."""

    stop: bool  # some process was asked to stop
    nonfinite: tuple[int, int, float] | None = None  # the earliest non-finite loss: (step, rank, value)


class NonFiniteLoss(FloatingPointError):
    """A non-finite loss, agreed by every process: each raises it, naming the same step and rank."""


# Non-finite values, coded into an agreement's key: (step * world_size + rank) * 3 + kind.
NON_FINITE = (math.nan, math.inf, -math.inf)
NO_KEY = 2**62  # no non-finite loss on this process


def agree(runtime: Runtime, stop: bool, nonfinite: tuple[int, float] | None) -> Verdict:
    """Every process's stop request and non-finite-loss verdict combined: one all-reduce (MIN) of two int64s, -1 for a
    stop and the earliest non-finite loss's key, so the verdict names its step and, where two processes saw one at
    the same step, the lower rank. One process: its own verdict, no collective."""
    if runtime.world_size == 1:
        return Verdict(stop, None if nonfinite is None else (nonfinite[0], 0, nonfinite[1]))
    key = NO_KEY
    if nonfinite is not None:
        step, value = nonfinite
        kind = 0 if math.isnan(value) else (1 if value > 0 else 2)
        key = (step * runtime.world_size + runtime.rank) * 3 + kind
    tensor = torch.tensor([-1 if stop else 0, key], dtype=torch.int64, device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    stop_value, key = tensor.tolist()
    if key == NO_KEY:
        return Verdict(stop_value < 0)
    (step, rank), kind = divmod(key // 3, runtime.world_size), key % 3
    return Verdict(stop_value < 0, (step, rank, NON_FINITE[kind]))


def gather_objects(value, runtime: Runtime) -> list:
    """value from every process, by rank (dist.all_gather_object: every process calls it); [value] in one process."""
    if runtime.world_size == 1:
        return [value]
    gathered = [None] * runtime.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def seed_process_generators(seed: int, runtime: Runtime) -> None:
    """Each process its own dropout stream, once every process has built the same initial weights from seed: rank 0
    keeps the stream a single process has, rank k > 0 is seeded from (seed, k) (PyTorch's CPU generator and every
    CUDA device's). Nothing else draws from these generators: data order and augmentation have generators of their
    own, seeded from the run's seed and position alike in every process (data.py, augmentation.py)."""
    if runtime.rank > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, runtime.rank]).generate_state(1, np.uint64)[0] >> 1))


# The test-only fault injection's environment variable: "RANK:STEP" makes that process's loss at that global step
# NaN as StepLog records it (tests/test_distributed_stop.py). Read in this one place; unset in every real run.
TEST_NAN_LOSS = "ALEXNET_TRITON_TEST_NAN_LOSS"


def injected_nan_step(rank: int) -> int | None:
    """TEST ONLY: the global step at which this process's loss is to be made NaN (TEST_NAN_LOSS), or None."""
    value = os.environ.get(TEST_NAN_LOSS)
    if not value:
        return None
    target_rank, step = (int(part) for part in value.split(":"))
    return step if target_rank == rank else None


def autocast(amp: str, device: torch.device):
    """Autocast to amp: "bf16" on a GPU or a CPU, "fp16" on a GPU only (no loss scaling and no fast fp16 on
    CPUs); a no-op for "none"."""
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"--amp fp16 needs a GPU (training on {device}); --amp bf16 works on a CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device, channels_last: bool):
    """A batch on device; images (N, C, H, W) in channels_last when asked."""
    memory_format = torch.channels_last if channels_last and images.dim() == 4 else torch.contiguous_format
    return images.to(device, non_blocking=True, memory_format=memory_format), labels.to(device, non_blocking=True)


def compiled(model: torch.nn.Module) -> torch.nn.Module:
    """--compile: torch.compile of model (its DistributedDataParallel wrapper included), for fixed shapes: the trainer
    runs one training and one evaluation batch size, each compiled once (dynamic=False: no symbolic batch size for
    the fused ops' launchers to handle). Each fused op stays one node of the compiled graph (a torch.library
    triton_op); on a CPU they take their reference math (reference.py), which torch.compile traces through. The
    wrapper shares model's parameters; checkpoints are written from model itself, so their names stay the same."""
    return torch.compile(model, dynamic=False)
