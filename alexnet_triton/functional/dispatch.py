"""What every op shares: which implementation runs for a device, autocast for ops autocast does not know, and
recording an op as one node under torch.fx tracing."""

import functools

import torch
from torch import Tensor, fx

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
