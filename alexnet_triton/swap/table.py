"""The one table of what the swap puts in: each torch.nn class, the alexnet_triton module that replaces
it, and the swap_fused_ops option that leaves that kind alone. Every lookup the swap makes derives from it.

Adding a fused op is one row here. An op that also computes the module run right after the one it
replaces (Conv2dReLU: a conv and its ReLU) gets a pair rule in sequential.py too. Where a pair's first
module is also swapped alone (LocalResponseNorm followed by MaxPool2d, at.nn.LRNMaxPool2d, beside
at.nn.LocalResponseNorm), the pair's row goes first: the swap tries a module's rows in table order and
takes the first that applies.
"""

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from alexnet_triton import nn as fused
from alexnet_triton.swap.modules import conv_like


@dataclass(frozen=True)
class FusedOp:
    """One row: a swap changes a torch_class module's class to fused_class, in place."""

    torch_class: type[nn.Module]  # swapped in exact instances only: a subclass may override forward
    fused_class: type[nn.Module]  # a subclass of torch_class adding no state, so a class change swaps it
    option: str  # the swap_fused_ops keyword that, when False, leaves this kind as it is
    # fused_class built from a torch module's own arguments. Its constructor raises ValueError or TypeError
    # for arguments the op does not compute, which a class change alone would skip.
    build: Callable[[nn.Module], nn.Module]


FUSED_OPS = (
    FusedOp(nn.Conv2d, fused.Conv2dReLU, "conv_relu", lambda conv: conv_like(conv, fused.Conv2dReLU)),
    # A pair (sequential.py's rule brings the pool's arguments): before the LRN's own row, so an LRN
    # followed by a max-pool fuses with it, and one followed by anything else is swapped alone.
    FusedOp(
        nn.LocalResponseNorm,
        fused.LRNMaxPool2d,
        "lrn",
        lambda lrn_and_pool: fused.LRNMaxPool2d(
            lrn_and_pool.size,
            lrn_and_pool.kernel_size,
            lrn_and_pool.stride,
            lrn_and_pool.padding,
            alpha=lrn_and_pool.alpha,
            beta=lrn_and_pool.beta,
            k=lrn_and_pool.k,
        ),
    ),
    FusedOp(
        nn.LocalResponseNorm,
        fused.LocalResponseNorm,
        "lrn",
        lambda lrn: fused.LocalResponseNorm(lrn.size, lrn.alpha, lrn.beta, lrn.k),
    ),
    FusedOp(
        nn.MaxPool2d,
        fused.MaxPool2d,
        "max_pool",
        lambda pool: fused.MaxPool2d(
            pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode
        ),
    ),
    FusedOp(nn.Dropout, fused.Dropout, "dropout", lambda dropout: fused.Dropout(dropout.p, dropout.inplace)),
)

FUSED_CLASSES = tuple(op.fused_class for op in FUSED_OPS)
OPTIONS = tuple(dict.fromkeys(op.option for op in FUSED_OPS))  # in table order, each once
OP_FOR_FUSED_CLASS = {op.fused_class: op for op in FUSED_OPS}


def ops_replacing(module: nn.Module) -> tuple[FusedOp, ...]:
    """The rows whose torch class module is an instance of (a subclass or a fused module too), in table order."""
    return tuple(op for op in FUSED_OPS if isinstance(module, op.torch_class))


def op_of_fused(module: nn.Module) -> FusedOp | None:
    """The row whose fused class module is an instance of (a subclass of it too), or None."""
    return next((op for op in FUSED_OPS if isinstance(module, op.fused_class)), None)


def refusal(op: FusedOp, module: nn.Module) -> str | None:
    """Why op's fused module would not compute what module does, or None if it would: its
    constructor is asked with module's own arguments."""
    try:
        op.build(module)
    except (ValueError, TypeError) as error:
        return str(error)
    return None
