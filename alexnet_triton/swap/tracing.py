"""ReLU calls in forward (``F.relu(self.conv(x))``, ``torch.relu``, ``.relu()``, an nn.ReLU used as an
attribute) fused with the conv before them in a torch.fx trace, and split back in a traced model.

The trace is a new GraphModule holding the model's modules and parameters under the same state_dict keys,
in the same order. It runs forward as traced, so a model whose trace depends on training mode, that does
not trace, that would lose parameters or buffers, or that has hooks on modules the trace runs through
keeps its ReLU calls, with the reason in the report.
"""

from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

from alexnet_triton import nn as fused
from alexnet_triton.swap.modules import conv_like, has_extra_state, has_hooks
from alexnet_triton.swap.report import SwapReport, display_name, type_name
from alexnet_triton.swap.table import FUSED_CLASSES

# ReLU as forward may call it: torch.relu_ is also F.relu_; F.relu(x, inplace=True) is F.relu.
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}

# Why a conv that carries more than a conv's state is not rebuilt as another class (in a traced graph).
EXTRA_STATE = "parameters or buffers besides weight and bias, which a conv rebuilt from its arguments would lack"


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with alexnet_triton's modules kept as calls: their ops check real tensors."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, FUSED_CLASSES) or super().is_leaf_module(module, qualified_name)


def fuse_relu_calls(model: nn.Module, convs: dict[str, nn.Conv2d], report: SwapReport) -> nn.Module:
    """Fuse convs (by qualified name) with the ReLU calls after them in a graph of model: model's own if
    it is a GraphModule (in place), else a trace, returned only when something was fused."""
    rebuildable = {}
    for name, conv in convs.items():
        if has_extra_state(conv):
            report.add_not_swapped(name, conv, f"no ReLU module after it, and {EXTRA_STATE}")
        else:
            rebuildable[name] = conv
    if not rebuildable:
        return model
    graph_module = model
    if not isinstance(model, fx.GraphModule):
        graph_module, reason = _trace(model)
        if graph_module is None:
            for name, conv in rebuildable.items():
                report.add_not_swapped(name, conv, f"no ReLU module after it, and {reason}")
            return model
    if not _fuse_in_graph(graph_module, rebuildable, report):
        return model
    graph_module.graph.lint()
    graph_module.recompile()
    report.traced = graph_module is not model
    return graph_module


def split_relu_calls(graph_module: fx.GraphModule, convs: dict[str, fused.Conv2dReLU], report: SwapReport) -> None:
    """Each Conv2dReLU of the graph becomes an nn.Conv2d with its parameters, and each call of it a
    conv call followed by torch.relu."""
    for name, conv in convs.items():
        if has_extra_state(conv):
            report.add_not_swapped(name, conv, EXTRA_STATE)
            continue
        graph_module.set_submodule(name, conv_like(conv, nn.Conv2d))
        for node in [n for n in graph_module.graph.nodes if n.op == "call_module" and n.target == name]:
            with graph_module.graph.inserting_after(node):
                relu = graph_module.graph.call_function(torch.relu, (node,))
            node.replace_all_uses_with(relu, delete_user_cb=lambda user, relu=relu: user is not relu)
        report.add_swapped(name, "at.nn.Conv2dReLU", "nn.Conv2d + torch.relu in forward")
    graph_module.graph.lint()
    graph_module.recompile()


