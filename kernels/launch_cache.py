"""A launch repeated at a shape already launched, without Triton's per-call host work.

Before its compiled launcher runs, a Triton launch spends tens of microseconds of Python per call: our autotuner
builds its key, Triton's JITFunction.run binds some 40 arguments to the signature, works out how each one
specializes the kernel, hashes a cache key and looks it up, then evaluates the grid. All of it is a pure function of
what `key` below collects: the kernel, the device, each tensor's dtype and 16-byte alignment (what Triton
specializes a pointer on), every other argument's value, the constexprs passed, and the grid function with the sizes
it closes over. So the first launch at a key goes the whole way and leaves here the compiled kernel it ran, the grid
it ran on and its constexprs (the tuned config's included); a later launch at the key calls the compiled launcher
directly, with the arguments JITFunction.run would have passed (bench/results/host-overhead.md). The compiled path
only: the interpreter's launches, and launches while a Triton launch hook is set (a profiler), always go the whole
way (a hook reads each launch's metadata, which this does not build).

Triton's own settings that change what it compiles (TRITON_DEBUG, instrumentation) are read when a key is first
launched: set them before the first launch, or call forget() after changing them."""

import types
from typing import NamedTuple

import torch
from triton import knobs
from triton.runtime.driver import driver

from . import _common  # a module object: _common imports this file at its top

# Entries are a few hundred bytes; a process sees a few dozen shapes. The bound only stops a run whose shapes never
# repeat from growing without end.
LIMIT = 4096


class Launch(NamedTuple):
    kernel: object  # triton's CompiledKernel
    grid: tuple[int, int, int]
    constexprs: tuple  # the values of the parameters after the positional arguments, in signature order


_launches: dict[tuple, Launch] = {}


def forget() -> None:
    """Drop every remembered launch (a tuner's result or a compiled kernel may have changed)."""
    _launches.clear()


def _grid_key(grid):
    """The grid as a key: a tuple itself, a function by its code and the values it closes over (sizes: ints and
    bools). None where it closes over anything else, which would make the launch uncacheable."""
    if not callable(grid):
        return grid
    if not isinstance(grid, types.FunctionType):
        return None
    try:
        values = tuple(cell.cell_contents for cell in grid.__closure__ or ())
    except ValueError:  # a cell not yet assigned
        return None
    if not all(type(value) in _SCALARS for value in values):
        return None
    return (grid.__code__, values)


def key(kernel, device: torch.device, grid, args: tuple, kwargs: dict) -> tuple | None:
    """The launch's key (None where its grid closes over anything but numbers). Built in one pass for speed: an
    argument that is neither a plain tensor (or Parameter) nor a number (a tensor subclass, a tensor passed by
    keyword) goes in as (its type, itself), which remember() refuses to keep, so such a launch never hits."""
    grid_key = _grid_key(grid)
    if grid_key is None:
        return None
    # type() rather than isinstance, which costs a microsecond per argument on torch.Tensor. True, 1 and 1.0 are
    # equal keys in Python and compile differently in Triton, so numbers other than ints carry their type.
    plain = _common.PLAIN_TENSORS
    signature = tuple(
        [(arg.dtype, arg.data_ptr() & 15) if (kind := type(arg)) in plain else arg if kind is int else (kind, arg)
         for arg in args]
    )  # fmt: skip
    constexprs = tuple([(name, type(value), value) for name, value in kwargs.items()])
    return (kernel, device, grid_key, signature, constexprs)


def _keyable(launch_key: tuple) -> bool:
    """Whether every argument in the key is a tensor's (dtype, alignment) or a number."""
    _, _, _, signature, constexprs = launch_key
    return all(type(entry) is int or (type(entry) is tuple and entry[0] in _SCALARS) or
               (type(entry) is tuple and isinstance(entry[0], torch.dtype)) for entry in signature) and all(
        kind in _SCALARS for _, kind, _ in constexprs)  # fmt: skip


_SCALARS = (int, bool, float, type(None))


def remember(launch_key: tuple, target, compiled, grid: tuple, args: tuple, kwargs: dict) -> None:
    """Keep what the launch at launch_key ran: compiled (what the JIT's run returned), on grid, with the tuned
    config of target (an autotuner) if any. Nothing is kept where any of it is missing."""
    if not all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata")) or not _keyable(launch_key):
        return
    config = getattr(target, "best_config", None)
    meta = config.all_kwargs() if config is not None and hasattr(target, "configs") else {}
    names = getattr(target, "arg_names", None)
    if names is None:
        return
    given = {**kwargs, **meta}
    try:
        constexprs = tuple(given[name] for name in names[len(args) :])
    except KeyError:  # a parameter left to its default: JITFunction.run fills it, this does not
        return
    if len(_launches) >= LIMIT:
        _launches.clear()
    _launches[launch_key] = Launch(compiled, (*grid, 1, 1)[:3], constexprs)


def run(launch_key: tuple | None, args: tuple) -> bool:
    """Launch as remembered at launch_key, on the current device's current stream (the caller holds the device
    guard); False where nothing is remembered or a launch hook wants to see the launch."""
    launch = _launches.get(launch_key) if launch_key is not None else None
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    if launch is None or _hooked(enter) or _hooked(leave):
        return False
    compiled = launch.kernel
    active = driver.active
    stream = active.get_current_stream(active.get_current_device())
    # launch_metadata is what a hook reads, and no hook is set (_hooked), so it is never read: None. (JITFunction.run
    # builds it anyway where Triton keeps its hooks in HookChains, as from 3.5 on.)
    compiled.run(
        *launch.grid, stream, compiled.function, compiled.packed_metadata, None, enter, leave,
        *args, *launch.constexprs,
    )  # fmt: skip
    return True


def _hooked(hook) -> bool:
    """Whether a Triton launch hook is set: a function (older Triton), or a HookChain holding one (Triton 3.5+)."""
    return hook is not None and bool(getattr(hook, "calls", True))
