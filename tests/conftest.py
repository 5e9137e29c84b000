"""Test setup: without a GPU the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton is imported, hence at the top of this file.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from alexnet_triton.kernels import _common  # noqa: E402

# The interpreter does not do half-precision arithmetic, so those run on a GPU only.
PRECISIONS = ["float32", "tf32", "bfloat16", "float16"] if torch.cuda.is_available() else ["float32"]


@pytest.fixture(autouse=True)
def poisoned_allocations(monkeypatch):
    """Every buffer a kernel launcher allocates starts as NaN, so an element a kernel forgets to
    write shows up as NaN in the result, and NaN never passes a comparison."""
    allocate = _common.empty

    def allocate_poisoned(*args, **kwargs):
        buffer = allocate(*args, **kwargs)
        if buffer.is_floating_point():
            buffer.fill_(float("nan"))
        return buffer

    monkeypatch.setattr(_common, "empty", allocate_poisoned)


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs on every run; the seed is printed when a test fails."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed {seed}")
    return seed


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(params=PRECISIONS)
def precision(request, monkeypatch):
    """The precision a comparison runs at: fp32 everywhere; TF32, bf16 and fp16 on a GPU.

    "float32" means true fp32: cuDNN (and our kernels, which follow its flag) may not use TF32.
    Returns (dtype of the tensors, key into helpers.TOLERANCE)."""
    allow_tf32 = request.param == "tf32"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", allow_tf32)
    dtype = torch.float32 if request.param == "tf32" else getattr(torch, request.param)
    return dtype, ("tf32" if allow_tf32 else dtype)
