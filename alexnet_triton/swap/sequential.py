"""Neighbours in an nn.Sequential that one fused module computes: the pair rules, why a pair is refused,
and fusing and splitting a pair in place.

A pair is fused as torch.ao.quantization.fuse_modules fuses one: the first module becomes the fused
module and the second an nn.Identity, so indices and state_dict keys stay. This assumes a Sequential's
children run only through it, as fuse_modules does.
"""

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace

from torch import nn

from alexnet_triton import nn as fused
from alexnet_triton.swap import table
from alexnet_triton.swap.modules import has_hooks
from alexnet_triton.swap.report import SwapReport, type_name


@dataclass(frozen=True)
class PairRule:
    """A module of op's torch class, and a ``second`` run right after it, computed by op's fused class.

    The default fuse and split only change classes. A pair whose fused module needs the second's
    arguments (LRN + max-pool: the pool's window) overrides refusal, to ask the fused constructor with
    both modules' arguments, and fuse and split, to move them.
    """

    op: table.FusedOp  # the first module's row of the table
    second: type[nn.Module]
    # Attributes an nn.Identity that never was a `second` lacks, with the values to give it when it becomes one.
    second_defaults: Mapping[str, object] = field(default_factory=dict)
    # When nothing in a Sequential runs after the first module, its second may be a call in forward,
    # which tracing.py fuses.
    traced: bool = False
    # The swap_fused_ops keyword that, when False, leaves the second's kind alone, and so the pair too.
    second_option: str | None = None

    def refusal(self, first: nn.Module, second: nn.Module | None) -> str | None:
        """Why the fused module would not compute first and second (None: a call in forward), or None."""
        return table.refusal(self.op, first)

    def fuse(self, first: nn.Module, second: nn.Module) -> None:
        first.__class__, second.__class__ = self.op.fused_class, nn.Identity  # the Identity keeps second's state

    def split(self, fused_module: nn.Module, identity: nn.Identity) -> None:
        fused_module.__class__, identity.__class__ = self.op.torch_class, self.second
        for name, value in self.second_defaults.items():
            if not hasattr(identity, name):
                setattr(identity, name, value)


# What an nn.MaxPool2d holds: the arguments LRNMaxPool2d takes over from the pool it fuses.
_POOL_ARGUMENTS = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")


@dataclass(frozen=True)
class LRNMaxPoolRule(PairRule):
    """nn.LocalResponseNorm then nn.MaxPool2d: the LRN module takes the pool's arguments as it becomes an
    LRNMaxPool2d (an instance of both), the pool keeps them as it becomes an Identity, and a split gives
    them back to the pool."""

    def refusal(self, first: nn.Module, second: nn.Module | None) -> str | None:
        if second is None:
            return None  # sequential.refusal says that nothing follows
        pool_row = table.OP_FOR_FUSED_CLASS[fused.MaxPool2d]
        lrn_arguments = {name: getattr(first, name) for name in ("size", "alpha", "beta", "k")}
        both = SimpleNamespace(**lrn_arguments, **{name: getattr(second, name) for name in _POOL_ARGUMENTS})
        return table.refusal(pool_row, second) or table.refusal(self.op, both)

    def fuse(self, first: nn.Module, second: nn.Module) -> None:
        for name in _POOL_ARGUMENTS:
            setattr(first, name, getattr(second, name))
        super().fuse(first, second)

    def split(self, fused_module: nn.Module, identity: nn.Identity) -> None:
        pool_arguments = {name: getattr(fused_module, name) for name in _POOL_ARGUMENTS}
        super().split(fused_module, identity)
        for name, value in pool_arguments.items():
            delattr(fused_module, name)
            setattr(identity, name, value)  # the fused module's, which computed the pool until now


# Each fused class that computes a pair, with its rule.
PAIR_RULES = {
    rule.op.fused_class: rule
    for rule in [
        # A ReLU that was never one (an Identity put there by hand) becomes ReLU(inplace=False).
        PairRule(table.OP_FOR_FUSED_CLASS[fused.Conv2dReLU], nn.ReLU, {"inplace": False}, traced=True),
        LRNMaxPoolRule(table.OP_FOR_FUSED_CLASS[fused.LRNMaxPool2d], nn.MaxPool2d, second_option="max_pool"),
    ]
}


class Layout:
    """Where a model's modules sit: how many places hold each, and what a Sequential runs right after it."""

    def __init__(self, model: nn.Module):
        # A module under two parents runs in both: a class change would change it in every place.
        self.places = Counter(
            id(child) for module in model.modules() for child in module._modules.values() if child is not None
        )
        self.following: dict[int, tuple[str, nn.Module] | None] = {}
        for prefix, module in model.named_modules():
            # Only a Sequential whose forward is Sequential's runs its children one after the other.
            if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
                children = [(f"{prefix}.{key}" if prefix else key, child) for key, child in module._modules.items()]
                for (_, child), after in zip(children, [*children[1:], None], strict=True):
                    self.following[id(child)] = after

    def after(self, module: nn.Module) -> tuple[str, nn.Module] | None:
        """The qualified name and module a Sequential runs right after module; None if none does."""
        return self.following.get(id(module))

    def sharing_or_hooks(self, module: nn.Module) -> str | None:
        """Why module cannot be fused with a neighbour: a class change would change it in every place it
        is used, and hooks would see other tensors, or not run."""
        if self.places[id(module)] > 1:
            return f"is used at {self.places[id(module)]} places in the model"
        if has_hooks(module):
            return "has hooks, which would see other tensors once fused"
        return None


def refusal(rule: PairRule, first: nn.Module, after: tuple[str, nn.Module] | None, layout: Layout) -> str | None:
    """Why first cannot be fused with the module run after it (after: its name and module, or None), or None.
    With after None and a traced rule, None means the pair may yet be fused in a trace."""
    second = after[1] if after is not None else None
    if second is not None and type(second) is not rule.second:
        return f"not followed by {rule.second.__name__} (next: {type_name(type(second))})"
    if reason := rule.refusal(first, second) or layout.sharing_or_hooks(first):
        return reason
    if second is not None and (reason := layout.sharing_or_hooks(second)):
        return f"the {rule.second.__name__} after it {reason}"
    if second is None and not rule.traced:
        return f"not followed by {rule.second.__name__} (nothing runs after it in a Sequential)"
    return None


def fuse(rule: PairRule, name: str, first: nn.Module, after: tuple[str, nn.Module], report: SwapReport) -> None:
    second_name, second = after
    rule.fuse(first, second)
    before = f"{type_name(rule.op.torch_class)} + {type_name(rule.second)} ({second_name})"
    report.add_swapped(name, before, f"{type_name(rule.op.fused_class)} + nn.Identity")


def split(
    rule: PairRule, name: str, fused_module: nn.Module, after: tuple[str, nn.Module], layout: Layout, report: SwapReport
) -> None:
    """Turn a fused module and the nn.Identity after it back into the pair, unless the Identity is shared or hooked."""
    identity_name, identity = after
    if reason := layout.sharing_or_hooks(identity):
        report.add_not_swapped(name, fused_module, f"the Identity after it {reason}")
        return
    rule.split(fused_module, identity)
    before = f"{type_name(rule.op.fused_class)} + nn.Identity ({identity_name})"
    report.add_swapped(name, before, f"{type_name(rule.op.torch_class)} + {type_name(rule.second)}")
