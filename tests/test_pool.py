"""at.max_pool2d and at.nn.MaxPool2d against F.max_pool2d: values, gradients, NaN, ties, layouts."""

import pytest
import torch
import torch.nn.functional as F
from alexnet_triton.kernels import _common
from helpers import TOLERANCE, check_input_gradient, every_other, saved_tensors
from tiles import table, uncovered

import alexnet_triton as at
from alexnet_triton.model import OVERLAPPING_POOL, layer_shapes


def check_pool(x, kernel, stride, padding, tol=TOLERANCE[torch.float32], **kwargs):
    return check_input_gradient(
        lambda t: at.max_pool2d(t, kernel, stride, padding),
        lambda t: F.max_pool2d(t, kernel, stride, padding),
        x,
        tol,
        **kwargs,
    )


# AlexNet's pools, from the model's table: the side of the map each reads (55, 27, 13), with few channels (5, 7, 9:
# under the tests' tiles three channel blocks or more, the last partial).
ALEXNET_POOLS = {
    f"pool{shape.layer.number}": (channels, shape.output_size, shape.pooled_size)
    for channels, shape in zip((5, 7, 9), [shape for shape in layer_shapes() if shape.layer.pool], strict=True)
}


@pytest.mark.parametrize("layer", ALEXNET_POOLS)
def test_alexnet_overlapping_pool(layer, precision, launches, device):
    dtype, tol_key = precision
    channels, size, pooled_size = ALEXNET_POOLS[layer]
    x = torch.randn(2, channels, size, size, device=device, dtype=dtype)
    out, _ = check_pool(x, *OVERLAPPING_POOL, 0, TOLERANCE[tol_key])
    assert out.shape[-2:] == (pooled_size, pooled_size)
    if _common.INTERPRET:  # past the first tile: three programs or more each way, the last partial
        assert [launch.kernel for launch in launches] == ["_max_pool_fwd_kernel", "_max_pool_bwd_kernel"]
        assert not uncovered(launches), table(launches)


@pytest.mark.parametrize(
    "shape, kernel, stride, padding",
    [
        ((2, 3, 14, 14), 3, 2, 0),  # the last row and column fit no window
        ((1, 1, 9, 11), 3, 2, 1),  # padding, batch 1, one channel
        ((2, 2, 8, 8), 2, None, 0),  # non-overlapping, stride defaults to the kernel
        ((1, 3, 10, 7), (3, 2), (2, 1), (1, 0)),  # rectangular everything
        ((2, 2, 11, 10), 5, 3, 2),
        ((1, 2, 7, 7), 2, 3, 0),  # stride larger than the window: some inputs in no window
        ((3, 7, 7), 3, 2, 0),  # unbatched
    ],
)
def test_odd_configurations(shape, kernel, stride, padding, device):
    check_pool(torch.randn(*shape, device=device), kernel, stride, padding)


def test_nan_propagates(device):
    x = torch.randn(1, 2, 9, 9, device=device)
    x[0, 0, 4, 4] = float("nan")
    x[0, 1, 0, 0] = float("nan")
    out = at.max_pool2d(x, 3, 2)
    torch.testing.assert_close(out, F.max_pool2d(x, 3, 2), equal_nan=True, rtol=0, atol=0)
    assert out.isnan().sum() == 4 + 1


def test_ties_and_minus_infinity_route_the_gradient_like_pytorch(device):
    # Small integers make ties in almost every window; one window holds nothing but -inf.
    x = torch.randint(-2, 3, (2, 3, 9, 9), device=device).double()
    x[0, 0, :3, :3] = float("-inf")
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = at.max_pool2d(x_ours, 3, 2, 1), F.max_pool2d(x_ref, 3, 2, 1)
    assert torch.equal(out, ref) and out.isinf().any()
    # Integer gradients: an input chosen by several windows sums them exactly in any order, so the
    # comparison checks the routing alone.
    grad = torch.randint(-50, 50, out.shape, device=device).double()
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(x_ours.grad, x_ref.grad)


def test_channels_last_in_and_out(device):
    x = torch.randn(2, 6, 13, 13, device=device).to(memory_format=torch.channels_last)
    out, grad = check_pool(x, 3, 2, 0)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous_input_and_gradient(device):
    x = torch.randn(2, 11, 4, 26, device=device).permute(0, 2, 1, 3)[..., ::2]  # (2, 4, 11, 13), strided
    assert not x.is_contiguous()
    check_pool(x, 3, 2, 1, grad_view=every_other)


def test_gradient_from_sum_backward(device):
    x = torch.randn(2, 3, 13, 13, device=device, requires_grad=True)
    at.max_pool2d(x, 3, 2).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    F.max_pool2d(x_ref, 3, 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_gradcheck_float64(device):
    # gradcheck's fast mode (one random projection of the Jacobian, a few calls) lets the shape span programs: 80
    # outputs and 252 inputs, three and four blocks.
    x = torch.randn(2, 2, 7, 9, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: at.max_pool2d(t, 3, 2, 1), (x,), fast_mode=True)


def test_saves_one_byte_per_output_element(device):
    x = torch.randn(2, 4, 13, 13, device=device, requires_grad=True)
    out, saved = saved_tensors(lambda: at.max_pool2d(x, 3, 2))
    assert len(saved) == 1
    assert saved[0].dtype == torch.uint8 and saved[0].shape == out.shape


def test_module_is_a_drop_in(device):
    ours, theirs = at.nn.MaxPool2d(3, stride=2), torch.nn.MaxPool2d(3, stride=2)
    assert isinstance(ours, torch.nn.MaxPool2d) and repr(ours) == repr(theirs)
    x = torch.randn(2, 4, 13, 13, device=device)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"dilation": 2}, "dilation"), ({"ceil_mode": True}, "ceil_mode"), ({"return_indices": True}, "indices")],
)
def test_module_rejects_what_it_cannot_compute(kwargs, match):
    with pytest.raises(ValueError, match=match):
        at.nn.MaxPool2d(3, 2, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((torch.randn(4, 4), 2), {}, ValueError, "input must be 3-D or 4-D"),
        ((torch.ones(1, 1, 4, 4, dtype=torch.int64), 2), {}, TypeError, "input must have a floating dtype"),
        ((torch.randn(1, 1, 4, 4), 0), {}, ValueError, "kernel_size must be >= 1"),
        ((torch.randn(1, 1, 4, 4), 2, 0), {}, ValueError, "stride must be >= 1"),
        ((torch.randn(1, 1, 4, 4), 2, 2, 2), {}, ValueError, "padding 2 must be at most half"),
        ((torch.randn(1, 1, 2, 4), 3), {}, ValueError, "input height 2 .* smaller than the kernel"),
        ((torch.randn(1, 1, 4, 4), 2), {"ceil_mode": True}, ValueError, "ceil_mode=True is not supported"),
        ((torch.randn(1, 1, 4, 4), 2), {"dilation": 2}, ValueError, "dilation=2 is not supported"),
        ((torch.randn(1, 1, 4, 4), "3"), {}, TypeError, "kernel_size must be an int or a pair"),
    ],
)
def test_bad_arguments_name_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        at.max_pool2d(*args, **kwargs)
