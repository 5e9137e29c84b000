"""at.lrn_max_pool2d and at.nn.LRNMaxPool2d against float64 F.max_pool2d(F.local_response_norm(...)): values,
input gradients, ties, NaN, layouts, empty batches, what is saved for backward, and argument checks."""

import pytest
import torch
import torch.nn.functional as F
from alexnet_triton.kernels import _common
from helpers import TOLERANCE, assert_close, check_input_gradient, every_other, saved_tensors
from tiles import table, uncovered

import alexnet_triton as at
from alexnet_triton.model import OVERLAPPING_POOL, PAPER_LRN, layer_shapes

# A strong normalization, so that LRN's cross-channel term of the gradient is far above rounding.
STRONG = {"size": 5, "alpha": 2.0, "beta": 0.75, "k": 1.0}


def composite(x64, lrn: dict, kernel, stride, padding, routing_dtype: torch.dtype):
    """The separate ops in float64, each window's maximum chosen among the LRN values as rounded to
    routing_dtype: at that precision the separate ops compare rounded values, and two values within
    its rounding of each other are a tie there, which goes to the first."""
    normalized = F.local_response_norm(x64, **lrn)
    _, index = F.max_pool2d(
        normalized.detach().to(routing_dtype).double(), kernel, stride, padding, return_indices=True
    )
    return normalized.flatten(2).gather(2, index.flatten(2)).view_as(index)


def without_size(lrn: dict) -> dict:
    """alpha, beta and k: lrn_max_pool2d's keyword arguments."""
    return {name: value for name, value in lrn.items() if name != "size"}


def check_lrn_pool(x, lrn, kernel, stride, padding, tol=TOLERANCE[torch.float32], **kwargs):
    return check_input_gradient(
        lambda t: at.lrn_max_pool2d(t, lrn["size"], kernel, stride, padding, **without_size(lrn)),
        lambda t: composite(t, lrn, kernel, stride, padding, x.dtype),
        x,
        tol,
        **kwargs,
    )


# AlexNet's layers 1 and 2 from the model's table: a tower's channels (48, 128), on a 13 x 13 map (the maps they pool
# are 55 and 27), which keeps the interpreter quick: a batch of 2 pools to 6 x 6 in 18 items (pairs of output columns x
# bands of 2 rows) from 98 blocks of 2 x 2 input pixels, three programs or more each way under the tests' tiles.
TEST_SIDE = 13
ALEXNET_LAYERS = {
    f"layer{shape.layer.number}": shape.out_channels for shape in layer_shapes() if shape.layer.lrn and shape.layer.pool
}


