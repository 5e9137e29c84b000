"""What every op shares: which implementation runs for a device, the two ways its kernels are called (as a
torch.library op for whatever traces, straight otherwise), autocast for ops autocast does not know, and recording an
op as one node under torch.fx tracing."""

import functools

import torch
from torch import Tensor, fx
from torch.library import register_autograd, triton_op

from alexnet_triton.kernels import _common


def backend(device: torch.device | str | Tensor) -> str:
    """Which implementation runs for tensors on ``device``: "triton" (compiled kernels, CUDA),
    "triton-interpreter" (the same kernels in Triton's CPU interpreter; TRITON_INTERPRET=1 was set
    before import) or "torch" (reference.py)."""
    if isinstance(device, Tensor):
        device = device.device
    device = torch.device(device)
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu" and _common.INTERPRET:
        return "triton-interpreter"
    return "torch"


# ---------------------------------------------------------------------------------------------
# An op's kernels, traced or called straight
# ---------------------------------------------------------------------------------------------


def fused_op(name: str, forward, setup_context, grad, backward=None):
    """The op `name` over the kernels of forward (a function with type annotations, as torch.library infers the
    schema from them): registered as torch.library's triton_op "alexnet_triton::<name>" with autograd, the form
    torch.compile, export and make_fx understand, and also as a plain autograd.Function. Returns call(*args), which
    takes the first while a tracer watches (_common.traced) and the second otherwise: an eager call then skips the
    dispatcher's custom-op machinery (redispatch, its autograd wrapper, the disabled-dynamo frame), most of the
    host's time per call (bench/results/host-overhead.md). Both run the same kernels with the same arguments.

    setup_context(ctx, inputs, output) saves what the gradient needs; grad(ctx, *grads, backward=...) computes the
    inputs' gradients with backward(...): the "<name>_backward" op registered from the function backward (traced)
    or that function (straight), or (backward None) the op itself, so twice differentiable (dropout's gradient is
    dropout with the same seed). User dispatch modes that only watch (a checkpointing policy, say) see an eager
    call's ATen ops, not the op."""
    registered = triton_op(f"alexnet_triton::{name}", mutates_args=())(forward)
    op = getattr(torch.ops.alexnet_triton, name)
    traced_backward = op
    if backward is not None:
        triton_op(f"alexnet_triton::{name}_backward", mutates_args=())(backward)
        traced_backward = getattr(torch.ops.alexnet_triton, f"{name}_backward")
    register_autograd(registered, functools.partial(grad, backward=traced_backward), setup_context=setup_context)

    def straight_backward(*args):  # a tracer may see the backward alone (compiled autograd): the op then
        return traced_backward(*args) if _common.traced(args) else backward(*args)

    def straight_grad(ctx, *grads):  # a function, not a partial: compiled autograd takes only functions
        if grads[0] is None:  # grads are not materialized (below): nothing flows back into the op's result
            return (None,) * len(ctx.needs_input_grad)
        return grad(ctx, *grads, backward=straight_backward if backward is not None else call)

    if backward is not None:  # a kernel's backward has no gradient of its own; dropout's is dropout, which has one
        straight_grad = torch.autograd.function.once_differentiable(straight_grad)

    def straight_forward(ctx, *args):
        output = forward(*args)
        setup_context(ctx, args, output)
        # A pool's window positions never get a gradient: left None rather than filled with zeros (a launch per call).
        ctx.set_materialize_grads(False)
        return output

    # forward(ctx, ...) rather than a separate setup_context: apply then skips binding the arguments to forward's
    # signature (inspect.signature, a quarter of an eager call's host time).
    straight = type(
        name,  # its grad_fn: <name>Backward
        (torch.autograd.Function,),
        {"forward": staticmethod(straight_forward), "backward": staticmethod(straight_grad)},
    )

    def call(*args):
        return op(*args) if _common.traced(args) else straight.apply(*args)

    return call


def autocast_inputs(device: torch.device, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Cast floating inputs to the autocast dtype, as autocast does for F.conv2d.

    A custom op is not on autocast's lists, so without this a bf16 activation would meet an fp32
    weight inside an autocast region."""
    if device.type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device.type):
        return tensors
    dtype = torch.get_autocast_dtype(device.type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def traced_as_one_call(op):
    """op, which under torch.fx symbolic tracing records itself as one call_function node instead of
    running, as torch.fx.wrap makes a function do. Unlike torch.fx.wrap, whatever name calls it
    (at.conv2d_relu, functional.conv2d_relu, an imported alias): its checks and kernels need real
    tensors, and a Proxy reaching them would stop the trace."""

    @functools.wraps(op)
    def call(*args, **kwargs):
        proxies = _proxies((args, kwargs))
        if proxies:
            return proxies[0].tracer.create_proxy("call_function", call, args, kwargs)
        return op(*args, **kwargs)

    return call


def _proxies(arguments) -> list[fx.Proxy]:
    """The torch.fx Proxies in arguments, looking inside tuples, lists and dicts."""
    found = []
    fx.node.map_aggregate(arguments, lambda value: found.append(value) if isinstance(value, fx.Proxy) else None)
    return found
