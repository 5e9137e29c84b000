"""What the swap asks of a single module: its hooks, state beyond a conv's own, and a conv rebuilt as
another conv class around the same parameters."""

from torch import nn

# The per-module hooks a call runs. A fused pair runs one module where there were two, and a traced
# graph calls no hooks of the modules it traces through, so hooks there would see other tensors, or not run.
_HOOK_REGISTRIES = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def has_hooks(module: nn.Module) -> bool:
    return any(getattr(module, registry) for registry in _HOOK_REGISTRIES)


def has_extra_state(conv: nn.Conv2d) -> bool:
    """Whether conv holds parameters or buffers besides weight and bias, which conv_like would not carry."""
    parameters = {name for name, _ in conv.named_parameters(recurse=False)}
    return not parameters <= {"weight", "bias"} or next(conv.buffers(recurse=False), None) is not None


def conv_like(conv: nn.Conv2d, cls: type[nn.Conv2d]) -> nn.Conv2d:
    """A cls module with conv's arguments, mode and very Parameter objects. Built on the meta device,
    so nothing is allocated or initialised before the parameters are handed over; cls's constructor
    raises for arguments it does not compute."""
    rebuilt = cls(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
        device="meta",
    )
    rebuilt.weight, rebuilt.bias = conv.weight, conv.bias
    return rebuilt.train(conv.training)
