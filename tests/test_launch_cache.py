"""kernels/launch_cache.py: what a remembered launch is keyed on, and when nothing is remembered. That a repeated
launch is given exactly the first one's arguments, and skips JITFunction.run, is measured on the compiled path in
tests/test_bench_host.py (remembered_launches)."""

import types

import pytest
import torch
from alexnet_triton.kernels import launch_cache


class Compiled:
    """What JITFunction.run returns, as far as launch_cache reads it; run records its arguments."""

    function = "function"
    packed_metadata = "metadata"

    def __init__(self):
        self.calls = []

    def run(self, *arguments):
        self.calls.append(arguments)


class Tuner:
    """An autotuner as launch_cache reads it: its parameters' names and the config it chose."""

    configs = ()

    def __init__(self, names, meta):
        self.arg_names = names
        self.best_config = types.SimpleNamespace(all_kwargs=lambda: meta)


@pytest.fixture(autouse=True)
def empty_cache_and_a_driver():
    """No remembered launches before or after; Triton's active driver answering for a GPU (this machine has none)."""
    from triton.runtime.driver import driver

    from bench.host import StubDriver

    saved = driver._active
    driver.set_active(StubDriver())
    launch_cache.forget()
    yield
    launch_cache.forget()
    driver._active = saved


def grid_over(total):
    def grid(meta):
        return (-(-total // meta["BLOCK"]),)

    return grid


def test_a_key_sees_dtype_alignment_values_constexprs_device_and_grid_sizes():
    x = torch.zeros(64)
    base = launch_cache.key("k", x.device, grid_over(64), (x, 64, 0.5), {"FLAG": True})
    assert base == launch_cache.key("k", x.device, grid_over(64), (torch.ones(64), 64, 0.5), {"FLAG": True})
    others = [
        launch_cache.key("k", x.device, grid_over(64), (x.double(), 64, 0.5), {"FLAG": True}),
        launch_cache.key("k", x.device, grid_over(64), (x[1:], 64, 0.5), {"FLAG": True}),  # 4 bytes off alignment
        launch_cache.key("k", x.device, grid_over(64), (x, 63, 0.5), {"FLAG": True}),
        launch_cache.key("k", x.device, grid_over(64), (x, 64, 0.25), {"FLAG": True}),
        launch_cache.key("k", x.device, grid_over(64), (x, 64, 0.5), {"FLAG": False}),
        launch_cache.key("k", torch.device("meta"), grid_over(64), (x, 64, 0.5), {"FLAG": True}),
        launch_cache.key("k", x.device, grid_over(65), (x, 64, 0.5), {"FLAG": True}),
        launch_cache.key("other", x.device, grid_over(64), (x, 64, 0.5), {"FLAG": True}),
    ]
    assert all(other is not None and other != base for other in others)
    assert len({base, *others}) == len(others) + 1


def test_numbers_python_calls_equal_but_triton_compiles_apart_get_different_keys():
    x = torch.zeros(4)
    keys = [launch_cache.key("k", x.device, (1,), (x, value), {}) for value in (1, True, 1.0)]
    assert len(set(keys)) == 3
    constexprs = [launch_cache.key("k", x.device, (1,), (x,), {"FLAG": value}) for value in (1, True)]
    assert constexprs[0] != constexprs[1]


def test_a_launch_with_an_argument_it_cannot_key_is_never_remembered():
    x = torch.zeros(4)

    class Sub(torch.Tensor):
        pass

    tuner = Tuner(["x_ptr", "other", "FLAG"], {})
    for args, kwargs in [
        ((x,), {"other": x, "FLAG": True}),  # a tensor by keyword
        ((x, "text"), {"FLAG": True}),
        ((x, x.as_subclass(Sub)), {"FLAG": True}),
    ]:
        launch_key = launch_cache.key(tuner, x.device, (1,), args, kwargs)
        launch_cache.remember(launch_key, tuner, Compiled(), (1,), args, kwargs)
        assert not launch_cache.run(launch_key, args), (args, kwargs)

    def grid(meta):  # closes over a variable assigned after it is made
        return (later,)

    assert launch_cache.key("k", x.device, grid, (x,), {}) is None
    later = 1  # noqa: F841 (the closure's cell, assigned too late for the key above)


def test_a_grid_closing_over_anything_but_numbers_is_never_remembered():
    x = torch.zeros(4)

    def grid(meta):
        return (x.numel(),)

    assert launch_cache.key("k", x.device, grid, (x,), {}) is None
    assert launch_cache.key("k", x.device, (3, 1), (x,), {}) is not None  # a tuple grid is its own key
    assert launch_cache.key("k", x.device, grid_over(4), (x,), {}) is not None


def test_a_remembered_launch_passes_the_arguments_then_the_constexprs_in_signature_order():
    x = torch.zeros(4)
    compiled = Compiled()
    tuner = Tuner(["x_ptr", "n", "FLAG", "BLOCK"], {"BLOCK": 128, "num_warps": 4})
    key = launch_cache.key(tuner, x.device, (2,), (x, 4), {"FLAG": True})
    assert not launch_cache.run(key, (x, 4))  # nothing remembered yet
    launch_cache.remember(key, tuner, compiled, (2,), (x, 4), {"FLAG": True})
    assert launch_cache.run(key, (x, 4))
    (arguments,) = compiled.calls
    assert arguments[:3] == (2, 1, 1)  # the grid, padded to three axes
    assert arguments[4:7] == ("function", "metadata", None)  # launch metadata: none without a hook
    assert arguments[-4:-2] == (x, 4) and arguments[-2:] == (True, 128)  # num_warps is an option, not a parameter


def test_nothing_is_remembered_for_a_parameter_left_to_its_default_or_an_unknown_kernel():
    x = torch.zeros(4)
    tuner = Tuner(["x_ptr", "n", "FLAG", "BLOCK"], {})
    key = launch_cache.key(tuner, x.device, (1,), (x, 4), {"FLAG": True})
    launch_cache.remember(key, tuner, Compiled(), (1,), (x, 4), {"FLAG": True})  # BLOCK never given
    assert not launch_cache.run(key, (x, 4))
    launch_cache.remember(key, tuner, object(), (1,), (x, 4), {"FLAG": True, "BLOCK": 4})  # not a compiled kernel
    assert not launch_cache.run(key, (x, 4))


def test_a_launch_hook_makes_every_launch_go_the_whole_way(monkeypatch):
    from triton import knobs

    x = torch.zeros(4)
    tuner = Tuner(["x_ptr", "n"], {})
    key = launch_cache.key(tuner, x.device, (1,), (x, 4), {})
    launch_cache.remember(key, tuner, Compiled(), (1,), (x, 4), {})
    assert launch_cache.run(key, (x, 4))
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
    assert not launch_cache.run(key, (x, 4))


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(launch_cache, "LIMIT", 3)
    x = torch.zeros(4)
    tuner = Tuner(["x_ptr", "n"], {})
    keys = [launch_cache.key(tuner, x.device, (1,), (x, n), {}) for n in range(4)]
    for n, key in enumerate(keys):
        launch_cache.remember(key, tuner, Compiled(), (1,), (x, n), {})
    assert len(launch_cache._launches) <= 3
    assert launch_cache.run(keys[-1], (x, 3))
