"""What the kernel files share: the interpreter switch, tile configs, dtype rules, allocation."""

import os

import torch
import triton

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when this package is imported,
# so the flag is read once here and stays true to what the kernels actually are.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

# The dtypes every kernel accepts. float64 exists for gradcheck and float64 reference runs.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def configs(gpu: list[triton.Config], interpreter: triton.Config) -> list[triton.Config]:
    """The autotuning space: the GPU list on a GPU, one large tile under the interpreter.

    The interpreter runs one program instance at a time in numpy, so its cost is the number of
    program instances times the ops each executes: few, large tiles are fastest there, and a
    single config means the autotuner never benchmarks.
    """
    return [interpreter] if INTERPRET else gpu


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
