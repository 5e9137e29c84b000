"""bench.census reads SASS: instructions, loops, the hot loop, its counts and the modeled issue bound.

tests/data/tiny_matmul_sm90.sass is `cuobjdump -sass` of this kernel, compiled by Triton 3.8 for sm_90 (bf16
pointers 16-byte aligned, K divisible by 16, BLOCK=64, 4 warps, 3 stages): a loop of 4 HGMMA fed by 8 async
128-bit copies, 87 instructions long, from 0x870 to its branch back at 0xdd0.

    @triton.jit
    def tiny_matmul(a_ptr, b_ptr, c_ptr, K, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        a_ptrs = a_ptr + offs[:, None] * K + offs[None, :]
        b_ptrs = b_ptr + offs[:, None] * BLOCK + offs[None, :]
        acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
        for k in range(0, K, BLOCK):
            acc = tl.dot(tl.load(a_ptrs), tl.load(b_ptrs), acc)
            a_ptrs += BLOCK
            b_ptrs += BLOCK * BLOCK
        tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], acc)
"""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import reference_backend_env

from bench.census import (
    LoopCensus,
    Row,
    best_rows,
    census_of_loop,
    goals,
    hot_loop,
    loops,
    mma_flops,
    parse_sass,
    report,
)

SAMPLE = Path(__file__).parent / "data" / "tiny_matmul_sm90.sass"


@pytest.fixture(scope="module")
def instructions():
    functions = parse_sass(SAMPLE.read_text())
    assert list(functions) == ["tiny_matmul"]
    return functions["tiny_matmul"]


def test_parse_reads_every_instruction_once(instructions):
    # One instruction per 16 bytes from 0x0000 to the final 0x13f0 (the encodings' second lines are skipped).
    assert [i.address for i in instructions] == list(range(0, 0x1400, 0x10))
    first = instructions[0]
    assert (first.opcode, first.operands, first.predicated) == ("LDC", "R1, c[0x0][0x28]", False)
    hgmma = [i for i in instructions if i.opcode.startswith("HGMMA")]
    assert [i.opcode for i in hgmma] == ["HGMMA.64x64x16.F32.BF16"] * 4
    branch = next(i for i in instructions if i.address == 0xDD0)
    assert (branch.opcode, branch.operands, branch.predicated) == ("BRA", "0x870", True)


def test_hot_loop_is_the_branch_back_around_the_mma(instructions):
    spans = [(instructions[a].address, instructions[b].address) for a, b in loops(instructions)]
    assert (0x870, 0xDD0) in spans
    body = hot_loop(instructions)
    assert (body[0].address, body[-1].address) == (0x870, 0xDD0)
    counts = census_of_loop(body)
    assert counts == LoopCensus(
        length=87, tensor_core=4, async_copies=8, wide_loads=8, flops_per_warp=4 * 2 * 64 * 64 * 16 / 4
    )
    # 64x64x64 per trip: 128 tensor-core cycles against 87 issue cycles, so issue does not limit it.
    assert counts.issue_bound(4, "bf16") == 1.0
    assert counts.issue_bound(4, "fp32") is None


def test_back_edges_from_after_the_exit_are_not_loops():
    # A barrier's retry block parked after EXIT jumps back into the loop; the loop is 0x10-0x30 all the same.
    sass = """
        Function : k
        /*0000*/                   MOV R1, R2 ;
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0020*/              @!P0 BRA 0x60 ;
        /*0030*/              @P1 BRA 0x10 ;
        /*0040*/                   EXIT ;
        /*0050*/                   BRA 0x50;
        /*0060*/                   SYNCS.PHASECHK.TRANS64 P0, [R3], R5 ;
        /*0070*/                   BRA 0x10 ;
    """
    instructions = parse_sass(sass)["k"]
    assert [(instructions[a].address, instructions[b].address) for a, b in loops(instructions)] == [
        (0x10, 0x30),
        (0x50, 0x50),
    ]
    body = hot_loop(instructions)
    assert [i.address for i in body] == [0x10, 0x20, 0x30]


def test_mma_shapes_and_the_modeled_bound():
    assert mma_flops("HGMMA.64x128x16.F32.BF16") == (2 * 64 * 128 * 16, "warpgroup")
    assert mma_flops("HGMMA.64x64x8.F32.TF32") == (2 * 64 * 64 * 8, "warpgroup")
    assert mma_flops("HMMA.16816.F32.BF16") == (2 * 16 * 8 * 16, "warp")
    assert mma_flops("HMMA.1688.F32.TF32") == (2 * 16 * 8 * 8, "warp")
    assert mma_flops("IMAD.WIDE") is None
    # 64x64x64 in bf16 = 128 tensor-core cycles; 1000 instructions x 4 warps / 4 schedulers = 1000 issue cycles.
    loop = LoopCensus(length=1000, tensor_core=4, async_copies=0, wide_loads=0, flops_per_warp=2 * 64**3 / 4)
    assert loop.issue_bound(4, "bf16") == pytest.approx(0.128)
    assert loop.issue_bound(4, "tf32") == pytest.approx(0.256)  # half the rate: the same FLOPs take twice as long
    assert loop.issue_bound(8, "bf16") == pytest.approx(0.128)  # twice the warps: twice the FLOPs and the issue


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
    def row(variant, precision, length, *, async_copies=8, spill=0):
        loop = LoopCensus(length, 4, async_copies, async_copies, flops_per_warp=2 * 64**3 / 4)
        return Row(
            "conv._conv_fwd_kernel", precision, variant, f"{length}", 4, spill_stores=spill, spill_loads=0, loop=loop
        )

    forward = "HAS_BIAS=True RELU=True PACKED=False TF32=False"
    input_gradient = "HAS_BIAS=False RELU=False PACKED=False"
    rows = [
        row(forward, "bf16", 128),  # bound 1.0
        row(forward, "bf16", 100, spill=8),  # faster but spills: does not count
        row(forward, "fp16", 100, async_copies=0),  # no async copies: does not count
        row(forward, "fp16", 256),  # bound 0.5
        row(f"{input_gradient} TF32=True", "tf32", 400),  # 256 TF32 cycles / 400: 0.64
    ]
    lines = goals(rows)
    assert lines[0].startswith("- forward, bf16: met: bound 1.00 (goal 0.8) with 128,")
    assert lines[1].startswith("- forward, fp16: NOT MET: bound 0.50 (goal 0.8) with 256,")
    assert any(line.startswith("- input gradient (stride 1), tf32: met: bound 0.64") for line in lines)
    assert lines[-1] == "- no conv config spills: NOT MET (1 spill)"


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
