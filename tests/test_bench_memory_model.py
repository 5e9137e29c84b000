"""bench/memory_model.py: the memory-bound kernels' model (loops and their trips from the SASS, loads and stores by
width, the bound, the best config and the goal), the bytes each kernel moves at AlexNet's shapes as its real launcher
calls it, and one launch compiled for sm_90 end to end."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import triton
from helpers import reference_backend_env

from bench.memory_model import (
    DRAM_BYTES_PER_SECOND,
    ISSUE_PER_SECOND,
    Launch,
    MemoryRow,
    ProgramCounts,
    TripsMismatch,
    access_width,
    best_rows,
    count_program,
    goal,
    model_row,
    report_lines,
)
from bench.sass import loops, parse_sass

REPOSITORY = Path(__file__).resolve().parents[1]

# A kernel with a loop in a loop: the outer one 0x30-0xa0 (8 instructions; it leaves by the conditional EXIT at 0x90,
# as a loop that ends the kernel does), the inner one 0x50-0x70 (3), and the branch to itself that pads the end.
NESTED = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/              @!P0 EXIT ;
        /*0030*/                   LDG.E.U16 R6, desc[UR4][R2.64] ;
        /*0040*/                   IADD3 R7, R7, 0x1, RZ ;
        /*0050*/                   LDG.E R8, desc[UR4][R2.64] ;
        /*0060*/                   FFMA R9, R8, R8, R9 ;
        /*0070*/               @P1 BRA 0x50 ;
        /*0080*/                   STG.E.U8 desc[UR4][R2.64], R9 ;
        /*0090*/              @!P2 EXIT ;
        /*00a0*/                   BRA 0x30 ;
        /*00b0*/                   BRA 0xb0;
"""


@pytest.fixture
def nested():
    return parse_sass(NESTED)["k"]


def test_loops_nest_outermost_first_and_trips_multiply(nested):
    assert loops(nested) == [(3, 10), (5, 7)]  # indices of 0x30-0xa0 and 0x50-0x70; the padding is no loop
    counts = count_program(nested, [4, 5], "k")
    # 12 instructions once, the outer body 8 x (4 - 1) more, the inner 3 x (5 - 1) more on each of its 4 trips.
    assert counts.instructions == 12 + 8 * 3 + 3 * 4 * 4 == 84
    assert counts.loops == ((8, 4), (3, 5))
    assert counts.loads == 1 + 4 + 4 * 5  # LDG.E.128 once, LDG.E.U16 per outer trip, LDG.E per inner trip
    assert counts.loads_by_width == {128: 1, 16: 1, 32: 1}
    assert counts.stores_by_width == {8: 1}


def test_a_mean_trip_below_one_counts_a_loop_most_programs_skip(nested):
    # The inner loop run 2 times by one program in 8: 0.25 trips a program, so its body issues 0.25 x 4 times.
    assert count_program(nested, [4, 0.25], "k").instructions == 12 + 8 * 3 + 3 * 4 * (0.25 - 1)


def test_a_spec_with_another_number_of_loops_is_an_error_naming_the_kernel(nested):
    with pytest.raises(TripsMismatch, match=r"lrn\._lrn_fwd_kernel: its SASS has 2 loops .* give 1 \[50\]"):
        count_program(nested, [50], "lrn._lrn_fwd_kernel")
    # Loops as written or as compiled: the one with the SASS's number of loops is taken.
    assert count_program(nested, ([9], [4, 5]), "k").loops == ((8, 4), (3, 5))
    with pytest.raises(TripsMismatch, match=r"give 1 \[9\] or 3 \[1, 2, 3\]"):
        count_program(nested, ([9], [1, 2, 3]), "k")
    # In the census, a row with the error (and no numbers), not a guess.
    launch = Launch("lrn._lrn_fwd_kernel", "conv1 forward", "bf16", None, lambda meta: (10,), {})
    spec = SimpleNamespace(moves=lambda args: [(1000, 2)], trips=lambda args, config: [50])
    outcome = {"registers": 32, "spill_stores": 0, "spill_loads": 0}
    row = model_row(launch, triton.Config({"BLOCK_S": 128}, num_warps=4), spec, outcome, nested)
    assert row.error.startswith("lrn._lrn_fwd_kernel: its SASS has 2 loops") and row.counts is None
    assert not row.usable
    assert any("| error: lrn._lrn_fwd_kernel: its SASS has 2 loops" in line for line in report_lines([row]))
    # A spec that fails on the launch's arguments (a kernel's argument renamed): an error row too.
    spec = SimpleNamespace(moves=spec.moves, trips=lambda args, config: [args["CH"]])
    row = model_row(launch, triton.Config({"BLOCK_S": 128}, num_warps=4), spec, outcome, nested)
    assert row.error == "lrn._lrn_fwd_kernel: its spec's moves or trips failed on the launch: KeyError: 'CH'"


def test_access_widths():
    assert [access_width(op) for op in ("LDG.E.128", "LDG.E.128.STRONG.GPU", "LDG.E.64.CONSTANT", "LDG.E")] == [
        128,
        128,
        64,
        32,
    ]
    assert [access_width(op) for op in ("LDG.E.U16", "LDG.E.S16", "STG.E.U8", "LDG.E.S8", "STG.E.EL")] == [
        16,
        16,
        8,
        8,
        32,
    ]


