"""Output and gradient layouts chosen as PyTorch chooses them, views included (issue 12, item 3).

PyTorch lays out an op's output by c10's suggest_memory_format, which reads strides and so also
recognises a channels_last tensor behind a view such as a channel slice; convolutions take
channels_last when the input or the weight suggests it. Each op here runs on such views and must give
the strides PyTorch's own op gives, with the same values and gradients.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from alexnet_triton.kernels import _common
from alexnet_triton.kernels import conv as conv_kernels
from helpers import TOLERANCE, assert_close

import alexnet_triton as at

CHANNELS_LAST = torch.channels_last


def sliced_channels_last(device, *, integers=False) -> torch.Tensor:
    """The issue's input: every other channel of a channels_last tensor, a view that is not dense."""
    shape = (4, 8, 10, 10)
    base = torch.randint(1, 10, shape, device=device).float() if integers else torch.randn(shape, device=device)
    x = base.contiguous(memory_format=CHANNELS_LAST)[:, ::2]
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=CHANNELS_LAST)
    return x


def sliced_nchw(device) -> torch.Tensor:
    return torch.randn(4, 8, 10, 10, device=device)[:, ::2]


def pooled_strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides PyTorch (c10's suggest_memory_format) gives a 4-D op's output on t."""
    return F.max_pool2d(t, 1).stride()


def layout_of(memory_format, t: torch.Tensor) -> tuple[int, ...]:
    return torch.empty(t.shape, memory_format=memory_format).stride()


# ---- the rule itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(4, 8, 10, 10).contiguous(memory_format=CHANNELS_LAST)[:, ::2],  # the view
        lambda: torch.randn(4, 8, 10, 10).contiguous(memory_format=CHANNELS_LAST)[..., ::2, 1:],
        lambda: torch.randn(4, 8, 10, 10)[:, ::2],
        lambda: torch.randn(4, 8, 10, 10).contiguous(memory_format=CHANNELS_LAST),
        lambda: torch.randn(2, 1, 5, 5).contiguous(memory_format=CHANNELS_LAST),  # one channel
        lambda: torch.randn(2, 6, 1, 1).contiguous(memory_format=CHANNELS_LAST),  # one pixel
        lambda: torch.randn(3, 1, 1, 1),  # N111: ambiguous, NCHW
        lambda: torch.randn(2, 1, 5, 5).expand(2, 4, 5, 5),  # broadcast channels: NCHW
        lambda: torch.randn(2, 5, 4, 3).permute(0, 3, 1, 2),  # (N, W, C, H) -> NHWC order: channels_last
        lambda: torch.randn(2, 4, 3, 5).permute(0, 2, 1, 3),  # NHCW: neither, NCHW
    ],
    ids=[
        "sliced-channels",
        "sliced-pixels",
        "sliced-nchw",
        "channels-last",
        "one-channel",
        "one-pixel",
        "n111",
        "broadcast-channels",
        "permuted-to-nhwc",
        "nhcw",
    ],
)
def test_suggest_memory_format_is_pytorchs(make):
    t = make()
    assert layout_of(_common.suggest_memory_format(t), t) == pooled_strides(t)


def test_suggest_memory_format_is_pytorchs_on_random_views():
    # Random shapes with ones and twos, permutations, slices and broadcasts: where the rule has its edge cases.
    rng = random.Random(torch.randint(0, 2**31, ()).item())
    for _ in range(300):
        shape = [rng.choice([1, 1, 2, 3]) for _ in range(4)]
        steps = [rng.choice([1, 2]) for _ in range(4)]
        order = rng.sample(range(4), 4)
        base = torch.randn(*[shape[d] * steps[d] for d in order]).permute(*[order.index(d) for d in range(4)])
        t = base[tuple(slice(None, None, step) for step in steps)]
        if rng.random() < 0.1:
            t = t[:, :1].expand(-1, shape[1], -1, -1)
        assert layout_of(_common.suggest_memory_format(t), t) == pooled_strides(t), f"{t.shape} {t.stride()}"


@pytest.mark.parametrize(
    "x_format, weight_format, expected",
    [
        ("nchw", "nchw", torch.contiguous_format),
        ("channels_last", "nchw", CHANNELS_LAST),
        ("nchw", "channels_last", CHANNELS_LAST),
        ("channels_last", "channels_last", CHANNELS_LAST),
    ],
)
def test_conv_layout_follows_the_input_or_the_weight(x_format, weight_format, expected):
    x = sliced_channels_last("cpu") if x_format == "channels_last" else sliced_nchw("cpu")
    w = torch.randn(6, 4, 3, 3)
    if weight_format == "channels_last":
        w = w.contiguous(memory_format=CHANNELS_LAST)
    assert conv_kernels.output_memory_format(x, w) == expected
    assert F.conv2d(x, w).is_contiguous(memory_format=expected)


# ---- every op on views, against PyTorch's op on the same view -------------------------------------


def compare_layouts_and_gradients(ours, theirs, inputs, tol, *, exact=False):
    """ours(*inputs) and theirs(*inputs): the same strides for the output and every input's gradient,
    and the same values (exactly, or to tol against theirs in float64)."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = ours(*inputs)
    ref = theirs(*inputs)
    assert out.stride() == ref.stride(), f"output strides {out.stride()} != PyTorch's {ref.stride()}"
    grad = torch.randint_like(ref, -9, 10)  # in the output's layout, as autograd passes it on
    grads = torch.autograd.grad(out, inputs, grad)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert g.stride() == r.stride(), f"gradient {i} strides {g.stride()} != PyTorch's {r.stride()}"
    if exact:
        assert torch.equal(out, ref)
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.equal(g, r)
        return
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref64 = theirs(*inputs64)
    assert_close(out, ref64, tol, "output")
    for i, (g, r) in enumerate(zip(grads, torch.autograd.grad(ref64, inputs64, grad.double()), strict=True)):
        assert_close(g, r, tol, f"gradient {i}")


@pytest.mark.parametrize("make_input", [sliced_channels_last, sliced_nchw], ids=["channels-last", "nchw"])
@pytest.mark.parametrize("weight_channels_last", [False, True], ids=["weight-nchw", "weight-channels-last"])
def test_conv2d_relu_on_views(make_input, weight_channels_last, device):
    x = make_input(device)
    w = torch.randn(6, 4, 3, 3, device=device) / 6
    if weight_channels_last:
        w = w.contiguous(memory_format=CHANNELS_LAST)
    b = torch.randn(6, device=device).abs() + 4.0  # keeps pre-activations away from ReLU's kink
    compare_layouts_and_gradients(
        lambda x, w, b: at.conv2d_relu(x, w, b, padding=1),
        lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=1)),
        [x, w, b],
        TOLERANCE[torch.float32],
    )


