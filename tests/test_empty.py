"""Empty tensors treated as PyTorch treats them (issue 12, item 4): empty in, empty out, empty (or zero)
gradients of PyTorch's shapes, and an error exactly where PyTorch's own op raises one."""

import pytest
import torch
import torch.nn.functional as F

import alexnet_triton as at


def check_like_pytorch(ours, theirs, *inputs):
    """ours(*inputs) equals theirs(*inputs) in shape, dtype and values, and so does every input's gradient."""
    inputs = [t.requires_grad_() for t in inputs]
    out, ref = ours(*inputs), theirs(*inputs)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.equal(out, ref)
    grad = torch.randn_like(ref)
    grads = torch.autograd.grad(out, inputs, grad)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        assert g.shape == r.shape and torch.equal(g, r), f"gradient {i}: {g} != PyTorch's {r}"
    return out


def raises_like_pytorch(ours, theirs, match: str):
    """PyTorch's op raises, and ours raises a ValueError that says why."""
    with pytest.raises((RuntimeError, ValueError)):
        theirs()
    with pytest.raises(ValueError, match=match):
        ours()


# ---- conv2d_relu -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape, w_shape, padding, groups",
    [
        ((0, 3, 8, 8), (4, 3, 3, 3), 0, 1),  # empty batch
        ((0, 3, 0, 8), (4, 3, 1, 1), 1, 1),  # empty batch and rows, padded up to the kernel
        ((2, 0, 8, 8), (4, 0, 3, 3), 0, 1),  # no input channels: PyTorch's output has no channels either
        ((2, 0, 8, 8), (4, 0, 3, 3), 1, 2),
        ((2, 0, 0, 8), (4, 0, 1, 1), 1, 1),
        ((0, 8, 8), (4, 0, 3, 3), 0, 1),  # unbatched, no channels
    ],
)
def test_conv2d_relu_empty_inputs(x_shape, w_shape, padding, groups, device):
    x, w, b = torch.randn(x_shape, device=device), torch.randn(w_shape, device=device), torch.randn(4, device=device)
    check_like_pytorch(
        lambda x, w, b: at.conv2d_relu(x, w, b, padding=padding, groups=groups),
        lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=padding, groups=groups)),
        x,
        w,
        b,
    )


def test_conv_module_on_an_empty_batch(device):
    conv = at.nn.Conv2dReLU(3, 5, 3, padding=1).to(device)
    out = conv(torch.randn(0, 3, 7, 7, device=device))
    assert out.shape == (0, 5, 7, 7)
    out.sum().backward()
    assert torch.equal(conv.weight.grad, torch.zeros_like(conv.weight))
    assert torch.equal(conv.bias.grad, torch.zeros_like(conv.bias))


@pytest.mark.parametrize(
    "x_shape, w_shape, padding, match",
    [
        ((2, 3, 8, 8), (0, 3, 3, 3), 0, "weight must have output channels"),
        ((2, 0, 8, 8), (0, 0, 3, 3), 0, "weight must have output channels"),
        ((2, 3, 8, 8), (4, 3, 0, 3), 0, "kernel of at least 1x1"),
        ((2, 3, 0, 8), (4, 3, 1, 1), 1, "empty spatial dimension"),  # padding would make room, PyTorch still refuses
        ((3, 0, 8), (4, 3, 1, 1), 1, "empty spatial dimension"),
        ((2, 3, 0, 8), (4, 3, 3, 3), 0, "input height 0 .* smaller than the kernel"),
        ((0, 3, 0, 8), (4, 3, 1, 1), 0, "input height 0 .* smaller than the kernel"),
        ((2, 0, 1, 1), (4, 0, 3, 3), 0, "input height 1 .* smaller than the kernel"),
    ],
)
def test_conv2d_relu_refuses_what_pytorch_refuses(x_shape, w_shape, padding, match):
    x, w = torch.randn(x_shape), torch.randn(w_shape)
    raises_like_pytorch(lambda: at.conv2d_relu(x, w, padding=padding), lambda: F.conv2d(x, w, padding=padding), match)


# ---- local_response_norm ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        (0, 5, 24, 24),  # the shapes
        (0, 1, 2),
        (2, 0, 4, 4),  # no channels (refused before issue 12)
        (2, 3, 0, 4),
        (2, 3, 0, 0),
        (2, 0, 3),
        (2, 3, 0),
        (0, 0, 0),
        (2, 3, 4, 0, 5),
        (0, 3, 4, 5, 6),
    ],
)
def test_local_response_norm_empty_inputs(shape, device):
    check_like_pytorch(
        lambda x: at.local_response_norm(x, 5, 5e-4, 0.75, 2.0),
        lambda x: F.local_response_norm(x, 5, 5e-4, 0.75, 2.0),
        torch.randn(shape, device=device),
    )


def test_local_response_norm_refuses_what_pytorch_refuses():
    x = torch.randn(0, 3)
    raises_like_pytorch(lambda: at.local_response_norm(x, 3), lambda: F.local_response_norm(x, 3), "at least 3-D")


# ---- max_pool2d ------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 0), (3, 2, 1), (2, None, 0)])
def test_max_pool2d_empty_batch(kernel, stride, padding, device):
    check_like_pytorch(
        lambda x: at.max_pool2d(x, kernel, stride, padding),
        lambda x: F.max_pool2d(x, kernel, stride, padding),
        torch.randn(0, 3, 8, 8, device=device),
    )


@pytest.mark.parametrize(
    "shape, match",
    [
        ((2, 0, 8, 8), "empty channel or spatial dimension"),  # only the batch of a 4-D input may be empty
        ((2, 3, 0, 8), "empty channel or spatial dimension"),
        ((2, 3, 8, 0), "empty channel or spatial dimension"),
        ((0, 0, 8, 8), "empty channel or spatial dimension"),
        ((0, 8, 8), "empty channel or spatial dimension"),  # unbatched: no dimension may be empty
        ((3, 0, 8), "empty channel or spatial dimension"),
    ],
)
def test_max_pool2d_refuses_what_pytorch_refuses(shape, match):
    x = torch.randn(shape)
    raises_like_pytorch(lambda: at.max_pool2d(x, 3, 2, 1), lambda: F.max_pool2d(x, 3, 2, 1), match)


# ---- dropout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(0,), (0, 3, 4), (2, 0), (0, 3, 5, 5)])
def test_dropout_empty_inputs(shape, device):
    out = check_like_pytorch(
        lambda x: at.dropout(x, 0.5), lambda x: F.dropout(x, 0.5), torch.randn(shape, device=device)
    )
    assert out.numel() == 0


def test_dropout_module_on_an_empty_batch(device):
    x = torch.randn(0, 4096, device=device, requires_grad=True)
    out = at.nn.Dropout(0.5)(x)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape
