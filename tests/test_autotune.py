"""kernels/autotune.py: checked tuning. A candidate that computes a wrong answer never wins, whichever place it has
in the list; a single candidate is checked too; a key where all fail raises; keys hold constexprs and bucketed
sizes; tuning one key from two threads tunes once; the disk cache is per GPU model and versions and is re-checked.

Runs through Triton's interpreter on the CPU, with the autotuner's timing replaced by a fixed table. The
expectations of the real launchers (expected.py) are tested in test_expected.py.
"""

import json
import threading
import time
import warnings

import pytest
import torch
import triton
import triton.language as tl
from alexnet_triton.kernels import _common, autotune, expected


@triton.jit
def _double_kernel(
    x_ptr,
    out_ptr,
    numel,
    BLOCK: tl.constexpr,
    WRONG: tl.constexpr,
    SKIP_LAST: tl.constexpr,
    WRONG_TILE: tl.constexpr,
):
    """out = 2 x; WRONG adds 1 everywhere (a miscompile's wrong values), SKIP_LAST leaves the last element
    unwritten, WRONG_TILE is off by 5% in program 3's tile only."""
    pid = tl.program_id(0)
    offsets = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < (numel - 1 if SKIP_LAST else numel)
    x = tl.load(x_ptr + offsets, mask=mask)
    out = 2 * x + (1.0 if WRONG else 0.0)
    if WRONG_TILE:
        out = tl.where(pid == 3, out * 1.05, out)
    tl.store(out_ptr + offsets, out, mask=mask)


def config(block, *, wrong=False, skip_last=False, wrong_tile=False):
    return triton.Config({"BLOCK": block, "WRONG": wrong, "SKIP_LAST": skip_last, "WRONG_TILE": wrong_tile})


class Timings:
    """A benchmark that runs each candidate once and reports milliseconds[i] for the i-th config timed."""

    def __init__(self, milliseconds):
        self.milliseconds = list(milliseconds)
        self.timed = 0

    def __call__(self, kernel_call, quantiles):
        kernel_call()
        time = self.milliseconds[self.timed]
        self.timed += 1
        return [time, time, time]


def tuner(configs, milliseconds=(), key=("numel",)):
    return autotune.CheckedAutotuner(
        _double_kernel,
        _double_kernel.arg_names,
        configs,
        list(key),
        checked=["out_ptr"],
        do_bench=Timings(milliseconds),
    )


def twice(x, results):
    """The trusted answer for _double_kernel: 2 x, within fp32 rounding."""
    value = 2 * x.double()
    allowance = 2 * expected.rounding_unit(x.dtype) * value.abs()
    return expected.Within(results, [expected.Whole("output", value, allowance)])


def launch(kernel, x, *, trusted=True):
    out = torch.empty_like(x)
    with _common.expecting(lambda: twice(x, lambda: [out]) if trusted else None):
        kernel[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, out, x.numel())
    return out


def test_a_wrong_first_candidate_is_dropped_and_a_right_one_wins():
    # The old check trusted the first candidate: a miscompile there made every correct config look wrong.
    kernel = tuner([config(32, wrong=True), config(64), config(128)], milliseconds=[2.0, 1.0])
    x = torch.randn(1000)
    with pytest.warns(RuntimeWarning, match=r"_double_kernel: dropped config \(BLOCK: 32, WRONG: True.*1000 of 1000"):
        out = launch(kernel, x)
    assert kernel.best_config.kwargs["BLOCK"] == 128
    assert kernel.configs_timings[config(32, wrong=True)] == [float("inf")] * 3  # never timed
    assert kernel.bench.timed == 2
    assert torch.equal(out, 2 * x)


def test_one_wrong_tile_is_caught_where_a_norm_would_pass_it():
    x = torch.randn(4096)
    out = torch.empty_like(x)
    wrong = tuner([config(256, wrong_tile=True)])
    with (
        _common.expecting(lambda: twice(x, lambda: [out])),
        pytest.raises(autotune.AutotuneError),
        pytest.warns(RuntimeWarning, match=r"256 of 4096 elements off"),
    ):
        wrong[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, out, x.numel())
    # What the old relative-norm check (3e-2 in bf16) would have seen: one tile of sixteen 5% off.
    raw = 2 * x
    raw[3 * 256 : 4 * 256] *= 1.05
    assert ((raw - 2 * x).norm() / (2 * x).norm()).item() < 3e-2


def test_a_config_that_leaves_an_element_unwritten_is_dropped():
    # Outputs are NaN before each candidate runs, so a stale value from the previous one cannot pass.
    kernel = tuner([config(64), config(32, skip_last=True)], milliseconds=[2.0])
    x = torch.randn(300)
    with pytest.warns(RuntimeWarning, match=r"SKIP_LAST: True.*1 of 300 elements off, e.g. at \(299,\) nan"):
        out = launch(kernel, x)
    assert kernel.best_config.kwargs["BLOCK"] == 64
    assert torch.equal(out, 2 * x)


