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
"""

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from alexnet_triton import nn as fused

logger = logging.getLogger(__name__)

# Each torch.nn class the swap replaces, its fused counterpart, and the swap_fused_ops option that asks for it.
_FUSED_FOR = {
    nn.Conv2d: fused.Conv2dReLU,
    nn.LocalResponseNorm: fused.LocalResponseNorm,
    nn.MaxPool2d: fused.MaxPool2d,
    nn.Dropout: fused.Dropout,
}
_TORCH_FOR = {fused_class: torch_class for torch_class, fused_class in _FUSED_FOR.items()}
_FUSED_CLASSES = tuple(_TORCH_FOR)
_OPTION_FOR = {nn.Conv2d: "conv_relu", nn.LocalResponseNorm: "lrn", nn.MaxPool2d: "max_pool", nn.Dropout: "dropout"}

# ReLU as forward may call it: torch.relu_ is also F.relu_; F.relu(x, inplace=True) is F.relu.
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}

# Why a conv that carries more than a conv's state is not rebuilt as another class (in a traced graph).
_EXTRA_STATE = "parameters or buffers besides weight and bias, which a conv rebuilt from its arguments would lack"

# The per-module hooks a call runs. A fused pair runs one module where there were two, so hooks on
# either would see other tensors, or not run.
_HOOK_REGISTRIES = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


@dataclass(frozen=True)
class Swapped:
    """A module (or a conv and the ReLU after it) that now computes through a fused op, or back."""

    name: str  # qualified name in the model, as named_modules() gives it
    before: str
    after: str


@dataclass(frozen=True)
class Left:
    """A module of a swappable kind left as it was, and why."""

    name: str
    type: str
    reason: str


@dataclass
class SwapReport:
    """What :func:`swap_fused_ops` or :func:`unswap_fused_ops` did; ``str()`` gives a readable table."""

    action: str
    swapped: list[Swapped] = field(default_factory=list)
    left: list[Left] = field(default_factory=list)
    traced: bool = False  # the returned model is a torch.fx.GraphModule traced from the one passed in

    def __str__(self) -> str:
        lines = [f"{self.action}: {len(self.swapped)} swapped, {len(self.left)} left as they were"]
        if self.swapped:
            lines.append("swapped:")
            lines += _columns([(_display(entry.name), entry.before, "->", entry.after) for entry in self.swapped])
        if self.left:
            lines.append("left as they were:")
            lines += _columns([(_display(entry.name), entry.type, entry.reason) for entry in self.left])
        if self.traced:
            lines.append("The returned model is a torch.fx.GraphModule: use it in place of the one passed in.")
        return "\n".join(lines)


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
    - ``nn.LocalResponseNorm``, ``nn.MaxPool2d`` and ``nn.Dropout`` become their at.nn counterparts.
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
    wanted = {nn.Conv2d: conv_relu, nn.LocalResponseNorm: lrn, nn.MaxPool2d: max_pool, nn.Dropout: dropout}
    report = SwapReport("swap_fused_ops")
    registrations = _registrations(model)
    following = _next_in_sequence(model)
    unpaired_convs = {}  # fusable convs whose ReLU, if any, is called in forward: fused by tracing
    for name, module in model.named_modules():
        torch_class = next((c for c in _FUSED_FOR if isinstance(module, c)), None)
        if torch_class is None:
            continue
        if isinstance(module, _FUSED_CLASSES):
            _leave(report, name, module, "already an alexnet_triton module")
        elif type(module) is not torch_class:
            _leave(report, name, module, f"a subclass of {_type_name(torch_class)}: its forward may differ")
        elif not wanted[torch_class]:
            _leave(report, name, module, f"{_OPTION_FOR[torch_class]}=False")
        elif torch_class is nn.Conv2d:
            _swap_conv(name, module, following, registrations, unpaired_convs, report)
        elif reason := _refusal(module):
            _leave(report, name, module, reason)
        else:
            module.__class__ = _FUSED_FOR[torch_class]
            report.swapped.append(Swapped(name, _type_name(torch_class), _type_name(type(module))))
    if unpaired_convs:
        model = _fuse_relu_calls_by_tracing(model, unpaired_convs, report)
    return _finish(model, report, verbose)


def unswap_fused_ops(model: nn.Module, *, verbose: bool = False) -> nn.Module:
    """Turn alexnet_triton's modules in ``model`` back into plain torch.nn ones, in place, and return it.

    ``at.nn.Conv2dReLU`` followed by an ``nn.Identity`` in a Sequential becomes ``nn.Conv2d`` and
    ``nn.ReLU`` (with the ``inplace`` flag the ReLU had before a swap); in a ``torch.fx.GraphModule``
    each Conv2dReLU becomes an ``nn.Conv2d`` with the same parameters, followed by a ``torch.relu`` call.
    The other modules go back to their torch.nn classes. Parameters stay the same objects and
    state_dict keys do not change. A Conv2dReLU with neither (e.g. in :class:`at.AlexNet`) is left, as
    no plain module computes it. A GraphModule returned by swap_fused_ops shares its modules with the
    model it was traced from, so the classes change there too. The report is kept as
    ``fused_ops_report``, as by swap_fused_ops.
    """
    _check_module(model)
    report = SwapReport("unswap_fused_ops")
    registrations = _registrations(model)
    following = _next_in_sequence(model)
    graph_convs = {}  # Conv2dReLU modules of a GraphModule: split into conv + relu in its graph
    for name, module in model.named_modules():
        if not isinstance(module, _FUSED_CLASSES):
            continue
        if type(module) not in _TORCH_FOR:
            base = next(c for c in _FUSED_CLASSES if isinstance(module, c))
            _leave(report, name, module, f"a subclass of {_type_name(base)}: its forward may differ")
        elif type(module) is not fused.Conv2dReLU:
            torch_class = _TORCH_FOR[type(module)]
            report.swapped.append(Swapped(name, _type_name(type(module)), _type_name(torch_class)))
            module.__class__ = torch_class
        elif reason := _sharing_or_hooks(module, registrations):
            _leave(report, name, module, reason)
        elif (after := following.get(id(module))) is not None and type(after[1]) is nn.Identity:
            _unswap_conv_pair(name, module, after, registrations, report)
        elif isinstance(model, fx.GraphModule):
            graph_convs[name] = module
        else:
            _leave(report, name, module, "not followed by an nn.Identity in a Sequential, to turn back into its ReLU")
    if graph_convs:
        _split_relu_calls(model, graph_convs, report)
    return _finish(model, report, verbose)


# ---------------------------------------------------------------------------------------------
# Module pairs and single modules
# ---------------------------------------------------------------------------------------------


def _swap_conv(name, conv, following, registrations, unpaired_convs, report) -> None:
    """Fuse conv with the nn.ReLU run right after it, or note it for tracing when no module runs after it."""
    after = following.get(id(conv))
    if after is not None and type(after[1]) is not nn.ReLU:
        _leave(report, name, conv, f"not followed by ReLU (next: {_type_name(type(after[1]))})")
    elif reason := _refusal(conv) or _sharing_or_hooks(conv, registrations):
        _leave(report, name, conv, reason)
    elif after is None and _has_extra_state(conv):
        _leave(report, name, conv, f"no ReLU module after it, and {_EXTRA_STATE}")
    elif after is None:
        unpaired_convs[name] = conv
    elif reason := _sharing_or_hooks(after[1], registrations):
        _leave(report, name, conv, f"the ReLU after it {reason}")
    else:
        relu_name, relu = after
        conv.__class__, relu.__class__ = fused.Conv2dReLU, nn.Identity  # the Identity keeps relu.inplace
        report.swapped.append(Swapped(name, f"nn.Conv2d + nn.ReLU ({relu_name})", "at.nn.Conv2dReLU + nn.Identity"))


def _unswap_conv_pair(name, conv, after, registrations, report) -> None:
    identity_name, identity = after
    if reason := _sharing_or_hooks(identity, registrations):
        _leave(report, name, conv, f"the Identity after it {reason}")
        return
    conv.__class__, identity.__class__ = nn.Conv2d, nn.ReLU
    if not hasattr(identity, "inplace"):  # an Identity that was never a ReLU
        identity.inplace = False
    report.swapped.append(Swapped(name, f"at.nn.Conv2dReLU + nn.Identity ({identity_name})", "nn.Conv2d + nn.ReLU"))


def _refusal(module: nn.Module) -> str | None:
    """Why module's fused counterpart would not compute what it does, or None if it would.

    The at.nn constructors raise for the arguments their ops do not compute, so each is asked with
    the module's own arguments: a class change alone would skip that check."""
    try:
        if isinstance(module, nn.Conv2d):
            _conv_like(module, fused.Conv2dReLU)
        elif isinstance(module, nn.MaxPool2d):
            fused.MaxPool2d(
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.return_indices,
                module.ceil_mode,
            )
        elif isinstance(module, nn.Dropout):
            fused.Dropout(module.p, module.inplace)
        elif isinstance(module, nn.LocalResponseNorm):
            fused.LocalResponseNorm(module.size, module.alpha, module.beta, module.k)
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def _sharing_or_hooks(module: nn.Module, registrations: Counter) -> str | None:
    """Why module cannot be fused with its neighbour: a class change would change it in every place it
    is used, and hooks would see other tensors, or not run."""
    if registrations[id(module)] > 1:
        return f"is used at {registrations[id(module)]} places in the model"
    if _has_hooks(module):
        return "has hooks, which would see other tensors once fused"
    return None


