"""functional/dispatch.py's two ways to an op's kernels: torch.library's op for whatever traces (_common.traced),
an autograd.Function straight on the kernels for everything else. Both must give the same answers and gradients;
the traced way runs here with the interpreter's kernels by forcing traced() to say yes."""

import pytest
import torch
from alexnet_triton.kernels import _common
from torch.utils._python_dispatch import TorchDispatchMode

import alexnet_triton as at


def ops_on(device):
    """Each public op at a small shape, forward and backward, with the tensors that take gradients."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device).requires_grad_()

    x, w, b = randn(2, 4, 9, 9), randn(6, 4, 3, 3), randn(6)
    return {
        "conv2d_relu": (lambda: at.conv2d_relu(x, w, b, 1, 1), (x, w, b)),
        "local_response_norm": (lambda: at.local_response_norm(x, 3, 1e-2, 0.75, 2.0), (x,)),
        "max_pool2d": (lambda: at.max_pool2d(x, 3, 2), (x,)),
        "lrn_max_pool2d": (lambda: at.lrn_max_pool2d(x, 3, 3, 2, alpha=1e-2, k=2.0), (x,)),
        "dropout": (lambda: at.dropout(x, 0.5, seed=1234), (x,)),
    }


def run(call, leaves):
    out = call()
    grads = torch.autograd.grad(out, leaves, torch.ones_like(out) + torch.arange(out.numel()).reshape(out.shape) % 3)
    node = out.grad_fn
    while type(node).__name__ == "ViewBackward0":  # local_response_norm reshapes its result back
        node = node.next_functions[0][0]
    return out, grads, type(node).__name__


@pytest.mark.parametrize("name", ["conv2d_relu", "local_response_norm", "max_pool2d", "lrn_max_pool2d", "dropout"])
def test_the_traced_and_the_straight_way_give_the_same_outputs_and_gradients(name, device, monkeypatch):
    if at.backend(device) == "torch":
        pytest.skip("the reference path calls no kernels (TRITON_INTERPRET unset on a CPU)")
    call, leaves = ops_on(device)[name]
    straight, straight_grads, straight_node = run(call, leaves)
    assert straight_node == f"{name}Backward", "an eager call takes the autograd.Function"
    monkeypatch.setattr(_common, "traced", lambda args: True)  # as under make_fx: through torch.ops
    traced, traced_grads, traced_node = run(call, leaves)
    assert traced_node != straight_node, traced_node
    assert torch.equal(traced, straight)
    for got, expected in zip(traced_grads, straight_grads, strict=True):
        assert torch.equal(got, expected)


class CountingMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_traced_says_yes_to_tracers_and_no_to_plain_calls(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    plain, parameter = torch.ones(2), torch.nn.Parameter(torch.ones(2))
    assert not _common.traced((plain, parameter, 3, None))
    with CountingMode():  # a mode that only watches (bench.host counts launches so) changes nothing
        assert not _common.traced((plain,))
    with FakeTensorMode() as fake:
        assert _common.traced((plain,))
        fake_tensor = fake.from_tensor(plain)
    assert _common.traced((fake_tensor,)), "a tensor subclass"
    assert torch.func.vmap(lambda t: torch.tensor(_common.traced((t,))) + t)(torch.zeros(2)).tolist() == [1.0, 1.0]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _common.traced((plain,))


def test_dropout_is_twice_differentiable_either_way(device, monkeypatch):
    # Its gradient is dropout with the same seed, itself differentiable: d(grad)/d(upstream) is the mask, scaled.
    if at.backend(device) == "torch":
        pytest.skip("the reference path calls no kernels (TRITON_INTERPRET unset on a CPU)")
    x = (torch.rand(6, 50, device=device) + 0.5).requires_grad_()
    for way in ("straight", "traced"):
        if way == "traced":
            monkeypatch.setattr(_common, "traced", lambda args: True)
        out = at.dropout(x, 0.4, seed=11)
        upstream = torch.ones_like(out, requires_grad=True)
        (grad_x,) = torch.autograd.grad(out, x, upstream, create_graph=True)
        (second,) = torch.autograd.grad(grad_x.sum(), upstream)
        assert torch.equal(second, (out != 0).to(x.dtype) / 0.6), way


def test_jit_trace_records_the_op_and_the_trace_runs_it(device):
    if at.backend(device) == "torch":
        pytest.skip("the reference path calls no kernels (TRITON_INTERPRET unset on a CPU)")
    x = torch.randn(2, 3, 9, 9, device=device)
    traced = torch.jit.trace(lambda t: at.max_pool2d(t, 3, 2), x)
    assert "alexnet_triton::max_pool2d" in str(traced.graph), traced.graph
    other = torch.randn(2, 3, 9, 9, device=device)
    assert torch.equal(traced(other), at.max_pool2d(other, 3, 2))