def test_a_single_candidate_is_checked_too():
    kernel = tuner([config(64, wrong=True)])
    x = torch.randn(100)
    with pytest.raises(autotune.AutotuneError, match=r"none of its 1 candidate config\(s\) computed the right answer"):
        with pytest.warns(RuntimeWarning, match="WRONG: True"):
            launch(kernel, x)
    assert kernel.cache == {}  # nothing wrong is remembered either


def test_when_every_candidate_is_wrong_the_launch_raises_with_each_reason():
    kernel = tuner([config(32, wrong=True), config(64, skip_last=True)])
    x = torch.randn(200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(autotune.AutotuneError) as raised:
            launch(kernel, x)
    message = str(raised.value)
    assert "refusing to run a wrong kernel" in message
    assert "WRONG: True" in message and "SKIP_LAST: True" in message


def test_without_a_trusted_answer_candidates_must_agree_with_the_first():
    kernel = tuner([config(32), config(64, wrong=True), config(128)], milliseconds=[3.0, 2.0])
    x = torch.randn(1000)
    with pytest.warns(RuntimeWarning, match=r"WRONG: True.*against the first candidate"):
        out = launch(kernel, x, trusted=False)
    assert kernel.best_config.kwargs["BLOCK"] == 128
    assert torch.equal(out, 2 * x)


def test_agreeing_configs_are_timed_and_the_fastest_wins():
    kernel = tuner([config(32), config(64), config(128)], milliseconds=[3.0, 1.0, 2.0])
    x = torch.randn(500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = launch(kernel, x)
    assert kernel.best_config.kwargs["BLOCK"] == 64
    assert torch.equal(out, 2 * x)


def test_first_mode_runs_only_the_first_candidate_untimed_and_still_checks_it(monkeypatch):
    monkeypatch.setenv("ALEXNET_TRITON_TUNE", "first")
    kernel = tuner([config(32), config(64), config(128)])
    x = torch.randn(500)
    assert torch.equal(launch(kernel, x), 2 * x)
    assert kernel.best_config.kwargs["BLOCK"] == 32 and kernel.bench.timed == 0
    # A first candidate that fails its check gives way to the next, still untimed.
    wrong_first = tuner([config(32, wrong=True), config(64), config(128)])
    with pytest.warns(RuntimeWarning, match="WRONG: True"):
        assert torch.equal(launch(wrong_first, x), 2 * x)
    assert wrong_first.best_config.kwargs["BLOCK"] == 64 and wrong_first.bench.timed == 0
    all_wrong = tuner([config(32, wrong=True), config(64, skip_last=True)])
    with pytest.raises(autotune.AutotuneError), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        launch(all_wrong, x)
    monkeypatch.setenv("ALEXNET_TRITON_TUNE", "fastest")
    with pytest.raises(ValueError, match="ALEXNET_TRITON_TUNE='fastest': expected one of full, first"):
        autotune.tune_mode()


def test_keys_hold_the_constexprs_a_launch_passes_and_bucketed_sizes():
    @triton.jit
    def scaled(x_ptr, out_ptr, numel, TRIPLE: tl.constexpr, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < numel
        x = tl.load(x_ptr + offsets, mask=mask)
        tl.store(out_ptr + offsets, x * (3.0 if TRIPLE else 2.0), mask=mask)

    kernel = autotune.CheckedAutotuner(
        scaled,
        scaled.arg_names,
        [triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 128})],
        ["numel"],
        checked=["out_ptr"],
        do_bench=Timings([1.0] * 8),
    )
    assert kernel.key_names == ["numel", "TRIPLE"]  # BLOCK is tuned, so not part of the key

    def run(n, triple):
        x = torch.randn(n)
        out = torch.empty_like(x)
        kernel[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, out, n, TRIPLE=triple)
        assert torch.equal(out, x * (3.0 if triple else 2.0))

    run(1000, False)
    run(1020, False)  # the same power-of-two bucket: no new tuning
    assert len(kernel.cache) == 1
    run(1000, True)  # a constexpr-only variant: another compiled kernel, tuned on its own
    run(3000, False)  # another bucket
    aligned = ("torch.float32", True)  # each pointer's dtype and 16-byte alignment, then numel's specialization
    assert sorted(kernel.cache) == [
        (1024, False, aligned, aligned, 0),
        (1024, True, aligned, aligned, 0),
        (4096, False, aligned, aligned, 0),
    ]
    assert [autotune.bucket(n) for n in (0, 1, 2, 3, 48, 64, 65)] == [0, 1, 2, 4, 64, 64, 128]
    run(1024, False)  # a multiple of 16: Triton compiles another variant, which is tuned and checked on its own
    assert (1024, False, aligned, aligned, 16) in kernel.cache
    assert autotune.bucket(True) is True and autotune.bucket(0.5) == 0.5


class SlowDoubler:
    """A thread-safe stand-in for a compiled kernel (the interpreter runs one kernel at a time, a GPU does not):
    out = 2 x, slowly, so that a second thread arrives while the first is still tuning."""

    arg_names = ["x_ptr", "out_ptr", "numel"]

    @staticmethod
    def fn(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):  # noqa: N803 (the kernel's signature)
        pass

    def run(self, x, out, numel, *, grid, warmup, BLOCK, **compile_options):  # noqa: N803
        time.sleep(0.05)
        out.copy_(2 * x)


def test_two_threads_tuning_one_key_tune_it_once():
    started = threading.Barrier(2)
    timed = []

    def bench(kernel_call, quantiles):
        timed.append(threading.get_ident())
        kernel_call()
        return [1.0, 1.0, 1.0]

    configs = [triton.Config({"BLOCK": 32}), triton.Config({"BLOCK": 64})]
    kernel = autotune.CheckedAutotuner(
        SlowDoubler(), SlowDoubler.arg_names, configs, ["numel"], checked=["out_ptr"], do_bench=bench
    )
    results, errors = {}, []

    def worker(name):
        try:
            x = torch.randn(700)
            started.wait()
            results[name] = torch.equal(launch(kernel, x), 2 * x)
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(name,)) for name in ("tower 0", "tower 1")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == {"tower 0": True, "tower 1": True}
    assert len(timed) == 2 and len(set(timed)) == 1  # two configs timed once, by one of the threads
    assert len(kernel.cache) == 1


