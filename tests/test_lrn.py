"""at.local_response_norm and at.nn.LocalResponseNorm against float64 F.local_response_norm."""

import pytest
import torch
import torch.nn.functional as F
from alexnet_triton.kernels import _common
from helpers import TOLERANCE, check_input_gradient, every_other, saved_tensors
from tiles import table, uncovered

import alexnet_triton as at
from alexnet_triton.model import PAPER_LRN, layer_shapes

# A strong normalization, so that the cross-channel term of the gradient is far above rounding.
STRONG = {"size": 5, "alpha": 2.0, "beta": 0.75, "k": 1.0}


def check_lrn(x, size, alpha, beta, k, tol, **kwargs):
    return check_input_gradient(
        lambda t: at.local_response_norm(t, size, alpha, beta, k),
        lambda t: F.local_response_norm(t, size, alpha, beta, k),
        x,
        tol,
        **kwargs,
    )


# AlexNet's LRNs, from the model's table: a tower's channels (48, 128), which each tower normalizes on its own, on a
# 6 x 6 map (the maps are 55 and 27), which keeps the interpreter quick: a batch of 2 is 72 pixels, three programs of
# 32 under the tests' tiles, each walking every channel.
TEST_SIDE = 6
ALEXNET_LRNS = {f"lrn{shape.layer.number}": shape.out_channels for shape in layer_shapes() if shape.layer.lrn}


@pytest.mark.parametrize("layer", ALEXNET_LRNS)
@pytest.mark.parametrize("params", [PAPER_LRN, STRONG], ids=["paper", "strong"])
def test_alexnet_configurations(layer, params, precision, launches, device):
    dtype, tol_key = precision
    x = torch.randn(2, ALEXNET_LRNS[layer], TEST_SIDE, TEST_SIDE, device=device, dtype=dtype)
    check_lrn(x, **params, tol=TOLERANCE[tol_key])
    if _common.INTERPRET:  # past the first tile: three programs, the last partial; the channel walk is a loop
        assert [launch.kernel for launch in launches] == ["_lrn_fwd_kernel", "_lrn_bwd_kernel"]
        assert not uncovered(launches), table(launches)


@pytest.mark.parametrize(
    "shape, size",
    [
        ((2, 7, 5, 6), 4),  # even window: one more channel before than after
        ((1, 9, 3, 5), 2),
        ((2, 5, 3, 3), 8),  # window wider than the channel count
        ((2, 19, 3, 4), 11),  # halves of 5 channels: chunks of 8 (a GPU's in bf16)
        ((3, 6, 4, 7), 1),
        ((1, 1, 5, 5), 5),  # one channel
        ((2, 11, 7), 3),  # (N, C, L)
        ((2, 6, 3, 4, 5), 3),  # (N, C, D, H, W)
    ],
)
def test_odd_shapes_and_window_sizes(shape, size, device):
    x = torch.randn(*shape, device=device)
    check_lrn(x, size, 1.5, 0.6, 0.5, TOLERANCE[torch.float32])


@pytest.mark.parametrize(
    "channels, size",
    [
        (12, 5),
        (21, 11),  # the window's halves (5) past 4 channels: chunks of 8, a GPU's in bf16; the last chunk partial
    ],
)
def test_channels_last_in_and_out(channels, size, device):
    x = torch.randn(2, channels, 5, 7, device=device).to(memory_format=torch.channels_last)
    out, grad = check_lrn(x, **{**STRONG, "size": size}, tol=TOLERANCE[torch.float32])
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous_input_and_gradient(device):
    x = torch.randn(2, 6, 9, 16, device=device).permute(0, 2, 1, 3)[..., ::2]  # (2, 9, 6, 8), strided
    assert not x.is_contiguous()
    check_lrn(x, **STRONG, tol=TOLERANCE[torch.float32], grad_view=every_other)


def test_gradient_from_sum_backward(device):
    # out.sum().backward() sends an expanded gradient: every stride 0.
    x = torch.randn(2, 8, 4, 4, device=device, requires_grad=True)
    at.local_response_norm(x, **STRONG).sum().backward()
    x64 = x.detach().double().requires_grad_()
    F.local_response_norm(x64, **STRONG).sum().backward()
    torch.testing.assert_close(x.grad, x64.grad.float(), rtol=1e-5, atol=1e-6)


def test_gradcheck_float64(device):
    # gradcheck's fast mode (one random projection of the Jacobian, a few calls) lets the shape span programs: 40
    # pixels, three blocks.
    x = torch.randn(2, 6, 4, 5, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: at.local_response_norm(t, 3, 1.0, 0.75, 1.0), (x,), fast_mode=True)


def test_only_the_input_is_saved_for_backward(device):
    x = torch.randn(2, 8, 5, 5, device=device, requires_grad=True)
    out, saved = saved_tensors(lambda: at.local_response_norm(x, **PAPER_LRN))
    assert len(saved) == 1 and saved[0] is x


def test_module_is_a_drop_in(device):
    theirs = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    ours = at.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    assert isinstance(ours, torch.nn.LocalResponseNorm) and repr(ours) == repr(theirs)
    x = torch.randn(2, 16, 4, 4, device=device)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"size": 0}, ValueError, "size must be a positive int"),
        ({"size": 2.5}, ValueError, "size must be a positive int"),
        ({"alpha": "big"}, TypeError, "alpha must be a number"),
        ({"beta": None}, TypeError, "beta must be a number"),
        ({"input": torch.randn(4, 5)}, ValueError, "input must be at least 3-D"),
        ({"input": torch.ones(2, 3, 4, dtype=torch.int32)}, TypeError, "input must have a floating dtype"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    args = {"input": torch.randn(2, 3, 4, 4), "size": 3, "alpha": 1e-4, "beta": 0.75, "k": 1.0} | kwargs
    with pytest.raises(error, match=match):
        at.local_response_norm(**args)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"size": 2.5}, ValueError, "size must be a positive int"),
        ({"size": 3, "k": "one"}, TypeError, "k must be a number"),
    ],
)
def test_module_refuses_bad_arguments_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        at.nn.LocalResponseNorm(**kwargs)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_k_zero_with_zero_edge_channels_stays_finite(memory_format, device):
    # k = 0 and a zero channel at each edge: every in-range scale is positive (a neighbour is not zero), so PyTorch's
    # gradient is finite; the channels past the edges have a zero scale, and must add nothing (not 0 x inf).
    x = (torch.rand(2, 10, 5, 5, device=device, dtype=torch.float64) + 0.5).to(memory_format=memory_format)
    x[:, 0] = x[:, -1] = 0.0
    x.requires_grad_(True)
    grad = torch.randn(2, 10, 5, 5, device=device, dtype=torch.float64)
    (got,) = torch.autograd.grad(at.local_response_norm(x, 5, alpha=1e-2, beta=0.75, k=0.0), x, grad)
    (want,) = torch.autograd.grad(F.local_response_norm(x, 5, alpha=1e-2, beta=0.75, k=0.0), x, grad)
    assert want.isfinite().all() and got.isfinite().all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
