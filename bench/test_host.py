"""Host overhead (bench/host.py): each public op's forward and forward+backward, ours and eager, and the launches
of a training step, with every Triton launch stopped at the compiled kernel's launch.

The measurement runs once, in a subprocess without TRITON_INTERPRET (this process's kernels were built for the
interpreter on a CPU; host.measure_in_subprocess). Each op result's pytest-benchmark statistics are that
subprocess's samples, one per round, read back through the benchmark's timer (`host.Replay`), so `--benchmark-compare`
and `--benchmark-save` work on them as on any benchmark; extra_info holds the launches (Triton kernels and ATen
ops, by name). The training steps are counted, not timed: their results time nothing (`timed: none`) and carry
the counts. No `median_s` in extra_info: bench.report's tables are of GPU time and leave these rows out;
`python -m bench.host` writes their table.
"""

import pytest

from bench import host
from bench.workloads import DIRECTIONS

CASE_NAMES = tuple(host.small_cases())
STEPS = tuple(f"{impl} {layout}" for layout in host.LAYOUTS for impl in host.IMPLEMENTATIONS)


@pytest.fixture(scope="module")
def measured(pytestconfig) -> dict:
    # Under --benchmark-disable the harness is only proven to run: a few calls, a small image for the step.
    disabled = pytestconfig.getoption("benchmark_disable", False)
    argv = ["--repeats", "3", "--warmup", "1", "--image-size", "67"] if disabled else []
    return host.measure_in_subprocess(argv)


def replay(benchmark, samples_ns: list[int]) -> None:
    """pytest-benchmark's statistics of samples_ns, one round each."""
    if not hasattr(benchmark, "_timer"):
        pytest.fail("pytest-benchmark's fixture has no _timer any more: bench/test_host.py's Replay needs updating")
    benchmark._timer = host.Replay(samples_ns)
    benchmark.pedantic(lambda: None, rounds=len(samples_ns), iterations=1)


def about(measured: dict) -> dict:
    settings = measured["settings"]
    return {
        "kind": "host",
        "dtype": "float32",
        "memory_format": "channels_last",
        "stub_at": settings["stub_at"],
        "machine": measured["machine"],
        "caveat": "host time with every Triton launch stubbed, on a CPU: not GPU time (bench/host.py)",
    }


@pytest.mark.parametrize("impl", host.IMPLEMENTATIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_host_op(benchmark, measured, case_name, direction, impl):
    row = next(r for r in measured["ops"] if r["case"] == case_name and r["direction"] == direction)
    result = row[impl]
    benchmark.group = f"host {case_name} {direction}"
    benchmark.extra_info.update(
        about(measured),
        op=row["op"],
        layer=case_name,
        direction=direction,
        implementation=impl,
        shapes=row["shapes"],
        host_median_us=result["median_us"],
        triton_launches=len(result["triton"]),
        aten_launches=len(result["aten"]),
        triton_kernels=result["triton"],
        aten_ops=result["aten"],
    )
    replay(benchmark, result["samples_ns"])


@pytest.mark.parametrize("step", STEPS)
def test_host_step(benchmark, measured, step):
    impl, layout = step.split()
    phases = measured["steps"][step]
    settings = measured["settings"]
    benchmark.group = "host training step: launches counted (extra_info), nothing timed"
    benchmark.extra_info.update(
        about(measured),
        op="alexnet",
        layer="alexnet",
        direction="training",
        implementation=impl,
        memory_format=layout,
        batch=settings["step_batch"],
        image_size=settings["image_size"],
        timed="none: the step's launches are counted, not timed",
        triton_launches={phase: len(entry["triton"]) for phase, entry in phases.items()},
        aten_launches={phase: len(entry["aten"]) for phase, entry in phases.items()},
        aten_ops={phase: entry["aten"] for phase, entry in phases.items()},
    )
    assert sum(len(entry["aten"]) for entry in phases.values()) > 0
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
