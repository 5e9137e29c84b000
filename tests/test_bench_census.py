"""bench/census.py: the best config per kernel and dtype, the report, the goals of the conv kernels, the count of
compiles AlexNet's first training step launches, and the compiles and tunings of each part of a run. The SASS reading
it relies on is tested in test_bench_sass.py."""

import subprocess
import sys
from pathlib import Path

from helpers import reference_backend_env

from bench.census import Phase, Row, best_rows, goals, report, verdict
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
    # In a fresh process without the interpreter: the compiled kernels' autotuners prune as on a GPU. The counts are
    # exact, as README and bench/results/census-sm90.md state them (37: 23 forward, 11 weight gradient, 2 ReLU mask,
    # 1 cutting conv1's image into blocks), so that a change to a kernel's specialization or configs shows here.
    script = """
from bench.census import first_step_compiles
counts = first_step_compiles()
# No gather kernel: conv1's input needs no gradient.
expected = {"_space_to_depth_kernel": 1, "_conv_fwd_kernel": 23, "_conv_wgrad_kernel": 11, "_relu_grad_kernel": 2}
assert counts == expected, counts
assert sum(counts.values()) == 37, counts
"""
    repository = Path(__file__).resolve().parents[1]
    env = reference_backend_env(PYTHONPATH=str(repository))
    subprocess.run([sys.executable, "-c", script], env=env, cwd=repository, check=True, timeout=300)


def test_the_verdict_fails_when_a_later_part_of_an_epoch_compiles_or_tunes():
    first = [Phase("training step 1", {"k": (5, 2)}, "first"), Phase("evaluation batch 1", {"k": (1, 1)}, "first")]
    quiet = [Phase("training steps 2-9", {}, "epoch"), Phase("figure 4", {"k": (3, 1)}, "end")]
    assert verdict(first + quiet)  # the first step and batch may compile; after the epochs is reported apart
    assert not verdict([*first, Phase("evaluation batches 2-3", {"k": (0, 1)}, "epoch")])  # a retune alone
    assert not verdict([*first, Phase("training steps 2-9", {"k": (1, 0)}, "epoch")])  # a compile alone


def test_first_epoch_compiles_and_tunes_only_in_the_first_step_and_the_first_evaluation_batch():
    # In a fresh process without the interpreter: the real network and input pipeline on meta tensors, the compiled
    # kernels' autotuners pruning and keying as on a GPU. The totals are exact so that a change to a kernel's key,
    # specialization or configs, or to the sizes a run shows them, shows here (bench/results/census-sm90.md).
    script = """
from bench.census import BUILTIN, IMAGENET, first_epoch, first_epoch_report, verdict

def counts(phase):
    return phase.compiles, phase.keys

for run, first_step, first_batch, figure, dropped, unpadded in (
    (IMAGENET, (58, 30), (12, 10), (0, 0), (9, 25), (0, 1)),
    (BUILTIN, (52, 29), (8, 10), (0, 0), (0, 24), (0, 0)),
):
    phases = first_epoch(run)
    parts = [phase.part for phase in phases]
    assert parts == ["first", "epoch", "first", "epoch", "epoch", "end", "contrast", "contrast"], parts
    step, steps, batch, batches, epochs, figure4, partial_step, partial_batch = phases
    assert verdict(phases), [(p.name, p.added) for p in phases]
    for later in (steps, batches, epochs):  # later steps, later evaluation batches, later epochs: nothing new
        assert counts(later) == (0, 0), (later.name, later.added)
    assert (counts(step), counts(batch)) == (first_step, first_batch), (run.name, counts(step), counts(batch))
    assert counts(figure4) == figure, (run.name, figure4.added)  # under the run's autocast and layout
    # What dropping and padding avoid: a partial batch would retune (new keys) and compile again.
    assert counts(partial_step) == dropped, (run.name, partial_step.added)
    assert counts(partial_batch) == unpadded, (run.name, partial_batch.added)
    assert set(step.added) >= {"_conv_fwd_kernel", "_conv_wgrad_kernel", "_relu_grad_kernel", "_dropout_kernel",
                               "_lrn_max_pool_fwd_kernel", "_lrn_max_pool_bwd_kernel", "_max_pool_fwd_kernel",
                               "_max_pool_bwd_kernel"}, step.added
    assert "_conv_dgrad_gather_kernel" not in step.added  # conv1's input needs no gradient
    assert "_lrn_fwd_kernel" not in step.added  # LRN is fused with the pool at layers 1 and 2
    assert ("_crop_normalize_kernel" in step.added) == run.crops_on_gpu, step.added
    assert batch.added.get("_crop_normalize_kernel", (0, 0)) == (0, 0)  # the centre crop: the training crop's kernel
    assert set(batch.added) <= {"_crop_normalize_kernel", "_space_to_depth_kernel", "_conv_fwd_kernel",
                                "_lrn_max_pool_fwd_kernel", "_max_pool_fwd_kernel"}, batch.added  # forward only
    report = first_epoch_report(run, phases)
    assert report[-1] == "compiles only in the first training step and the first evaluation batch: yes", report
assert IMAGENET.eval_batch == 511 and IMAGENET.last_eval == 433 and IMAGENET.dropped == 15
from alexnet_triton import data
data.pad_rows = lambda tensor, rows: tensor  # a planted bug: evaluation no longer pads its last batch
assert not verdict(first_epoch(IMAGENET))
"""
    repository = Path(__file__).resolve().parents[1]
    env = reference_backend_env(PYTHONPATH=str(repository))
    subprocess.run([sys.executable, "-c", script], env=env, cwd=repository, check=True, timeout=300)
