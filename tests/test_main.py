"""The self-check, ``python -m alexnet_triton`` (alexnet_triton/__main__.py): it checks every public op, forward and
backward, exits 0 when all match float64 PyTorch, and exits 1 naming the op when one does not."""

import os
import subprocess
import sys

import pytest
import torch
from alexnet_triton.kernels import _common
from helpers import reference_backend_env

import alexnet_triton as at
from alexnet_triton import __main__ as self_check

OPS = ("conv2d_relu", "local_response_norm", "max_pool2d", "lrn_max_pool2d", "dropout")


def test_every_public_op_is_checked():
    functions = {name for name in at.__all__ if callable(getattr(at, name)) and name[0].islower()}
    assert functions - {"backend", "swap_fused_ops", "unswap_fused_ops"} == set(OPS)


def test_the_self_check_runs_the_kernels_and_passes():
    # As a user runs it: a fresh process, through the interpreter here (conftest set TRITON_INTERPRET=1), compiled
    # on a GPU.
    result = subprocess.run(
        [sys.executable, "-m", "alexnet_triton"], env=dict(os.environ), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    backend = "triton" if torch.cuda.is_available() else "triton-interpreter"
    assert f"backend {backend}" in result.stdout
    lines = result.stdout.splitlines()
    for op in OPS:
        checked = [line for line in lines if line.startswith(f"{op} ")]
        assert checked and all(line.endswith("ok") for line in checked), (op, result.stdout)
    assert "MISMATCH" not in result.stdout
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert lines[-1] == f"self-check passed: all 5 ops match float64 PyTorch on {device} ({backend})"


class ScaledGradient(torch.autograd.Function):
    """The identity forward, whose backward scales the gradient by 1.01: a bug in backward only."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.01


def with_nan(out: torch.Tensor) -> torch.Tensor:
    out = out.clone()
    out.view(-1)[0] = float("nan")  # an element a kernel forgot to write
    return out


# op -> {bug: the op with that bug, given the real op}; each wrong by far more than the tolerance.
PLANTED = {
    "conv2d_relu": {
        "value 1% off": lambda real: lambda *args, **kwargs: real(*args, **kwargs) * 1.01,
        "input gradient only": lambda real: lambda x, *args, **kwargs: real(ScaledGradient.apply(x), *args, **kwargs),
    },
    "local_response_norm": {
        "gradient only": lambda real: lambda x, *args, **kwargs: real(ScaledGradient.apply(x), *args, **kwargs),
    },
    "max_pool2d": {
        "one NaN": lambda real: lambda *args, **kwargs: with_nan(real(*args, **kwargs)),
        "wrong stride": lambda real: lambda x, kernel, stride, *args: real(x, kernel, stride + 1, *args),
    },
    "lrn_max_pool2d": {
        "pool before LRN": lambda real: (
            lambda x, size, kernel, stride, **lrn: at.local_response_norm(at.max_pool2d(x, kernel, stride), size, **lrn)
        ),
    },
    "dropout": {
        "kept values unscaled": lambda real: lambda x, p, *args, **kwargs: real(x, p, *args, **kwargs) * (1 - p),
        "the seed ignored": lambda real: lambda x, p, training=True, seed=None: real(x, p, training),
        "drops nothing": lambda real: lambda x, p, *args, **kwargs: x / (1 - p),
    },
}


@pytest.fixture
def reference_path(monkeypatch):
    """The self-check in this process, through reference.py on the CPU (quick); on a GPU through the kernels."""
    monkeypatch.setattr(_common, "INTERPRET", False)


def test_the_self_check_passes_on_the_reference_path(reference_path, capsys):
    assert self_check.main() == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "self-check passed: all 5 ops" in out


@pytest.mark.parametrize(
    "op, bug", [(op, bug) for op, bugs in PLANTED.items() for bug in bugs], ids=lambda value: value.replace(" ", "-")
)
def test_a_planted_mismatch_fails_the_self_check_naming_the_op(op, bug, reference_path, monkeypatch, capsys):
    monkeypatch.setattr(at, op, PLANTED[op][bug](getattr(at, op)))
    assert self_check.main() == 1
    lines = capsys.readouterr().out.splitlines()
    flagged = [line for line in lines if "MISMATCH" in line]
    assert flagged and all(line.startswith(f"{op} ") for line in flagged), lines
    assert lines[-1].startswith(f"self-check FAILED: {op} did not match float64 PyTorch"), lines[-1]


def test_the_process_exits_1_on_a_mismatch():
    planted = (
        "import runpy, alexnet_triton as at\n"
        "real = at.max_pool2d\n"
        "at.max_pool2d = lambda *args: real(*args) * 1.01\n"
        "runpy.run_module('alexnet_triton', run_name='__main__')\n"
    )
    env = reference_backend_env()
    result = subprocess.run([sys.executable, "-c", planted], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines()[-1].startswith("self-check FAILED: max_pool2d did not match")