def _has_hooks(module: nn.Module) -> bool:
    return any(getattr(module, registry) for registry in _HOOK_REGISTRIES)


def _has_extra_state(conv: nn.Conv2d) -> bool:
    parameters = {name for name, _ in conv.named_parameters(recurse=False)}
    return not parameters <= {"weight", "bias"} or next(conv.buffers(recurse=False), None) is not None


def _conv_like(conv: nn.Conv2d, cls: type[nn.Conv2d]) -> nn.Conv2d:
    """A cls module with conv's arguments, mode and very Parameter objects. Built on the meta device,
    so nothing is allocated or initialised before the parameters are handed over."""
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


# ---------------------------------------------------------------------------------------------
# ReLU calls in forward, through torch.fx
# ---------------------------------------------------------------------------------------------


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with alexnet_triton's modules kept as calls: their ops check real tensors."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, _FUSED_CLASSES) or super().is_leaf_module(module, qualified_name)


def _fuse_relu_calls_by_tracing(model: nn.Module, convs: dict[str, nn.Conv2d], report: SwapReport) -> nn.Module:
    """Fuse convs with the ReLU calls after them in a graph of model: model's own if it is a
    GraphModule (in place), else a trace, returned only when something was fused."""
    graph_module = model
    if not isinstance(model, fx.GraphModule):
        graph_module, reason = _trace(model)
        if graph_module is None:
            for name, conv in convs.items():
                _leave(report, name, conv, f"no ReLU module after it, and {reason}")
            return model
    if not _fuse_relu_calls(graph_module, convs, report):
        return model
    graph_module.graph.lint()
    graph_module.recompile()
    report.traced = graph_module is not model
    return graph_module


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
        _display(name) for name, m in model.named_modules() if _has_hooks(m) and not _holds(graph_module, name, m)
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


