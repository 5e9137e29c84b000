"""bench/census.py: the best config per kernel and dtype, the report, the goals of the conv kernels, and the count
of compiles AlexNet's first training step launches. The SASS reading it relies on is tested in test_bench_sass.py."""

import subprocess
import sys
from pathlib import Path

from helpers import reference_backend_env

from bench.census import Row, best_rows, goals, report
from bench.sass import LoopCensus


def test_best_config_skips_spills_and_the_report_lists_every_row():
    def row(config, length, spill):
        loop = LoopCensus(length=length, tensor_core=4, async_copies=8, wide_loads=8, flops_per_warp=2 * 64**3 / 4)
        return Row("conv.k", "bf16", "", config, 4, registers=128, spill_stores=spill, spill_loads=spill, loop=loop)

    rows = [row("short but spills", 100, 64), row("long", 1000, 0), row("shorter", 400, 0)]
    rows.append(Row("conv.k", "bf16", "", "broken", 4, error="PTXASError: out of registers"))
    assert best_rows(rows)[("conv.k", "", "bf16")].config == "shorter"
    text = report(rows, title="t")
    assert "| conv.k |  | bf16 | 0.32 | shorter | 400 | 8 | 1.00 | 4 | 1 | 0 |" in text
    for config in ("short but spills", "long", "shorter", "broken"):
        assert f"| {config} |" in text


def test_goals_need_async_copies_no_spills_and_the_bound():
    def row(variant, precision, length, *, async_copies=8, spill=0, warps=4):
        loop = LoopCensus(length, 4, async_copies, async_copies, flops_per_warp=2 * 64**3 / 4)
        kernel = "conv._conv_fwd_kernel"
        return Row(kernel, precision, variant, f"{length}", warps, spill_stores=spill, spill_loads=0, loop=loop)

    forward = "HAS_BIAS=True RELU=True PACKED=False TF32=False"
    input_gradient = "HAS_BIAS=False RELU=False PACKED=False"
    rows = [
        row(forward, "bf16", 128),  # bound 1.0
        row(forward, "bf16", 100, spill=8),  # faster but spills: does not count
        row(forward, "fp16", 100, async_copies=0),  # no async copies: does not count
        row(forward, "fp16", 256),  # bound 0.5
        row(f"{input_gradient} TF32=True", "tf32", 400),  # 256 TF32 cycles / 400: 0.64
        row(f"{input_gradient} TF32=True", "tf32", 800, warps=8),  # the same bound, but 8 warps
    ]
    lines = goals(rows)
    assert lines[0].startswith("- forward, bf16: met: bound 1.00 (goal 0.8) with 128,")
    assert lines[1].startswith("- forward, fp16: NOT MET: bound 0.50 (goal 0.8) with 256,")
    assert any(line.startswith("- input gradient (stride 1), tf32: met: bound 0.64") for line in lines)
    assert lines[-2] == "- no conv config spills: NOT MET (1 spill)"
    assert lines[-1] == "- no conv config runs more than 4 warps: NOT MET (800)"
    assert goals(rows[:-1])[-1] == "- no conv config runs more than 4 warps: met"


def test_first_step_compiles_count_what_alexnets_first_step_launches():
    # In a fresh process without the interpreter: the compiled kernels' autotuners prune as on a GPU.
    script = """
from bench.census import first_step_compiles
counts = first_step_compiles()
assert set(counts) == {"_conv_fwd_kernel", "_conv_wgrad_kernel", "_relu_grad_kernel"}, counts  # no gather: conv1's
# input needs no gradient
assert all(n > 0 for n in counts.values()) and sum(counts.values()) < 100, counts
"""
    repository = Path(__file__).resolve().parents[1]
    env = reference_backend_env(PYTHONPATH=str(repository))
    subprocess.run([sys.executable, "-c", script], env=env, cwd=repository, check=True, timeout=300)