@pytest.mark.parametrize("make_input", [sliced_channels_last, sliced_nchw], ids=["channels-last", "nchw"])
def test_local_response_norm_on_views(make_input, device):
    compare_layouts_and_gradients(
        lambda x: at.local_response_norm(x, 3, alpha=2.0),
        lambda x: F.local_response_norm(x, 3, alpha=2.0),
        [make_input(device)],
        TOLERANCE[torch.float32],
    )


@pytest.mark.parametrize("make_input", [sliced_channels_last, sliced_nchw], ids=["channels-last", "nchw"])
def test_max_pool2d_on_views(make_input, device):
    # The case, with the module; small integers make ties, integer gradients make sums exact.
    x = sliced_channels_last(device, integers=True) if make_input is sliced_channels_last else make_input(device)
    compare_layouts_and_gradients(at.nn.MaxPool2d(2, 1, 1), torch.nn.MaxPool2d(2, 1, 1), [x], 0.0, exact=True)


@pytest.mark.parametrize("make_input", [sliced_channels_last, sliced_nchw], ids=["channels-last", "nchw"])
def test_dropout_on_views(make_input, device):
    x = make_input(device).requires_grad_()
    out = at.dropout(x, 0.5)
    ref = F.dropout(x, 0.5)
    assert out.stride() == ref.stride(), f"output strides {out.stride()} != PyTorch's {ref.stride()}"
    kept = out != 0
    assert torch.equal(out, torch.where(kept, x * 2.0, 0.0)), "kept values are x / (1 - p), the others 0"
    grad = torch.randn_like(ref)
    (grad_x,) = torch.autograd.grad(out, x, grad)
    (ref_grad_x,) = torch.autograd.grad(ref, x, grad)
    assert grad_x.stride() == ref_grad_x.stride()
    assert torch.equal(grad_x, torch.where(kept, grad * 2.0, 0.0)), "the gradient uses the forward's mask"
