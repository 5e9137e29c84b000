"""bench/sass.py reads SASS: instructions, loops, the hot loop, its counts and the modeled issue bound.

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

from pathlib import Path

import pytest

from bench.sass import LoopCensus, branch_target, census_of_loop, hot_loop, loops, mma_flops, parse_sass

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
    # A barrier's retry block parked after EXIT jumps back into the loop; the loop is 0x10-0x30 all the same. The
    # branch to itself at 0x50 pads the function's end: no loop either.
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
    assert [(instructions[a].address, instructions[b].address) for a, b in loops(instructions)] == [(0x10, 0x30)]
    body = hot_loop(instructions)
    assert [i.address for i in body] == [0x10, 0x20, 0x30]


def test_a_loop_may_leave_by_a_conditional_exit_and_branch_back_twice():
    # The loop 0x10-0x60 ends the kernel (its way out the EXIT at 0x50) and has two branches back to its header: one
    # loop. The loop 0x20-0x30 nests in it.
    sass = """
        Function : k
        /*0000*/                   MOV R1, R2 ;
        /*0010*/                   IADD3 R1, R1, 0x1, RZ ;
        /*0020*/                   FFMA R4, R4, R4, R4 ;
        /*0030*/              @P0 BRA 0x20 ;
        /*0040*/              @P1 BRA 0x10 ;
        /*0050*/              @!P2 EXIT ;
        /*0060*/                   BRA 0x10 ;
        /*0070*/                   BRA 0x70;
    """
    instructions = parse_sass(sass)["k"]
    assert [(instructions[a].address, instructions[b].address) for a, b in loops(instructions)] == [
        (0x10, 0x60),
        (0x20, 0x30),
    ]


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


def test_a_branch_with_a_predicate_operand_is_a_branch():
    # ptxas writes some loops' back edges as `@!P0 BRA P3, 0x...` (the crop kernel's rescaling loop): still a loop.
    text = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0020*/              @!P0 BRA P3, 0x10 ;
        /*0030*/                   EXIT ;
        /*0040*/                   BRA 0x40;
    """
    instructions = parse_sass(text)["k"]
    assert branch_target(instructions[2]) == 0x10
    assert loops(instructions) == [(1, 2)]