def row(config, instructions, *, programs=1000, warps=4, nbytes=3_350_000, spill=0, dtype="bf16", launch="conv1"):
    counts = ProgramCounts(instructions, loads=2.0, loops=(), loads_by_width={}, stores_by_width={})
    return MemoryRow("k", launch, dtype, config, warps, programs, nbytes, elements=256_000, registers=32,
                     spill_stores=spill, spill_loads=0, counts=counts)  # fmt: skip


def test_the_bound_is_dram_time_over_the_larger_of_dram_and_issue_time():
    assert ISSUE_PER_SECOND == 132 * 4 * 1.755e9 and DRAM_BYTES_PER_SECOND == 3.35e12
    issue_bound = row("a", 1000)  # 4 million warp-instructions: 4.32 us against 1 us of DRAM
    assert issue_bound.warp_instructions == 1000 * 4 * 1000
    assert issue_bound.dram_s == pytest.approx(1e-6)
    assert issue_bound.issue_s == pytest.approx(4e6 / (132 * 4 * 1.755e9))
    assert issue_bound.bound == pytest.approx(1e-6 / (4e6 / (132 * 4 * 1.755e9)))
    assert row("b", 100).bound == 1.0  # 0.43 us of issue: DRAM decides
    # 2 loads a thread, 128 threads a program, 1000 programs, over the 256,000 elements of the largest tensor.
    assert issue_bound.loads_per_element == pytest.approx(2 * 128 * 1000 / 256_000)


def test_the_best_config_is_the_fastest_without_spills_and_the_goal_names_each_miss():
    rows = [row("slow", 1000), row("fast but spills", 100, spill=64), row("fast", 150), row("fp32", 1000, dtype="fp32")]
    rows += [row("pool", 1000, launch="conv5"), row("pool fast", 200, launch="conv5")]
    best = best_rows(rows)
    assert best[("k", "conv1", "bf16")].config == "fast" and best[("k", "conv5", "bf16")].config == "pool fast"
    assert goal(rows).endswith("met (lowest 1.00: k at conv1)")  # fp32 is not in the goal
    rows.append(row("fc", 1000, launch="fc6"))
    assert goal(rows).endswith("NOT MET at 1: k at fc6: 0.23")
    rows = [row("spills", 100, spill=8, launch="conv2")]
    assert best_rows(rows) == {("k", "conv2", "bf16"): None}
    assert goal(rows).endswith("NOT MET at 1: k at conv2: no usable config")


def run_script(script: str) -> None:
    """In a fresh process without the interpreter: the launchers take meta tensors as a GPU's, the kernels compile."""
    env = reference_backend_env(PYTHONPATH=str(REPOSITORY))
    subprocess.run([sys.executable, "-c", script], env=env, cwd=REPOSITORY, check=True, timeout=300)


def test_the_bytes_each_kernel_moves_at_alexnets_shapes_as_its_launcher_calls_it():
    # Counted by hand from the shapes (per tower, batch 128): every tensor read once and written once.
    run_script("""
from alexnet_triton.kernels._common import cdiv
from bench.kernel_specs import SPEC_BY_NAME
from bench.memory_model import alexnet_launches, configs_of

launches = {(l.kernel, l.launch, l.dtype): l for l in alexnet_launches()}
N = 128
conv1, conv2, conv3, conv5 = N * 48 * 55 * 55, N * 128 * 27 * 27, N * 192 * 13 * 13, N * 128 * 13 * 13
pool1, pool5 = N * 48 * 27 * 27, N * 128 * 6 * 6
crops = N * 3 * 227 * 227
hand = {
    ("lrn_pool._lrn_max_pool_fwd_kernel", "conv1 forward", "bf16"): conv1 * 2 + pool1 * (2 + 1),
    ("lrn_pool._lrn_max_pool_bwd_kernel", "conv1 backward", "bf16"): conv1 * 2 + pool1 * (2 + 1) + conv1 * 2,
    ("lrn._lrn_fwd_kernel", "conv2 forward", "fp32"): conv2 * 4 * 2,
    ("lrn._lrn_bwd_kernel", "conv2 backward", "bf16"): conv2 * 2 * 3,
    ("pool._max_pool_fwd_kernel", "conv5 forward", "bf16"): conv5 * 2 + pool5 * (2 + 1),
    ("pool._max_pool_bwd_kernel", "conv5 backward", "fp32"): pool5 * (4 + 1) + conv5 * 4,
    ("dropout._dropout_kernel", "fc6, fc7 (forward, backward)", "bf16"): N * 2048 * 2 * 2 + 8,
    # grad, out and masked; the bias gradient; 85 chunks of 256 pixels write and read their fp32 partial sums
    ("conv_grad._relu_grad_kernel", "conv3", "bf16"): conv3 * 2 * 3 + 192 * 2 + 2 * 85 * 192 * 4,
    ("conv_grad._relu_grad_kernel", "fc6", "fp32"): N * 2048 * 4 * 3 + 2048 * 4,  # one chunk: no partial sums
    # uint8 pixels in, crops out; the boxes, the lighting shifts, the mean and the scale
    ("augment._crop_normalize_kernel", "227 crops of 256 images", "bf16"): crops * (1 + 2) + N * 16 + N * 12 + 24,
    # the image in, its 57 x 57 blocks of 48 channels out (the 228th row and column zeros)
    ("space_to_depth._space_to_depth_kernel", "conv1's image (forward, weight gradient)", "bf16"):
        crops * 2 + N * 57 * 57 * 48 * 2,
}
for key, expected in hand.items():
    moved = SPEC_BY_NAME[key[0]].moves(launches[key].args)
    assert sum(n * size for n, size in moved) == expected, (key, moved, expected)

# Every memory-bound kernel at each of its AlexNet launches, in both dtypes.
expected = {
    "lrn_pool._lrn_max_pool_fwd_kernel": ["conv1 forward", "conv2 forward"],
    "lrn_pool._lrn_max_pool_bwd_kernel": ["conv1 backward", "conv2 backward"],
    "lrn._lrn_fwd_kernel": ["conv1 forward", "conv2 forward"],
    "lrn._lrn_bwd_kernel": ["conv1 backward", "conv2 backward"],
    "pool._max_pool_fwd_kernel": ["conv5 forward"],
    "pool._max_pool_bwd_kernel": ["conv5 backward"],
    "dropout._dropout_kernel": ["fc6, fc7 (forward, backward)"],
    "space_to_depth._space_to_depth_kernel": ["conv1's image (forward, weight gradient)"],
    "conv_grad._relu_grad_kernel": ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"],
    "augment._crop_normalize_kernel": ["227 crops of 256 images", "224 crops of 256 images rescaled to 253",
                                       "67 crops of 256 images rescaled to 76"],
}
for dtype in ("bf16", "fp32"):
    found = {}
    for kernel, launch, d in launches:
        if d == dtype:
            found.setdefault(kernel, []).append(launch)
    assert found == expected, found

# Programs from the launcher's grid per config, and the loops' trips.
lrn = launches[("lrn._lrn_fwd_kernel", "conv1 forward", "bf16")]
for config in configs_of(lrn):
    assert lrn.programs(config) == cdiv(conv1 // 48, config.kwargs["BLOCK_S"])  # a block of pixels a program
mask = launches[("conv_grad._relu_grad_kernel", "conv1", "bf16")]
(config,) = configs_of(mask)
chunks = cdiv(conv1 // 48, 256)  # 1513, the last of 128 pixels: 2 trips of 64, the others 4
assert mask.programs(config) == chunks * 1  # 48 channels: one block of 64
assert SPEC_BY_NAME[mask.kernel].trips(mask.args, config) == [(1512 * 4 + 2) / chunks, cdiv(chunks, 64) / chunks]
""")


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import triton.backends.nvidia"], capture_output=True).returncode != 0,
    reason="needs Triton's NVIDIA backend to compile for sm_90",
)
def test_a_launch_compiled_for_sm90_end_to_end():
    # LRN forward at conv2 in bf16, its autotuner's first config: its SASS loops as its spec gives them (the channel
    # walk), the bytes counted by hand, the bound from the formula; then with a spec that gives one loop more: an
    # error row naming the kernel.
    run_script("""
import dataclasses, tempfile
from pathlib import Path
from alexnet_triton.kernels._common import cdiv
from bench import kernel_specs, memory_model

name = "lrn._lrn_fwd_kernel"
wanted = (name, "conv2 forward", "bf16")
launch = next(l for l in memory_model.alexnet_launches() if (l.kernel, l.launch, l.dtype) == wanted)
(config,) = memory_model.configs_of(launch)[:1]
memory_model.configs_of = lambda launch: [config]
spec = kernel_specs.SPEC_BY_NAME[name]
with tempfile.TemporaryDirectory() as folder:
    (row,) = memory_model.take_memory_census([launch], Path(folder) / "a")
    assert row.error is None and not row.spills, row
    assert row.bytes == 128 * 128 * 27 * 27 * 2 * 2 and row.elements == 128 * 128 * 27 * 27
    assert row.programs == cdiv(128 * 27 * 27, config.kwargs["BLOCK_S"])
    trips = spec.trips(launch.args, config)
    assert [n for _, n in row.counts.loops] == trips and len(trips) == 1, (row.counts, trips)
    ((body, n),) = row.counts.loops
    assert 10 < body < row.counts.instructions - body * (n - 1) < 5000, row.counts  # the loop, inside the function
    assert row.counts.loads >= n and row.counts.loads_by_width and row.counts.stores_by_width, row.counts
    assert 0 < row.bound <= 1 and row.bound == min(1, row.dram_s / row.issue_s)
    kernel_specs.SPEC_BY_NAME[name] = dataclasses.replace(spec, trips=lambda a, c: [*trips, 1])
    (row,) = memory_model.take_memory_census([launch], Path(folder) / "b")
    assert row.error.startswith(name + ": its SASS has 1 loops"), row.error
""")
