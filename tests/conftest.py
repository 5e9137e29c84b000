"""Test setup: without a GPU the Triton kernels run in Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton is imported, hence at the top of this file.

Every test gets: kernel buffers that start as NaN, a fresh seed, and true fp32 (TF32 off) unless it asks for TF32
(allow_tf32, or the precision fixture's "tf32"). Tests that run kernels take the `device` fixture: the current
CUDA device on a GPU, the CPU (interpreter) here. tests/test_conftest.py checks these fixtures.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import tiles  # noqa: E402
from alexnet_triton.kernels import _common  # noqa: E402
from helpers import tf32_off_until_allowed  # noqa: E402

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


# The test files of the kernels one by one, which run past the first tile (past_the_first_tile). The network's tests
# (test_model, test_swap*, test_layouts, ...) compose kernels these files check, and keep the interpreter's
# whole-shape tiles: every program costs the interpreter the same few hundred microseconds per op whatever its tile,
# and several programs per kernel made test_model about four times slower (47 s to 188 s of CPU).
TILED_TEST_FILES = (
    "test_conv", "test_lrn", "test_pool", "test_lrn_pool", "test_dropout", "test_augmentation", "test_tiles",
)  # fmt: skip


@pytest.fixture(autouse=True)
def past_the_first_tile(request, monkeypatch):
    """Past the first tile (DESIGN.md, "Tests"), in TILED_TEST_FILES: under the interpreter every kernel's blocks cut
    a test's shape into three programs or more along each tiled dimension, with a partial last one wherever the size
    is no multiple of the block, and every reduction loop into two trips or more (_common.TEST_TILES), as a GPU's
    many programs cut it. The tests check what their launches covered with the `launches` fixture (tests/tiles.py)."""
    monkeypatch.setattr(_common, "TEST_TILES", request.module.__name__.rpartition(".")[2] in TILED_TEST_FILES)


@pytest.fixture
def launches(monkeypatch) -> list:
    """The kernel launches the interpreter runs during the test, in order (tiles.Launch: kernel, grid, arguments,
    tl.dot calls per program); empty on a GPU, where nothing is interpreted."""
    return tiles.record(monkeypatch)


@pytest.fixture(autouse=True)
def fresh_seed():
    """Fresh random inputs on every run; the seed is printed when a test fails."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    print(f"torch seed {seed}")
    return seed


@pytest.fixture(autouse=True)
def allow_tf32():
    """Every test runs in true fp32 unless it asks for TF32: PyTorch lets cuDNN convolutions use TF32 by
    default, and our conv kernels follow that flag (_common.use_tf32), so on a GPU an fp32 test that chose
    nothing would run TF32 against fp32's tolerance. TF32 is off for cuDNN and cuBLAS matmuls while a test
    runs; a test (or fixture: precision) that wants it calls allow_tf32(True). PyTorch's own settings are
    back after the test."""
    with tf32_off_until_allowed() as allow:
        yield allow


@pytest.fixture
def device() -> torch.device:
    """Where a test's tensors live: the current CUDA device, indexed (torch.cuda.set_device and device guards
    need an index; torch.device("cuda") has none), else the CPU, where the kernels run in the interpreter."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@pytest.fixture(params=PRECISIONS)
def precision(request, allow_tf32):
    """The precision a comparison runs at: fp32 everywhere; TF32, bf16 and fp16 on a GPU.

    "float32" means true fp32: cuDNN (and our kernels, which follow its flag) may not use TF32; "tf32" is fp32
    tensors with TF32 allowed for cuDNN convolutions, our conv kernels and cuBLAS matmuls. It builds on the
    allow_tf32 fixture, so its choice is made after (and wins over) allow_tf32's default.
    Returns (dtype of the tensors, key into helpers.TOLERANCE)."""
    tf32 = request.param == "tf32"
    allow_tf32(tf32)
    dtype = torch.float32 if tf32 else getattr(torch, request.param)
    return dtype, ("tf32" if tf32 else dtype)
