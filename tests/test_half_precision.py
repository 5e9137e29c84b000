"""fp16 and bf16 through every op, forward and backward, against float64 (issue 12, item 1).

On a GPU these run the compiled kernels. Under Triton's interpreter fp16 runs the kernels as they are,
and bf16, which the interpreter (3.8) computes on raw 16-bit patterns, runs them in fp32 and is rounded
once at the end, as a GPU's fp32 accumulator is: either way the answer is checked here, never assumed.
"""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCE, assert_close, check_input_gradient, reference_backend_env
from test_conv import check_conv2d_relu
from test_lrn import STRONG

import alexnet_triton as at
from alexnet_triton.model import PAPER_LRN

HALF = [torch.float16, torch.bfloat16]


def test_the_issues_bf16_convolution_is_exact(device):
    # Under the interpreter this returned about 1.06e9 everywhere: tl.dot multiplied bf16 bit patterns.
    ones = torch.ones(1, 1, 3, 3, dtype=torch.bfloat16, device=device)
    out = at.conv2d_relu(ones, ones[..., :2, :2])
    assert torch.equal(out, torch.full((1, 1, 2, 2), 4.0, dtype=torch.bfloat16, device=device))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(
    "c_in, c_out, kernel, stride, padding, groups, size",
    [
        (6, 10, 3, 1, 1, 2, 11),  # grouped, padded
        (3, 8, 5, 2, 2, 1, 13),  # strided: the input gradient's masked taps
    ],
)
def test_conv2d_relu(c_in, c_out, kernel, stride, padding, groups, size, dtype, device):
    x = torch.randn(2, c_in, size, size, device=device).to(dtype)
    w = (torch.randn(c_out, c_in // groups, kernel, kernel, device=device) / (c_in // groups * kernel**2) ** 0.5).to(
        dtype
    )
    b = torch.randn(c_out, device=device).to(dtype)
    check_conv2d_relu(x, w, b, stride, padding, groups, dtype)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("params", [PAPER_LRN, STRONG], ids=["paper", "strong"])
def test_local_response_norm(params, dtype, device):
    x = torch.randn(2, 16, 7, 9, device=device).to(dtype)
    check_input_gradient(
        lambda t: at.local_response_norm(t, **params),
        lambda t: F.local_response_norm(t, **params),
        x,
        TOLERANCE[dtype],
    )


@pytest.mark.parametrize("dtype", HALF)
def test_max_pool2d(dtype, device):
    x = torch.randn(2, 5, 13, 13, device=device).to(dtype)
    check_input_gradient(lambda t: at.max_pool2d(t, 3, 2, 1), lambda t: F.max_pool2d(t, 3, 2, 1), x, TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", HALF)
def test_max_pool2d_picks_pytorchs_elements(dtype, device):
    # A maximum is one of the inputs, so it is exact in any precision: the same values and the same
    # routing as PyTorch's, with negative numbers (bit patterns that order wrongly as integers), ties
    # (small integers) and NaN. Integer gradients make the routed sums exact too.
    x = torch.randint(-3, 3, (2, 4, 11, 11), device=device).to(dtype)
    x[0, 0, 5, 5] = float("nan")
    x[1, 2] = -torch.rand(11, 11, device=device).to(dtype) - 1  # a channel of negative values only
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = at.max_pool2d(x_ours, 3, 2), F.max_pool2d(x_ref, 3, 2)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    grad = torch.randint(-20, 20, out.shape, device=device).to(dtype)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(x_ours.grad, x_ref.grad)


@pytest.mark.parametrize("dtype", HALF)
def test_dropout(dtype, device):
    p = 0.3
    magnitudes = torch.rand(64, 100, device=device) + 0.5  # never 0, so out == 0 marks a dropped element
    x = (magnitudes * torch.randn(64, 100, device=device).sign()).to(dtype).requires_grad_()
    out = at.dropout(x, p, seed=5)
    kept = out != 0
    assert 0.25 < 1 - kept.double().mean().item() < 0.35
    ref = x.detach().double() * kept / (1 - p)
    assert_close(out, ref, TOLERANCE[dtype], "output")
    # Scaled in fp32 and rounded once, as the GPU kernel does.
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(out, torch.where(kept, (x.detach().float() * scale).to(dtype), 0))
    grad = torch.randn_like(out)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    assert grad_x.dtype == dtype
    assert_close(grad_x, grad.double() * kept / (1 - p), TOLERANCE[dtype], "input gradient")


def test_compiled_kernels_are_launched_as_they_are():
    # Only the interpreter's launches go through fp32; without it each launcher is the plain function.
    script = """
from alexnet_triton.kernels import _common, conv, conv_grad, dropout, lrn, pool
assert not _common.INTERPRET
launchers = [conv.conv_relu_forward, conv_grad.conv_relu_input_grad, conv_grad.conv_relu_weight_grad, lrn.lrn_forward,
             lrn.lrn_backward, pool.max_pool_forward, pool.max_pool_backward, dropout.dropout]
wrapped = [f.__name__ for f in launchers if hasattr(f, "__wrapped__")]
assert not wrapped, wrapped
"""
    subprocess.run([sys.executable, "-c", script], env=reference_backend_env(), check=True, timeout=120)
