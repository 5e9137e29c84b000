"""Floor 3: put the fused ops into a model someone already has, and take them out again.

    model = at.swap_fused_ops(torchvision.models.alexnet())  # returns the model to use
    print(model.fused_ops_report)                            # what was swapped, what was left and why
    model = at.unswap_fused_ops(model)                       # plain torch.nn modules again

A swap changes the class of a module object to its alexnet_triton counterpart, a subclass that adds no
state (as torch.nn.utils.parametrize and lazy modules change theirs): the module keeps its parameters
(the very same nn.Parameter objects), buffers, hooks, training mode, device and dtype, and references
to it stay valid. So state_dict keys do not change, weights load before or after the swap, and an
optimizer built before the swap keeps updating the model.

Only what the fused op computes exactly is swapped: exact classes (a subclass may override forward),
and arguments the at.nn constructors accept. Everything else is left as it was, with the reason, in the
report: ``model.fused_ops_report`` (a :class:`SwapReport`), also logged at INFO on the
``alexnet_triton.swap`` logger and printed with ``verbose=True``.

The package, one job per file: table.py (which torch class becomes which fused class, under which
option), sequential.py (neighbours in a Sequential fused as pairs), tracing.py (ReLU calls in forward,
through torch.fx), report.py (the report), modules.py (what the swap asks of one module).
"""

import logging

from torch import fx, nn

from alexnet_triton.swap import sequential, table, tracing
from alexnet_triton.swap.report import NotSwapped, Swapped, SwapReport, type_name
from alexnet_triton.swap.sequential import PAIR_RULES, Layout

__all__ = ["NotSwapped", "SwapReport", "Swapped", "swap_fused_ops", "unswap_fused_ops"]

logger = logging.getLogger(__name__)


def swap_fused_ops(
    model: nn.Module,
    *,
    conv_relu: bool = True,
    lrn: bool = True,
    max_pool: bool = True,
    dropout: bool = True,
    verbose: bool = False,
) -> nn.Module:
    """Swap alexnet_triton's fused ops into ``model`` and return the model to use.

    - ``nn.Conv2d`` run right before an ``nn.ReLU`` (consecutive children of an ``nn.Sequential``, at
      any depth) becomes one ``at.nn.Conv2dReLU``, and the ReLU's place an ``nn.Identity``, as
      ``torch.ao.quantization.fuse_modules`` leaves it, so indices and state_dict keys stay.
    - ``nn.LocalResponseNorm`` run right before an ``nn.MaxPool2d`` (in a Sequential, likewise) becomes
      one ``at.nn.LRNMaxPool2d``, which takes the pool's arguments, and the pool's place an
      ``nn.Identity``; ``lrn=False`` or ``max_pool=False`` leaves the pair unfused.
    - Other ``nn.LocalResponseNorm``, ``nn.MaxPool2d`` and ``nn.Dropout`` modules become their at.nn
      counterparts.
    - A conv with no ReLU module after it, whose output ``forward`` passes to ``F.relu``,
      ``torch.relu`` or ``.relu()`` (in place or not), is fused in a ``torch.fx`` trace of the model:
      the model returned is then a new ``torch.fx.GraphModule`` that shares the model's modules and
      parameters and has the same state_dict keys, in the same order; its containers are plain
      modules, and methods other than forward are not carried. It runs forward as traced, so the swap
      refuses models whose trace depends on training mode, or that has hooks on modules it traces
      through. Models that do not trace keep those ReLU calls, and the report says why.

    Changes are made in place: the model returned is ``model`` itself unless it had to be traced.
    Module-pair fusion assumes a Sequential's children run only through the Sequential, as
    fuse_modules does. A second swap changes nothing. The report of what was swapped and what was left
    (:class:`SwapReport`) is stored as ``fused_ops_report`` on the model returned, logged at INFO, and
    printed when ``verbose``. The options leave the respective kinds of module as they are.
    """
    _check_module(model)
    wanted = {"conv_relu": conv_relu, "lrn": lrn, "max_pool": max_pool, "dropout": dropout}  # by table.OPTIONS
    report = SwapReport("swap_fused_ops")
    layout = Layout(model)
    to_trace = {}  # fusable modules with nothing after them in a Sequential: their ReLU may be a call in forward
    for name, module in model.named_modules():
        ops = table.ops_replacing(module)
        if not ops:
            continue
        if isinstance(module, table.FUSED_CLASSES):
            report.add_not_swapped(name, module, "already an alexnet_triton module")
        elif type(module) is not ops[0].torch_class:
            report.add_not_swapped(name, module, _subclass_reason(ops[0].torch_class))
        elif reason := _swap_by_first_row_that_applies(name, module, ops, wanted, layout, report, to_trace):
            report.add_not_swapped(name, module, reason)
    if to_trace:
        model = tracing.fuse_relu_calls(model, to_trace, report)
    return _finish(model, report, verbose)


