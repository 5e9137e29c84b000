"""at.backend, and the plain-PyTorch path that runs on a CPU when the Triton interpreter is off."""

import os
import subprocess
import sys

import torch
from helpers import reference_backend_env

import alexnet_triton as at


def test_backend_names():
    assert at.backend("cuda") == "triton"
    assert at.backend(torch.device("cuda", 1)) == "triton"
    expected_cpu = "triton-interpreter" if os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    assert at.backend("cpu") == expected_cpu
    assert at.backend(torch.empty(1)) == expected_cpu
    assert at.backend("meta") == "torch"


def test_cpu_without_interpreter_runs_the_reference():
    # The interpreter switch is read when triton is imported, so this needs a fresh process.
    script = """
import torch, torch.nn.functional as F, alexnet_triton as at
assert at.backend("cpu") == "torch", at.backend("cpu")
x = torch.randn(2, 4, 9, 9, requires_grad=True)
w, b = torch.randn(6, 2, 3, 3), torch.randn(6)
out = at.conv2d_relu(x, w, b, padding=1, groups=2)
torch.testing.assert_close(out, F.relu(F.conv2d(x, w, b, padding=1, groups=2)))
lrn = at.local_response_norm(out, 5, 5e-4, 0.75, 2.0)
torch.testing.assert_close(lrn, F.local_response_norm(out, 5, 5e-4, 0.75, 2.0))
torch.testing.assert_close(at.max_pool2d(out, 3, 2), F.max_pool2d(out, 3, 2))
dropped = at.dropout(out, 0.5, seed=1)
assert torch.equal(dropped, at.dropout(out, 0.5, seed=1))
kept = dropped != 0
torch.testing.assert_close(dropped[kept], out[kept] * 2)
dropped.sum().backward()
assert x.grad is not None
"""
    env = reference_backend_env()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