def test_the_disk_cache_is_per_gpu_model_and_versions(monkeypatch, tmp_path):
    monkeypatch.setenv("ALEXNET_TRITON_CACHE", str(tmp_path))
    kernel = tuner([config(32), config(64)])
    candidates = kernel.configs
    h100 = kernel.cache_path("NVIDIA H100 80GB HBM3", candidates)
    assert h100.parent == tmp_path / "autotune" and h100.name.startswith("_double_kernel-")
    assert kernel.cache_path("NVIDIA H200", candidates) != h100
    assert kernel.cache_path("NVIDIA H100 80GB HBM3", candidates[:1]) != h100
    monkeypatch.setattr(triton, "__version__", "0.0.0")
    assert kernel.cache_path("NVIDIA H100 80GB HBM3", candidates) != h100


def test_a_config_read_back_from_disk_is_checked_again(monkeypatch, tmp_path):
    path = tmp_path / "cache.json"
    kernel = tuner([config(32, wrong=True), config(64)], milliseconds=[1.0])
    monkeypatch.setattr(kernel, "cache_file", lambda candidates, named: path)
    x = torch.randn(300)
    key = kernel.key_of({"numel": x.numel(), "x_ptr": x, "out_ptr": x})
    path.write_text(json.dumps({repr(key): 0}))  # a stale file that names the wrong config
    with pytest.warns(RuntimeWarning, match="WRONG: True"):
        out = launch(kernel, x)
    assert kernel.best_config.kwargs["BLOCK"] == 64 and torch.equal(out, 2 * x)
    # The tuning result replaced the stale entry, and is taken from disk, checked, by a fresh autotuner.
    fresh = tuner([config(32, wrong=True), config(64)])
    monkeypatch.setattr(fresh, "cache_file", lambda candidates, named: path)
    assert torch.equal(launch(fresh, x), 2 * x)
    assert fresh.best_config.kwargs["BLOCK"] == 64 and fresh.bench.timed == 0


def test_tuning_inside_cuda_graph_capture_is_refused(monkeypatch):
    monkeypatch.setattr(autotune, "capturing", lambda named: True)
    with pytest.raises(autotune.AutotuneError, match="during CUDA graph capture would tune"):
        launch(tuner([config(32)]), torch.randn(10))


def test_a_relative_norm_catches_a_dropped_share_of_a_long_sum_that_elementwise_bounds_allow():
    # A 2k-term chunk missing from a 387k-term sum: each element moves by a fraction of its allowance, the whole
    # output by about sqrt(2k / 387k) = 7% of its norm.
    value = torch.randn(64, 64, dtype=torch.float64)
    got = value * (1 - 2048 / 387_000) + 0.05 * torch.randn_like(value) * value.abs().mean()
    allowance = 0.3 * value.abs().mean() * torch.ones_like(value)
    assert expected.compare(got, value, allowance, "w") is None
    assert "relative error" in expected.Whole("w", value, allowance, norm_tolerance=1e-3).judge(got)
    assert expected.Whole("w", value, allowance, norm_tolerance=1e-3).judge(value.float()) is None


def test_compare_reports_count_place_and_allowance():
    value = torch.tensor([1.0, float("nan"), float("inf"), 2.0], dtype=torch.float64)
    assert expected.compare(value.float(), value, torch.zeros(()), "x") is None
    problem = expected.compare(torch.tensor([1.0, float("nan"), float("inf"), 2.5]), value, 0.1, "x")
    assert problem == "x: 1 of 4 elements off, e.g. at (3,) 2.5 where 2 +- 0.1"
    assert "1 of 4" in expected.compare(torch.tensor([1.0, 0.0, float("inf"), 2.0]), value, 0.1, "x")
    assert "shape (3,)" in expected.compare(torch.zeros(3), value, 0.1, "x")
