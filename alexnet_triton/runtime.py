"""The trainer's process and device: one process or one of torchrun's, its device, the sums and checks
across processes, and the Ctrl-C / SIGTERM request to stop after the current step."""

import ctypes
import ctypes.util
import os
import signal
from dataclasses import dataclass

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


class StopRequest:
    """Set by Ctrl-C or SIGTERM; the loop saves and exits after the current step. A second Ctrl-C
    stops at once."""

    def __init__(self):
        self.requested = False

    def install(self) -> None:
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
            print(f"\n{signal.Signals(signum).name}: saving after this step (Ctrl-C again to stop at once)")

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


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