def _fuse_relu_calls(graph_module: fx.GraphModule, convs: dict[str, nn.Conv2d], report: SwapReport) -> bool:
    """Fuse each conv called once in the graph whose only reader is a ReLU; True if any was."""
    calls = Counter(node.target for node in graph_module.graph.nodes if node.op == "call_module")
    conv_nodes = {node.target: node for node in graph_module.graph.nodes if node.op == "call_module"}
    fused_any = False
    for name, conv in convs.items():
        if calls[name] != 1:
            _leave(report, name, conv, f"no ReLU module after it, and forward calls it {calls[name]} times")
            continue
        node = conv_nodes[name]
        readers = list(node.users)
        if len(readers) != 1 or not _is_relu(readers[0], graph_module):
            goes_to = ", ".join(_describe(reader, graph_module) for reader in readers) or "nothing"
            _leave(report, name, conv, f"not followed by ReLU: in forward its output goes to {goes_to}")
            continue
        (relu,) = readers
        relu.replace_all_uses_with(node)
        graph_module.graph.erase_node(relu)
        graph_module.set_submodule(name, _conv_like(conv, fused.Conv2dReLU))
        relu_call = _describe(relu, graph_module)
        report.swapped.append(Swapped(name, f"nn.Conv2d + {relu_call} in forward", "at.nn.Conv2dReLU"))
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
        return type(module) is nn.ReLU and not _has_hooks(module)
    return False


