"""What the kernel files share: the interpreter switch, tile configs, output sizes, dtype rules, allocation."""

import os

import torch
import triton
from torch.library import wrap_triton

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when this package is imported,
# so the flag is read once here and stays true to what the kernels actually are.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

# The dtypes every kernel accepts. float64 exists for gradcheck and float64 reference runs.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tuned(gpu_configs: list[triton.Config], key: list[str], interpreter_blocks):
    """Decorator choosing a kernel's block sizes: autotuned over gpu_configs on a GPU; under the
    interpreter, interpreter_blocks(args) -> {name: value}, computed from the launch's sizes.

    The interpreter runs one program instance at a time in numpy, so its cost is the number of
    program instances times the ops each runs, and tiles that match the problem (a batch-2 fully
    connected layer has 2 rows, not 128) save most of it. Nothing is benchmarked there.

    Every name in key must be an argument of the kernel: the autotuner silently leaves out one that is
    not, and would then reuse a config tuned for another shape or layout."""

    def decorate(kernel):
        unknown = [name for name in key if name not in kernel.arg_names]
        if unknown:
            raise ValueError(f"autotune key {unknown} names no argument of {kernel.fn.__name__}: {kernel.arg_names}")
        if not INTERPRET:
            return triton.autotune(configs=gpu_configs, key=key)(kernel)
        names = list(gpu_configs[0].kwargs)
        return triton.heuristics({name: (lambda args, name=name: interpreter_blocks(args)[name]) for name in names})(
            kernel
        )

    return decorate


def launcher(kernel):
    """kernel[grid](...) through torch.library.wrap_triton, so torch.compile can trace the launch; the
    interpreter's kernels (never compiled, and not Autotuner objects) launch directly."""
    return kernel if INTERPRET else wrap_triton(kernel)


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output positions along one axis of a convolution or pool with zero padding, in floor mode (as
    F.conv2d, and F.max_pool2d with ceil_mode=False)."""
    return (size + 2 * padding - kernel) // stride + 1


def block(size: int, low: int, high: int) -> int:
    """The power of two covering size, clamped to [low, high]."""
    return max(low, min(high, triton.next_power_of_2(max(int(size), 1))))


def use_tf32(dtype: torch.dtype) -> bool:
    """Whether tl.dot may round fp32 operands to TF32: when PyTorch allows it for cuDNN convolutions,
    so a fused conv rounds like the F.conv2d it replaces. Other dtypes never do.

    Kernels take this as a bool and derive their accumulator dtype from their pointers (fp32, or fp64
    for fp64), so no tl.dtype or string travels as a launch argument through torch.compile."""
    return dtype == torch.float32 and torch.backends.cudnn.allow_tf32


def empty(shape, *, like: torch.Tensor, dtype: torch.dtype | None = None, memory_format=None) -> torch.Tensor:
    """Every buffer a launcher hands to a kernel comes from here. Tests replace it with a NaN-filled
    allocation to prove that kernels write every element they return."""
    return torch.empty(
        shape,
        dtype=like.dtype if dtype is None else dtype,
        device=like.device,
        memory_format=memory_format or torch.contiguous_format,
    )


def suggest_memory_format(t: torch.Tensor) -> torch.memory_format:
    """channels_last in, channels_last out (as cuDNN does); NCHW otherwise."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format
