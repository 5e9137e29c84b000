"""_common.CheckedAutotuner: a candidate config whose output disagrees with the first candidate's is dropped.

Runs through Triton's interpreter on the CPU, with the autotuner's timing replaced by a fixed table: a dropped
candidate is never timed, so it cannot win whatever its speed.
"""

import warnings

import pytest
import torch
import triton
import triton.language as tl
from alexnet_triton.kernels import _common


@triton.jit
def _double_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr, WRONG: tl.constexpr, SKIP_LAST: tl.constexpr):
    """out = 2 x; WRONG adds 1 (a miscompile's wrong values), SKIP_LAST leaves the last element unwritten."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < (numel - 1 if SKIP_LAST else numel)
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, 2 * x + (1.0 if WRONG else 0.0), mask=mask)


def config(block, *, wrong=False, skip_last=False):
    return triton.Config({"BLOCK": block, "WRONG": wrong, "SKIP_LAST": skip_last})


def tuner(configs, milliseconds):
    """A CheckedAutotuner over configs whose benchmark runs each candidate once and reports milliseconds[i] for the
    i-th config benchmarked."""
    timings = iter(milliseconds)

    def bench(kernel_call, quantiles):
        kernel_call()
        time = next(timings)
        return [time, time, time]

    return _common.CheckedAutotuner(
        _double_kernel, _double_kernel.arg_names, configs, ["numel"], None, None, do_bench=bench, checked=["out_ptr"]
    )


def launch(kernel, x):
    out = torch.empty_like(x)
    kernel[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, out, x.numel())
    return out


def test_a_wrong_config_is_dropped_before_it_is_timed():
    kernel = tuner([config(32), config(64, wrong=True), config(128)], milliseconds=[3.0, 2.0])
    x = torch.randn(1000)
    with pytest.warns(RuntimeWarning, match=r"_double_kernel: dropped config \(BLOCK: 64, WRONG: True.*relative error"):
        out = launch(kernel, x)
    assert kernel.best_config.kwargs["BLOCK"] == 128  # not the wrong one, which the timings never even saw
    assert kernel.configs_timings[config(64, wrong=True)] == [float("inf")] * 3
    assert torch.equal(out, 2 * x)


def test_a_config_that_leaves_elements_unwritten_is_dropped():
    # Outputs are poisoned with NaN before each candidate runs, so a stale value from the previous one cannot pass.
    kernel = tuner([config(64), config(32, skip_last=True)], milliseconds=[2.0])
    x = torch.randn(300)
    with pytest.warns(RuntimeWarning, match=r"SKIP_LAST: True.*relative error inf"):
        out = launch(kernel, x)
    assert kernel.best_config.kwargs["BLOCK"] == 64
    assert torch.equal(out, 2 * x)


def test_agreeing_configs_are_timed_and_the_fastest_wins():
    kernel = tuner([config(32), config(64), config(128)], milliseconds=[3.0, 1.0, 2.0])
    x = torch.randn(500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = launch(kernel, x)
    assert kernel.best_config.kwargs["BLOCK"] == 64
    assert torch.equal(out, 2 * x)


def test_relative_difference_counts_nan_only_where_one_side_has_it():
    wanted = torch.tensor([1.0, float("nan"), float("inf"), 2.0])
    assert _common.relative_difference(wanted.clone(), wanted) == 0.0
    assert _common.relative_difference(torch.tensor([1.0, float("nan"), float("inf"), float("nan")]), wanted) == float(
        "inf"
    )
    assert _common.relative_difference(torch.tensor([1.0, float("nan"), float("inf"), 2.2]), wanted) == pytest.approx(
        0.2 / 5**0.5
    )


def test_tolerances_are_rounding_not_errors():
    # Each tolerance sits above what two summation orders give and far below a wrong value's error (1 here).
    assert _common.AUTOTUNE_AGREEMENT[torch.float64] < 1e-6
    assert all(tolerance < 0.1 for tolerance in _common.AUTOTUNE_AGREEMENT.values())
