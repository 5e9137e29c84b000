"""reference.py, the plain-PyTorch math that CPU runs use when the interpreter is off: where it is not simply the
torch function, it must give that function's values, gradients, shapes and layouts."""

import pytest
import torch
import torch.nn.functional as F
from helpers import TOLERANCE, assert_close

from alexnet_triton import reference
from alexnet_triton.model import PAPER_LRN

SHAPES = [(2, 7, 5, 6), (3, 4, 9), (2, 6, 3, 4, 5), (1, 96, 15, 15)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("size", [1, 2, 5, 9])  # odd and even windows, one wider than some inputs' channels
def test_lrn_equals_pytorch_in_float64(shape, size):
    x = (torch.randn(shape, dtype=torch.float64) * 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    params = {"alpha": 0.3, "beta": 0.75, "k": 2.0}  # a strong alpha, so the window matters in every output
    out = reference.local_response_norm(x, size, **params)
    ref = F.local_response_norm(x_ref, size, **params)
    assert_close(out, ref, TOLERANCE[torch.float64], "forward")
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    assert_close(x.grad, x_ref.grad, TOLERANCE[torch.float64], "input gradient")


def test_lrn_in_float32_at_alexnets_parameters():
    x = torch.randn(4, 48, 15, 15) * 20  # large enough that the window sum moves the scale away from k
    out = reference.local_response_norm(x, **PAPER_LRN)
    ref = F.local_response_norm(x.double(), **PAPER_LRN)
    assert_close(out, ref, TOLERANCE[torch.float32], "forward")
    assert (out.double() - x.double() / PAPER_LRN["k"] ** PAPER_LRN["beta"]).abs().max() > 1e-3  # not just x / k^b


def test_lrn_keeps_layout_and_empty_shapes_as_pytorch():
    channels_last = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    assert reference.local_response_norm(channels_last, 3).stride() == F.local_response_norm(channels_last, 3).stride()
    for shape in [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4)]:
        empty = torch.randn(shape)
        assert reference.local_response_norm(empty, 5).shape == F.local_response_norm(empty, 5).shape


def test_lrn_max_pool_is_lrn_then_pool():
    x = torch.randn(2, 8, 11, 11, dtype=torch.float64) * 3
    out = reference.lrn_max_pool2d(x, 5, 3, 2, alpha=0.3, beta=0.75, k=2.0)
    ref = F.max_pool2d(F.local_response_norm(x, 5, 0.3, 0.75, 2.0), 3, 2)
    assert_close(out, ref, TOLERANCE[torch.float64], "forward")