def unswap_fused_ops(model: nn.Module, *, verbose: bool = False) -> nn.Module:
    """Turn alexnet_triton's modules in ``model`` back into plain torch.nn ones, in place, and return it.

    ``at.nn.Conv2dReLU`` followed by an ``nn.Identity`` in a Sequential becomes ``nn.Conv2d`` and
    ``nn.ReLU`` (with the ``inplace`` flag the ReLU had before a swap); in a ``torch.fx.GraphModule``
    each Conv2dReLU becomes an ``nn.Conv2d`` with the same parameters, followed by a ``torch.relu`` call.
    ``at.nn.LRNMaxPool2d`` followed by an ``nn.Identity`` in a Sequential becomes ``nn.LocalResponseNorm``
    and an ``nn.MaxPool2d`` with the fused module's pool arguments.
    The other modules go back to their torch.nn classes. Parameters stay the same objects and
    state_dict keys do not change. A Conv2dReLU or LRNMaxPool2d with neither (e.g. in
    :class:`at.AlexNet`) is left, as no plain module computes it. A GraphModule returned by
    swap_fused_ops shares its modules with the model it was traced from, so the classes change there
    too. The report is kept as ``fused_ops_report``, as by swap_fused_ops.
    """
    _check_module(model)
    report = SwapReport("unswap_fused_ops")
    layout = Layout(model)
    in_graph = {}  # fused pairs in a GraphModule's graph: split into a module and a call there
    for name, module in model.named_modules():
        op = table.op_of_fused(module)
        if op is None:
            continue
        rule = PAIR_RULES.get(op.fused_class)
        if type(module) is not op.fused_class:
            report.add_not_swapped(name, module, _subclass_reason(op.fused_class))
        elif rule is None:
            report.add_swapped(name, type_name(op.fused_class), type_name(op.torch_class))
            module.__class__ = op.torch_class
        elif reason := layout.sharing_or_hooks(module):
            report.add_not_swapped(name, module, reason)
        elif (after := layout.after(module)) is not None and type(after[1]) is nn.Identity:
            sequential.split(rule, name, module, after, layout, report)
        elif rule.traced and isinstance(model, fx.GraphModule):
            in_graph[name] = module
        else:
            why = f"not followed by an nn.Identity in a Sequential, to turn back into its {rule.second.__name__}"
            report.add_not_swapped(name, module, why)
    if in_graph:
        tracing.split_relu_calls(model, in_graph, report)
    return _finish(model, report, verbose)


def _swap_by_first_row_that_applies(name, module, ops, wanted, layout, report, to_trace) -> str | None:
    """Swap module (an exact torch class) by the first of its table rows that applies: None if one
    did (or it waits in to_trace for a ReLU call), else why the last did not."""
    reason = None
    for op in ops:
        rule = PAIR_RULES.get(op.fused_class)
        if not wanted[op.option]:
            reason = f"{op.option}=False"
        elif rule is not None and rule.second_option is not None and not wanted[rule.second_option]:
            reason = f"{rule.second_option}=False"
        elif rule is None:
            if not (reason := table.refusal(op, module)):
                module.__class__ = op.fused_class
                report.add_swapped(name, type_name(op.torch_class), type_name(op.fused_class))
                return None
        elif not (reason := sequential.refusal(rule, module, after := layout.after(module), layout)):
            if after is None:  # refusal lets this through for traced rules only
                to_trace[name] = module
            else:
                sequential.fuse(rule, name, module, after, report)
            return None
    return reason


def _subclass_reason(cls: type[nn.Module]) -> str:
    return f"a subclass of {type_name(cls)}: its forward may differ"


def _check_module(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _finish(model: nn.Module, report: SwapReport, verbose: bool) -> nn.Module:
    """Order the report as the model's modules, keep it on the model, log and maybe print it."""
    report.sort_as(model)
    model.fused_ops_report = report
    logger.info("%s", report)
    if verbose:
        print(report)
    return model