def _split_relu_calls(graph_module: fx.GraphModule, convs: dict[str, fused.Conv2dReLU], report: SwapReport) -> None:
    """Each Conv2dReLU of the graph becomes an nn.Conv2d with its parameters, and each call of it a
    conv call followed by torch.relu."""
    for name, conv in convs.items():
        if _has_extra_state(conv):
            _leave(report, name, conv, _EXTRA_STATE)
            continue
        graph_module.set_submodule(name, _conv_like(conv, nn.Conv2d))
        for node in [n for n in graph_module.graph.nodes if n.op == "call_module" and n.target == name]:
            with graph_module.graph.inserting_after(node):
                relu = graph_module.graph.call_function(torch.relu, (node,))
            node.replace_all_uses_with(relu, delete_user_cb=lambda user, relu=relu: user is not relu)
        report.swapped.append(Swapped(name, "at.nn.Conv2dReLU", "nn.Conv2d + torch.relu in forward"))
    graph_module.graph.lint()
    graph_module.recompile()


def _describe(node: fx.Node, graph_module: fx.GraphModule) -> str:
    """A graph node as the report names it: a module call, a function, a method, or the output."""
    if node.op == "call_module":
        module = graph_module.get_submodule(node.target)
        hooks = ", with hooks" if _has_hooks(module) else ""
        return f"{node.target} ({_type_name(type(module))}{hooks})"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return "the model's output" if node.op == "output" else node.op


# ---------------------------------------------------------------------------------------------
# Model walks and the report
# ---------------------------------------------------------------------------------------------


def _check_module(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _registrations(model: nn.Module) -> Counter:
    """How many places in the model hold each module (under two parents, it runs in both)."""
    return Counter(id(child) for module in model.modules() for child in module._modules.values() if child is not None)


def _next_in_sequence(model: nn.Module) -> dict[int, tuple[str, nn.Module] | None]:
    """For each child of a Sequential that runs its children in order (its forward is Sequential's):
    the qualified name and module run right after it, or None for the last."""
    following = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
            children = [(f"{prefix}.{key}" if prefix else key, child) for key, child in module._modules.items()]
            for (_, child), after in zip(children, [*children[1:], None], strict=True):
                following[id(child)] = after
    return following


def _leave(report: SwapReport, name: str, module: nn.Module, reason: str) -> None:
    report.left.append(Left(name, _type_name(type(module)), reason))


def _finish(model: nn.Module, report: SwapReport, verbose: bool) -> nn.Module:
    """Order the report as the model's modules, keep it on the model, log and maybe print it."""
    position = {name: index for index, (name, _) in enumerate(model.named_modules())}
    report.swapped.sort(key=lambda entry: position.get(entry.name, len(position)))
    report.left.sort(key=lambda entry: position.get(entry.name, len(position)))
    model.fused_ops_report = report
    logger.info("%s", report)
    if verbose:
        print(report)
    return model


def _type_name(cls: type) -> str:
    if cls.__module__ == fused.__name__:
        return f"at.nn.{cls.__name__}"
    if getattr(nn, cls.__name__, None) is cls:
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _display(name: str) -> str:
    return name or "(the model itself)"


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as lines of left-aligned columns; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