def _trace(model: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """model as a GraphModule holding the same modules and state_dict keys, or None and why not."""
    try:
        training_graph, eval_graph = (_trace_in_mode(model, training) for training in (True, False))
    except Exception as error:  # tracing runs forward on proxies: any failure means it does not trace
        message = (str(error).strip().splitlines() or [""])[0]
        return None, f"the model does not trace with torch.fx ({type(error).__name__}: {message})"
    if str(training_graph) != str(eval_graph):
        return None, "its traced forward depends on training mode, which a traced graph would fix"
    graph_module = fx.GraphModule(model, eval_graph, type(model).__name__)
    _match_order_and_modes(graph_module, model)
    keys, traced_keys = list(model.state_dict()), list(graph_module.state_dict())
    if traced_keys != keys:
        unused = [key for key in keys if key not in traced_keys]
        why = f"forward does not use {', '.join(unused[:3])}" if unused else "tracing makes tensors it reads buffers"
        return None, f"the traced model's state_dict would differ ({why}{', ...' if len(unused) > 3 else ''})"
    hooked = [
        display_name(name)
        for name, module in model.named_modules()
        if has_hooks(module) and not _holds(graph_module, name, module)
    ]
    if hooked:
        return None, f"the traced model would drop the hooks of {', '.join(hooked)}, which it traces through"
    return graph_module, ""


def _holds(graph_module: fx.GraphModule, name: str, module: nn.Module) -> bool:
    try:
        return graph_module.get_submodule(name) is module
    except AttributeError:
        return False


def _trace_in_mode(model: nn.Module, training: bool) -> fx.Graph:
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        return _Tracer().trace(model)
    finally:
        for module, mode in modes:
            module.training = mode


def _match_order_and_modes(copy: nn.Module, original: nn.Module) -> None:
    """Give a GraphModule's tree the original's registration order and training modes.

    GraphModule holds what forward uses, in the order forward first used it, under new containers;
    state_dict and parameters() follow registration order, and an optimizer's state_dict is matched to
    parameters by position."""
    copy.training = original.training
    for registry in ("_parameters", "_buffers", "_modules"):
        held, order = getattr(copy, registry), getattr(original, registry)
        reordered = {key: held[key] for key in order if key in held} | held
        held.clear()
        held.update(reordered)
    for key, child in copy.named_children():
        counterpart = original._modules.get(key)
        if counterpart is not None and child is not counterpart:
            _match_order_and_modes(child, counterpart)


def _fuse_in_graph(graph_module: fx.GraphModule, convs: dict[str, nn.Conv2d], report: SwapReport) -> bool:
    """Fuse each conv called once in the graph whose only reader is a ReLU; True if any was."""
    calls = Counter(node.target for node in graph_module.graph.nodes if node.op == "call_module")
    conv_nodes = {node.target: node for node in graph_module.graph.nodes if node.op == "call_module"}
    fused_any = False
    for name, conv in convs.items():
        if calls[name] != 1:
            report.add_not_swapped(name, conv, f"no ReLU module after it, and forward calls it {calls[name]} times")
            continue
        node = conv_nodes[name]
        readers = list(node.users)
        if len(readers) != 1 or not _is_relu(readers[0], graph_module):
            goes_to = ", ".join(_describe(reader, graph_module) for reader in readers) or "nothing"
            report.add_not_swapped(name, conv, f"not followed by ReLU: in forward its output goes to {goes_to}")
            continue
        (relu,) = readers
        relu.replace_all_uses_with(node)
        graph_module.graph.erase_node(relu)
        graph_module.set_submodule(name, conv_like(conv, fused.Conv2dReLU))
        report.add_swapped(name, f"nn.Conv2d + {_describe(relu, graph_module)} in forward", "at.nn.Conv2dReLU")
        fused_any = True
    return fused_any


def _is_relu(node: fx.Node, graph_module: fx.GraphModule) -> bool:
    """Whether node applies ReLU (to its one input): a function, a method or a hook-free nn.ReLU call."""
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in _RELU_METHODS
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        return type(module) is nn.ReLU and not has_hooks(module)
    return False


def _describe(node: fx.Node, graph_module: fx.GraphModule) -> str:
    """A graph node as the report names it: a module call, a function, a method, or the output."""
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        hooks = ", with hooks" if has_hooks(module) else ""
        return f"{node.target} ({type_name(type(module))}{hooks})"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return "the model's output" if node.op == "output" else node.op