@pytest.mark.parametrize("layer", ALEXNET_LAYERS)
@pytest.mark.parametrize("lrn", [PAPER_LRN, STRONG], ids=["paper", "strong"])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_alexnet_layers(layer, lrn, memory_format, precision, launches, device):
    # channels_last (a GPU's layout) takes groups of 8 channels a thread, NCHW one channel
    dtype, tol_key = precision
    channels, size = ALEXNET_LAYERS[layer], TEST_SIDE
    x = torch.randn(2, channels, size, size, device=device, dtype=dtype).to(memory_format=memory_format)
    out, grad = check_lrn_pool(x, lrn, *OVERLAPPING_POOL, 0, TOLERANCE[tol_key])
    assert out.shape == (2, channels, (size - 3) // 2 + 1, (size - 3) // 2 + 1)
    if _common.INTERPRET:  # past the first tile: three programs or more each way (AlexNet's channels fill theirs)
        assert [launch.kernel for launch in launches] == ["_lrn_max_pool_fwd_kernel", "_lrn_max_pool_bwd_kernel"]
        assert not uncovered(launches, partial=False), table(launches)
        forward, backward = (launch.coverage() for launch in launches)
        assert forward["column pairs x bands"][1] and backward["pixel blocks"][1], "a partial last program each way"


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_programs_split_every_dimension_with_a_partial_last_one(memory_format, launches, device):
    # 37 channels: 5 groups of 8, the last of 5 channels, in 3 programs; a 15 x 17 map padded by 1 pools to 8 x 9 (an
    # odd number of columns: the last pair has one), 4 bands of 2 rows; 8 x 9 blocks of 2 x 2 pixels.
    x = torch.randn(2, 37, 15, 17, device=device).to(memory_format=memory_format)
    check_lrn_pool(x, STRONG, 3, 2, 1)
    if _common.INTERPRET:
        assert not uncovered(launches), table(launches)


@pytest.mark.parametrize(
    "shape, size, kernel, stride, padding",
    [
        ((1, 7, 10, 9), 4, 3, 2, 1),  # batch 1, even LRN window, padding, the last row fits no window
        ((2, 5, 7, 8), 8, (3, 2), (2, 1), (1, 0)),  # LRN window wider than the channels, rectangular pool
        ((1, 1, 5, 5), 5, 2, None, 0),  # one channel, stride defaults to the kernel
        ((2, 6, 11, 10), 3, 5, 3, 2),
        ((1, 3, 7, 7), 1, 2, 3, 0),  # LRN of one channel; stride larger than the window: inputs in no window
    ],
)
def test_odd_shapes_windows_and_padding(shape, size, kernel, stride, padding, device):
    x = torch.randn(*shape, device=device)
    check_lrn_pool(x, {**STRONG, "size": size}, kernel, stride, padding)


def test_channels_last_in_and_out(device):
    x = torch.randn(2, 12, 9, 11, device=device).to(memory_format=torch.channels_last)
    out, grad = check_lrn_pool(x, STRONG, 3, 2, 1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_non_contiguous_input_and_gradient(device):
    x = torch.randn(2, 9, 6, 22, device=device).permute(0, 2, 1, 3)[..., ::2]  # (2, 6, 9, 11), strided
    assert not x.is_contiguous()
    check_lrn_pool(x, STRONG, 3, 2, 0, grad_view=every_other)


def test_gradient_from_sum_backward(device):
    # out.sum().backward() sends an expanded gradient: every stride 0.
    x = torch.randn(2, 8, 9, 9, device=device, requires_grad=True)
    at.lrn_max_pool2d(x, 5, 3, 2, alpha=2.0).sum().backward()
    x64 = x.detach().double().requires_grad_()
    composite(x64, STRONG, 3, 2, 0, torch.float32).sum().backward()
    assert_close(x.grad, x64.grad, TOLERANCE[torch.float32], "input gradient")


def test_ties_and_padding_route_the_gradient_like_pytorch(device):
    # Inputs of -1, 0 and 1: LRN values tie exactly wherever a pixel's value and its window's count of
    # nonzero neighbours agree, which happens in most windows; all-negative windows meet the padding.
    x = torch.randint(-1, 2, (2, 6, 9, 9), device=device).double()
    lrn = {**STRONG, "size": 3}
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = at.lrn_max_pool2d(x_ours, 3, 3, 2, 1, **without_size(lrn))
    ref = F.max_pool2d(F.local_response_norm(x_ref, **lrn), 3, 2, 1)
    assert_close(out, ref, TOLERANCE[torch.float64], "output")
    # Integer gradients: the windows that choose an input sum exactly in any order, so a gradient that
    # reached another input than PyTorch's shows at LRN's scale, far above float64 rounding.
    grad = torch.randint(-50, 50, out.shape, device=device).double()
    out.backward(grad)
    ref.backward(grad)
    assert_close(x_ours.grad, x_ref.grad, TOLERANCE[torch.float64], "input gradient")


def test_nan_propagates_through_the_channel_window_and_the_pool(device):
    x = torch.randn(1, 6, 9, 9, device=device)
    x[0, 2, 4, 4] = float("nan")  # LRN spreads it to channels 0-4 at that pixel (size 5), the pool to 4 windows
    out = at.lrn_max_pool2d(x, 5, 3, 2, alpha=2.0)
    ref = F.max_pool2d(F.local_response_norm(x, 5, 2.0), 3, 2)
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert out.isnan().sum() == 5 * 4


def test_empty_batch_and_batch_one(device):
    x = torch.randn(0, 4, 9, 9, device=device, requires_grad=True)
    out = at.lrn_max_pool2d(x, 3, 3, 2)
    assert out.shape == F.max_pool2d(F.local_response_norm(x, 3), 3, 2).shape == (0, 4, 4, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape
    check_lrn_pool(torch.randn(1, 4, 9, 9, device=device), STRONG, 3, 2, 0)


def test_gradcheck_float64(device):
    # Windows that overlap, padding on every side. gradcheck's fast mode (one random projection of the Jacobian, a
    # few calls, where the full one takes two per input element) lets the shape span programs: 20 pooled pixels
    # and 63 input pixels, which the interpreter's test tiles cut into three programs or more.
    x = torch.randn(1, 4, 7, 9, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: at.lrn_max_pool2d(t, 3, 3, 2, 1, alpha=1.0), (x,), fast_mode=True)


def test_saves_the_input_and_one_byte_per_output_element(device):
    x = torch.randn(2, 48, 13, 13, device=device, requires_grad=True)
    out, saved = saved_tensors(lambda: at.lrn_max_pool2d(x, **PAPER_LRN, kernel_size=3, stride=2))
    assert len(saved) == 2 and saved[0] is x
    positions = saved[1]
    assert positions.dtype == torch.uint8 and positions.shape == out.shape
    beyond_the_input = sum(t.untyped_storage().nbytes() for t in saved if t is not x)
    assert beyond_the_input == out.numel() == 2 * 48 * 6 * 6
    # What the composite saves beyond its input: the LRN's temporaries and map, and int64 indices.
    _, composite_saved = saved_tensors(
        lambda: F.max_pool2d(F.local_response_norm(x, PAPER_LRN["size"], PAPER_LRN["alpha"]), 3, 2)
    )
    assert sum(t.untyped_storage().nbytes() for t in composite_saved if t is not x) > 20 * beyond_the_input


def test_module_is_both_modules_it_fuses(device):
    ours = at.nn.LRNMaxPool2d(5, 3, 2, alpha=5e-4, beta=0.75, k=2.0)
    theirs = torch.nn.Sequential(torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), torch.nn.MaxPool2d(3, 2))
    assert isinstance(ours, torch.nn.LocalResponseNorm) and isinstance(ours, torch.nn.MaxPool2d)
    assert (ours.size, ours.alpha, ours.beta, ours.k) == (5, 5e-4, 0.75, 2.0)
    assert (ours.kernel_size, ours.stride, ours.padding, ours.dilation, ours.ceil_mode) == (3, 2, 0, 1, False)
    assert repr(ours) == "LRNMaxPool2d(5, alpha=0.0005, beta=0.75, k=2.0, kernel_size=3, stride=2, padding=0)"
    assert ours.state_dict() == {}
    x = torch.randn(2, 16, 9, 9, device=device)
    assert_close(ours(x), theirs(x), TOLERANCE[torch.float32], "module output")
    assert at.nn.LRNMaxPool2d(3, (3, 2)).stride == (3, 2), "stride defaults to the kernel, as in nn.MaxPool2d"


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((0, 3), {}, ValueError, "size must be a positive int"),
        ((5, 3), {"k": "one"}, TypeError, "k must be a number"),
        ((5, 0), {}, ValueError, "kernel_size must be >= 1"),
        ((5, 2, 2, 2), {}, ValueError, "padding 2 must be at most half"),
        ((5, "3"), {}, TypeError, "kernel_size must be an int or a pair"),
    ],
)
def test_module_refuses_bad_arguments_at_construction(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        at.nn.LRNMaxPool2d(*args, **kwargs)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((torch.randn(4, 7, 7), 3, 3), {}, ValueError, "input must be 4-D .* disagree on which dimension"),
        ((torch.randn(1, 4, 2, 7, 7), 3, 3), {}, ValueError, "input must be 4-D"),
        ((torch.ones(1, 4, 7, 7, dtype=torch.int32), 3, 3), {}, TypeError, "input must have a floating dtype"),
        ((torch.randn(1, 4, 7, 7), 0, 3), {}, ValueError, "size must be a positive int"),
        ((torch.randn(1, 4, 7, 7), 3, 3), {"beta": None}, TypeError, "beta must be a number"),
        ((torch.randn(1, 4, 7, 7), 3, 3, 0), {}, ValueError, "stride must be >= 1"),
        ((torch.randn(1, 4, 7, 7), 3, 2, 2, 2), {}, ValueError, "padding 2 must be at most half"),
        ((torch.randn(1, 0, 7, 7), 3, 3), {}, ValueError, "empty channel or spatial dimension"),
        ((torch.randn(1, 4, 2, 7), 3, 3), {}, ValueError, "input height 2 .* smaller than the kernel"),
    ],
)
def test_bad_arguments_name_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        at.lrn_max_pool2d(*args, **kwargs)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_k_zero_with_zero_edge_channels_stays_finite(memory_format, device):
    # As tests/test_lrn.py's: k = 0, a zero channel at each edge; the channels past the edges must add nothing.
    x = (torch.rand(1, 10, 5, 5, device=device, dtype=torch.float64) + 0.5).to(memory_format=memory_format)
    x[:, 0] = x[:, -1] = 0.0
    x.requires_grad_(True)
    got = at.lrn_max_pool2d(x, 5, 3, 2, alpha=1e-2, beta=0.75, k=0.0)
    want = F.max_pool2d(F.local_response_norm(x, 5, alpha=1e-2, beta=0.75, k=0.0), 3, 2)
    grad = torch.randn_like(want)
    (got_grad,), (want_grad,) = torch.autograd.grad(got, x, grad), torch.autograd.grad(want, x, grad)
    assert want_grad.isfinite().all() and got_grad.isfinite().all()
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-12)
