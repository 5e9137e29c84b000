"""The fixtures every test leans on (conftest.py) do what they say: true fp32 unless a test asks for TF32, the
precision fixture's choice wins, PyTorch's TF32 settings come back afterwards (also when the new per-backend API
had set them), the device carries an index on CUDA, and kernel outputs start as NaN."""

import os

import pytest
import torch
from alexnet_triton.kernels import _common
from helpers import TOLERANCE, tf32_off_until_allowed, tf32_settings

import alexnet_triton as at

CUDNN, MATMUL = torch.backends.cudnn, torch.backends.cuda.matmul
# PyTorch >= 2.9 keeps TF32 as per-backend fp32_precision strings, of which the allow_tf32 flags are views.
NEW_API = hasattr(getattr(CUDNN, "conv", None), "fp32_precision") and hasattr(MATMUL, "fp32_precision")
needs_new_api = pytest.mark.skipif(not NEW_API, reason="PyTorch before 2.9 has no fp32_precision settings")


def flags() -> tuple[bool, bool]:
    return CUDNN.allow_tf32, MATMUL.allow_tf32


def new_api_strings() -> tuple[str, ...]:
    return (CUDNN.fp32_precision, CUDNN.conv.fp32_precision, CUDNN.rnn.fp32_precision, MATMUL.fp32_precision)


# ---- allow_tf32 (autouse) and precision ------------------------------------------------------------


def test_a_test_that_chooses_nothing_runs_true_fp32():
    assert flags() == (False, False)
    assert not _common.use_tf32(torch.float32), "the conv kernels follow cuDNN's flag"


def test_allow_tf32_turns_tf32_on_for_convolutions_and_matmuls(allow_tf32):
    allow_tf32(True)
    assert flags() == (True, True) and _common.use_tf32(torch.float32)
    assert not _common.use_tf32(torch.float64), "only fp32 may round to TF32"
    allow_tf32(False)
    assert flags() == (False, False)


@pytest.mark.parametrize("precision", ["tf32"], indirect=True)
def test_precision_tf32_allows_tf32(precision):
    assert precision == (torch.float32, "tf32")
    assert flags() == (True, True) and _common.use_tf32(torch.float32)


@pytest.mark.parametrize("precision", ["float32"], indirect=True)
def test_precision_float32_is_true_fp32(precision):
    assert precision == (torch.float32, torch.float32)
    assert flags() == (False, False)


# Asked for before or after allow_tf32 in the signature: precision is built on allow_tf32, so it always chooses last.
@pytest.mark.parametrize("precision", ["tf32"], indirect=True)
def test_precision_wins_when_asked_for_first(precision, allow_tf32):
    assert flags() == (True, True)


@pytest.mark.parametrize("precision", ["tf32"], indirect=True)
def test_precision_wins_when_asked_for_last(allow_tf32, precision):
    assert flags() == (True, True)


def test_every_precision_sets_tf32_as_named_and_has_a_tolerance(precision):
    dtype, key = precision
    assert key in TOLERANCE
    assert flags() == ((True, True) if key == "tf32" else (False, False))
    assert dtype in (torch.float32, torch.bfloat16, torch.float16)


# ---- PyTorch's settings come back -----------------------------------------------------------------


@pytest.mark.parametrize("cudnn, matmul", [(True, False), (True, True), (False, True), (False, False)])
def test_settings_come_back_after_a_test(cudnn, matmul):
    # The autouse fixture has already switched TF32 off: set a state of our own and go round once more.
    CUDNN.allow_tf32, MATMUL.allow_tf32 = cudnn, matmul
    before = new_api_strings() if NEW_API else None
    with tf32_off_until_allowed() as allow:
        assert flags() == (False, False)
        allow(True)
        assert flags() == (True, True)
    assert flags() == (cudnn, matmul)
    if NEW_API:
        assert new_api_strings() == before, "the same spelling of the same state"


@needs_new_api
def test_settings_the_new_api_set_apart_come_back():
    # Set through the new API, cuDNN's conv and rnn disagree and cuBLAS's new setting disagrees with its legacy
    # one; the legacy flags cannot be read then (PyTorch 2.14 raises). The fixture must neither fail nor lose them.
    CUDNN.conv.fp32_precision, CUDNN.rnn.fp32_precision = "ieee", "tf32"
    MATMUL.fp32_precision = "tf32"
    before = new_api_strings()
    assert {name for _, name, _ in tf32_settings()} >= {"fp32_precision"}, "the strings are what hold this state"
    with tf32_off_until_allowed() as allow:
        assert flags() == (False, False) and not _common.use_tf32(torch.float32)
        allow(True)
        assert flags() == (True, True)
    assert new_api_strings() == before
    # Left mixed on purpose: the autouse fixture's own exit must cope with it as well.


# ---- device ---------------------------------------------------------------------------------------


def test_device_is_indexed_on_cuda_and_the_interpreter_on_a_cpu(device):
    if torch.cuda.is_available():
        assert device.type == "cuda" and device.index == torch.cuda.current_device()
        assert at.backend(device) == "triton"
        with torch.cuda.device(device):  # a guard takes it
            assert torch.empty(1, device=device).device == device
    else:
        assert device == torch.device("cpu") and device.index is None
        assert os.environ.get("TRITON_INTERPRET") == "1" and _common.INTERPRET
        assert at.backend(device) == "triton-interpreter", "tests on a CPU run the kernels, not reference.py"
    assert torch.empty(1, device=device).device == device, "tensors made on it compare equal to it"


# ---- poisoned allocations -------------------------------------------------------------------------


def test_kernel_buffers_start_as_nan(device):
    like = torch.zeros(1, device=device)
    assert _common.empty((3, 4), like=like).isnan().all()
    assert _common.empty((3,), like=like, dtype=torch.int32).shape == (3,), "integer buffers are left alone"
