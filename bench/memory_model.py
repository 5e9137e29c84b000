"""The memory-bound kernels (LRN, max-pool, LRN+pool, dropout, ReLU's mask, the crop) modelled at AlexNet's shapes: for
each kernel x launch x dtype x GPU config, the bytes it must move against the warp-instructions it issues, read from
its SASS compiled offline for sm_90. `python -m bench.census --memory` reports it; the full census adds it as a
section.

The model
---------
A launch is recorded from the real launcher (its arguments and its grid) on meta tensors of AlexNet's per-tower shapes
at batch 128, channels_last, then compiled for each GPU config the kernel's autotuner would try, with the
specialization Triton gives those arguments (unit strides as constants, multiple-of-16 hints).

    instructions per program = every SASS instruction of the function once
                               + each loop's body x (its trips - 1), a nested loop's multiplied by its enclosing trips
    warp-instructions        = programs (the launcher's grid for the config) x num_warps x instructions per program
    issue time               = warp-instructions / (132 SMs x 4 schedulers x 1.755 GHz)
    DRAM time                = bytes it must move / 3.35 TB/s
    bound                    = DRAM time / max(DRAM time, issue time)
    loads per element        = global load instructions executed per thread x threads / elements of the largest
                               tensor the kernel moves (1/8: one 128-bit load per 8 bf16 elements)

1.0 means issuing the kernel's instructions need not slow its DRAM traffic; 0.5 that issue takes twice the DRAM time.
The best config of a kernel, launch and dtype is the fastest modeled one (max(DRAM, issue) time, which is what an
autotuner would pick were the model the GPU), among those without spills.

Assumptions:
- Bytes: each tensor the kernel must touch read once and written once at its dtype's size (1-byte window positions,
  uint8 images), from the shapes; what each kernel moves is written next to its spec (bench/kernel_specs.py,
  `moves`). Re-reads that the caches serve (LRN's channel window, the pool's overlap) are not DRAM traffic.
- Issue: one warp-instruction per scheduler per clock on every SM, all SMs busy (no tail, no latency, no occupancy
  limit, no stall on memory). Predicated-off instructions still issue. "Every instruction once" counts the paths a
  program branches around too (64-bit division's slow path, the tail a split reduction's last program runs), so the
  issue time is an upper estimate by those.
- Loops (bench/sass.py's `loops`): a branch back to an earlier address whose span holds no unconditional EXIT (a
  conditional exit inside a loop is the loop's own); several branches back to one header are one loop; the
  unconditional branch to itself that ends every function is padding. Each kernel's spec gives the trips of its
  SASS loops, outermost first, then in program order (`trips`); a loop that programs run different numbers of times
  gets its mean trips per program (below 1 where most programs skip it: the ReLU mask's sum of partials).
- The compiler may unroll, peel or duplicate a loop: a spec may give its loops as written and as compiled (the
  crop's inner loop of constant trips is unrolled whole at some block sizes), and the census takes the one with the
  SASS's number of loops. A kernel whose SASS has another number of loops than any its spec gives is an error row
  naming it, and said on stderr, never a guess: its trips need rewriting for its new loops.
- tl.static_range loops are unrolled by Triton (no loop in the SASS); runtime loops (range, tl.range) stay loops.
Everything is static: nothing runs on a GPU.
"""

import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path

from bench.sass import Instruction, disassemble, loops, parse_sass

# ---------------------------------------------------------------------------------------------
# The machine: an H100 SXM
# ---------------------------------------------------------------------------------------------

SMS = 132
SCHEDULERS = 4  # warp schedulers per SM, one instruction a clock each
CLOCK_HZ = 1.755e9  # boost clock
ISSUE_PER_SECOND = SMS * SCHEDULERS * CLOCK_HZ  # warp-instructions
DRAM_BYTES_PER_SECOND = 3.35e12  # HBM3
THREADS_PER_WARP = 32
GOAL_BOUND = 0.8  # issue 23: every memory-bound kernel at least this in bf16 at AlexNet's shapes
BATCH = 128
DTYPES = ("bf16", "fp32")

# ---------------------------------------------------------------------------------------------
# Reading the SASS: loops, instructions executed per program, loads and stores by width
# ---------------------------------------------------------------------------------------------


class TripsMismatch(ValueError):
    """A kernel's SASS has another number of loops than its spec's trips give."""


def matching_trips(spans: list[tuple[int, int]], trips, kernel: str) -> list[float]:
    """The trips of a kernel's spec for its SASS loops: trips is a list, one per loop, or a tuple of such lists (the
    loops as written, and as the compiler may make them: a loop of constant trips unrolled whole), of which the one
    with as many loops as the SASS is taken. None: TripsMismatch, naming the kernel."""
    choices = trips if isinstance(trips, tuple) else (trips,)
    for choice in choices:
        if len(choice) == len(spans):
            return list(choice)
    lengths = ", ".join(f"{last - first + 1}" for first, last in spans) or "none"
    raise TripsMismatch(
        f"{kernel}: its SASS has {len(spans)} loops (instructions: {lengths}), its spec's trips give "
        + " or ".join(f"{len(choice)} {list(choice)}" for choice in choices)
        + ": rewrite the spec's trips for the kernel's loops (bench/kernel_specs.py)"
    )


def executions(instructions: list[Instruction], spans: list[tuple[int, int]], trips: list[float]) -> list[float]:
    """How many times one program (each warp of it) issues each instruction: once, times the trips of every loop
    that holds it (spans: bench.sass.loops; trips: one per span)."""
    counts = [1.0] * len(instructions)
    for (first, last), n in zip(spans, trips, strict=True):
        for i in range(first, last + 1):
            counts[i] *= n
    return counts


def access_width(opcode: str) -> int:
    """Bits one thread moves with a global load or store: LDG.E.128 128, LDG.E.64 64, LDG.E.U16 16, STG.E.U8 8,
    plain LDG.E 32."""
    parts = set(opcode.split("."))
    for width in (128, 64, 16, 8):
        if {str(width), f"U{width}", f"S{width}"} & parts:
            return width
    return 32


def is_global_load(opcode: str) -> bool:
    return opcode.split(".")[0] in ("LDG", "LDGSTS")


def is_global_store(opcode: str) -> bool:
    return opcode.split(".")[0] == "STG"


@dataclasses.dataclass(frozen=True)
class ProgramCounts:
    """One program's instructions, per warp, from its SASS and its loops' trips."""

    instructions: float  # issued per warp of a program
    loads: float  # global load instructions executed per thread
    loops: tuple[tuple[int, float], ...]  # (body length, trips) per loop, outermost first
    loads_by_width: dict  # bits -> global load instructions in the SASS
    stores_by_width: dict  # bits -> global store instructions in the SASS


def count_program(instructions: list[Instruction], trips, kernel: str) -> ProgramCounts:
    """A program's counts from its SASS and its spec's trips (see matching_trips)."""
    spans = loops(instructions)
    trips = matching_trips(spans, trips, kernel)
    counts = executions(instructions, spans, trips)
    loads_by_width: dict[int, int] = {}
    stores_by_width: dict[int, int] = {}
    for instruction in instructions:
        if is_global_load(instruction.opcode):
            width = access_width(instruction.opcode)
            loads_by_width[width] = loads_by_width.get(width, 0) + 1
        elif is_global_store(instruction.opcode):
            width = access_width(instruction.opcode)
            stores_by_width[width] = stores_by_width.get(width, 0) + 1
    return ProgramCounts(
        instructions=sum(counts),
        loads=sum(n for n, i in zip(counts, instructions, strict=True) if is_global_load(i.opcode)),
        loops=tuple((last - first + 1, n) for (first, last), n in zip(spans, trips, strict=True)),
        loads_by_width=loads_by_width,
        stores_by_width=stores_by_width,
    )


# ---------------------------------------------------------------------------------------------
# The model of one launch in one config
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class MemoryRow:
    kernel: str
    launch: str  # where AlexNet launches it: "conv1 forward"
    dtype: str
    config: str
    num_warps: int
    programs: int
    bytes: int  # it must move
    elements: int  # of the largest tensor it moves
    error: str | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    counts: ProgramCounts | None = None

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads)

    @property
    def warp_instructions(self) -> float:
        return self.programs * self.num_warps * self.counts.instructions

    @property
    def issue_s(self) -> float:
        return self.warp_instructions / ISSUE_PER_SECOND

    @property
    def dram_s(self) -> float:
        return self.bytes / DRAM_BYTES_PER_SECOND

    @property
    def time_s(self) -> float:
        return max(self.dram_s, self.issue_s)

    @property
    def bound(self) -> float:
        return self.dram_s / self.time_s

    @property
    def loads_per_element(self) -> float:
        threads = self.programs * self.num_warps * THREADS_PER_WARP
        return self.counts.loads * threads / self.elements

    @property
    def usable(self) -> bool:
        return self.error is None and not self.spills


def best_rows(rows: list[MemoryRow]) -> dict[tuple[str, str, str], MemoryRow | None]:
    """(kernel, launch, dtype) -> its fastest modeled config without spills (ties: the fewer warp-instructions), or
    None where every config failed or spills."""
    best: dict[tuple[str, str, str], MemoryRow | None] = {}
    for row in rows:
        key = (row.kernel, row.launch, row.dtype)
        held = best.setdefault(key, None)
        if row.usable and (held is None or (row.time_s, row.issue_s) < (held.time_s, held.issue_s)):
            best[key] = row
    return best


def goal(rows: list[MemoryRow]) -> str:
    """The issue's goal line: every memory-bound kernel at every AlexNet launch reaches GOAL_BOUND in bf16 with its
    best config (no spills)."""
    chosen = {key: row for key, row in best_rows(rows).items() if key[2] == "bf16"}
    if not chosen:
        return "- memory-bound kernels, bf16: nothing modelled"
    missed = [
        f"{kernel} at {launch}: " + ("no usable config" if row is None else f"{row.bound:.2f}")
        for (kernel, launch, _), row in chosen.items()
        if row is None or row.bound < GOAL_BOUND
    ]
    what = f"- memory-bound kernels, bf16, modeled bound >= {GOAL_BOUND} at each of the {len(chosen)} AlexNet launches"
    if missed:
        return f"{what}: NOT MET at {len(missed)}: " + "; ".join(missed)
    lowest = min(chosen.values(), key=lambda row: row.bound)
    return f"{what}: met (lowest {lowest.bound:.2f}: {lowest.kernel} at {lowest.launch})"


# ---------------------------------------------------------------------------------------------
# AlexNet's launches, recorded from the launchers
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    kernel: str  # the spec's name: "lrn._lrn_fwd_kernel"
    launch: str
    dtype: str
    jit: object  # the kernel as launched (under its autotuner)
    grid: Callable
    args: dict  # by name, the constexprs it passes included

    def programs(self, config) -> int:
        grid = self.grid({**self.args, **config.kwargs}) if callable(self.grid) else self.grid
        return math.prod(grid)


class _Recorder:
    """Stands in for _common.launcher (through census.launches_recorded): keeps each launch's kernel, grid and
    arguments, labelled with what is being launched."""

    autocast = None  # launches_recorded reads it: no autocast here, the dtypes are given

    def __init__(self):
        self.launches: list[Launch] = []
        self.label, self.dtype = "", ""

    def launcher(self, kernel, expect=None):
        record = self

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    named = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs}
                    fn = kernel
                    while hasattr(fn, "fn"):
                        fn = fn.fn
                    name = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
                    record.launches.append(Launch(name, record.label, record.dtype, kernel, grid, named))

                return launch

        return Launcher()


def alexnet_launches(batch: int = BATCH, dtypes=DTYPES) -> list[Launch]:
    """Every launch of the memory-bound kernels at AlexNet's per-tower shapes (model.layer_shapes), channels_last:
    LRN+pool forward and backward after conv1 and conv2 (and the plain LRN the swap uses there), max-pool after conv5,
    ReLU's mask with the bias gradient after every conv and fc layer, dropout after fc6 and fc7 (one shape: recorded
    once), conv1's image cut into blocks (space_to_depth.py), and the crops: 227 of the 256 store as stored, and the
    rescaling ones (224 of it rescaled to 253, 67 of it rescaled to 76). Meta tensors: no memory, no GPU. Needs the
    compiled kernels (no TRITON_INTERPRET)."""
    import torch
    from alexnet_triton.kernels import augment, conv_grad, dropout, lrn, lrn_pool, pool, space_to_depth

    from alexnet_triton import data
    from alexnet_triton.model import DROPOUT_P, PAPER_LRN, layer_shapes, pool_window
    from bench.census import launches_recorded

    meta, last = torch.device("meta"), torch.channels_last
    size, alpha, beta, k = (PAPER_LRN[key] for key in ("size", "alpha", "beta", "k"))
    kernel, stride = pool_window(True)
    window = ((kernel, kernel), (stride, stride), (0, 0))
    store = data.resize_size(227)
    record = _Recorder()
    with launches_recorded(record):
        for name in dtypes:
            dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
            record.dtype = name

            def tensor(*shape, dtype=dtype, layout=last):
                return torch.empty(*shape, dtype=dtype, device=meta).to(memory_format=layout)

            dropped = False
            for shape in layer_shapes():
                layer = shape.layer
                if not layer.relu:
                    continue
                c, side = shape.out_channels, shape.output_size
                out = tensor(batch, c, side, side)
                record.label = layer.name
                conv_grad.relu_grad(torch.empty_like(out), out, True)
                if layer.lrn:
                    record.label = f"{layer.name} forward"
                    pooled, pos = lrn_pool.lrn_max_pool_forward(out, size, alpha, beta, k, *window)
                    lrn.lrn_forward(out, size, alpha, beta, k)
                    record.label = f"{layer.name} backward"
                    lrn_pool.lrn_max_pool_backward(torch.empty_like(pooled), out, pos, size, alpha, beta, k, *window)
                    lrn.lrn_backward(torch.empty_like(out), out, size, alpha, beta, k)
                elif layer.pool:
                    record.label = f"{layer.name} forward"
                    pooled, pos = pool.max_pool_forward(out, *window)
                    record.label = f"{layer.name} backward"
                    pool.max_pool_backward(torch.empty_like(pooled), pos, list(out.shape), *window)
                if layer.dropout and not dropped:  # fc6 and fc7: one shape, forward and backward alike
                    record.label = "fc6, fc7 (forward, backward)"
                    seed, dense = torch.empty(1, dtype=torch.int64, device=meta), torch.contiguous_format
                    dropout.dropout(tensor(batch, c, layout=dense), seed, DROPOUT_P, dense)
                    dropped = True
            conv1 = layer_shapes()[0]
            record.label = "conv1's image (forward, weight gradient)"
            side, kernel1, stride1 = conv1.input_size, (conv1.kernel,) * 2, (conv1.layer.stride,) * 2
            image = tensor(batch, conv1.in_channels, side, side)
            space_to_depth.space_to_depth(image, kernel1, stride1, (0, 0), (conv1.output_size,) * 2)
            images = torch.empty(batch, store, store, 3, dtype=torch.uint8, device=meta)
            boxes = torch.empty(batch, augment.BOX_COLUMNS, dtype=torch.int32, device=meta)
            shift = torch.empty(batch, 3, device=meta)
            stats = torch.empty(3, device=meta)
            for crop in (227, 224, 67):
                resize = data.resize_size(crop)  # 256 for 227: the store as it is
                record.label = f"{crop} crops of {store} images" + ("" if resize == store else f" rescaled to {resize}")
                augment.crop_normalize(images, boxes, shift, stats, stats, crop, dtype, last, resize)
    return record.launches


# ---------------------------------------------------------------------------------------------
# Each launch compiled in each config its autotuner would try, and modelled
# ---------------------------------------------------------------------------------------------


def configs_of(launch: Launch) -> list:
    """The configs the kernel's autotuner would try for the launch (after its prune, if it has one)."""
    from bench.census import _candidates

    return _candidates(launch.jit, (), launch.args)


def compile_case(launch: Launch, config, specialize) -> dict:
    """triton.compile's arguments (bench.offline_compile's case) for the launch in a config, its arguments
    specialized as Triton specializes them at run time (specialize: bench.census._specializer()): an integer equal to
    1 (a unit stride) becomes a constant, a multiple of 16 carries the hint, a pointer its dtype."""
    from bench.census import _jit_function

    signature, constexprs, divisible = {}, dict(config.kwargs), []
    for param in _jit_function(launch.jit).params:
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            if param.name not in constexprs:  # the config's, else the launch's
                constexprs[param.name] = launch.args[param.name]
            continue
        kind, key = specialize(launch.args[param.name], param)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[param.name] = key
        elif key == "D":
            divisible.append(param.name)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages, "num_ctas": config.num_ctas}
    if config.maxnreg is not None:
        options["maxnreg"] = config.maxnreg
    return {"signature": signature, "constexprs": constexprs, "divisible": divisible, "options": options}


def config_label(config) -> str:
    return " ".join(f"{key}={value}" for key, value in config.kwargs.items()) + f" warps={config.num_warps}"


def model_row(launch: Launch, config, spec, outcome: dict, instructions: list[Instruction] | None) -> MemoryRow:
    """The model of a launch in a config, from its compile's outcome (bench.offline_compile) and its SASS. A spec
    whose moves or trips fail on the launch's arguments (a kernel's arguments renamed) gives an error row too."""
    row = MemoryRow(
        launch.kernel, launch.launch, launch.dtype, config_label(config), config.num_warps, launch.programs(config),
        bytes=0, elements=0,
    )  # fmt: skip
    try:
        moved = spec.moves(launch.args)
        row.bytes, row.elements = sum(n * size for n, size in moved), max(n for n, _ in moved)
        trips = spec.trips(launch.args, config)
    except Exception as error:
        row.error = f"{launch.kernel}: its spec's moves or trips failed on the launch: {type(error).__name__}: {error}"
        return row
    if "error" in outcome:
        row.error = outcome["error"].splitlines()[0][:200] if outcome["error"] else "error"
        return row
    row.registers = outcome["registers"]
    row.spill_stores, row.spill_loads = outcome["spill_stores"] or 0, outcome["spill_loads"] or 0
    try:
        row.counts = count_program(instructions, trips, launch.kernel)
    except TripsMismatch as error:
        row.error = str(error)
    return row


def take_memory_census(launches: list[Launch], folder: Path) -> list[MemoryRow]:
    """Every launch in every config compiled (each distinct compile once) and modelled."""
    from bench.census import _jit_function, _specializer
    from bench.kernel_specs import SPEC_BY_NAME
    from bench.offline_compile import compile_jobs

    specialize = _specializer()
    planned = []  # (launch, config, job name, case index)
    jobs: dict[str, dict] = {}
    for launch in launches:
        fn = _jit_function(launch.jit)
        job = jobs.setdefault(
            launch.kernel, {"name": launch.kernel, "module": fn.fn.__module__, "kernel": fn.fn.__name__, "cases": []}
        )
        for config in configs_of(launch):
            case = compile_case(launch, config, specialize)
            if case not in job["cases"]:
                job["cases"].append(case)
            planned.append((launch, config, launch.kernel, job["cases"].index(case)))
    outcomes = compile_jobs(list(jobs.values()), folder, timeout=3600)
    sass: dict[str, list[Instruction]] = {}  # cubin -> its kernel's instructions
    rows = []
    for launch, config, name, index in planned:
        outcome = outcomes[name][index]
        instructions = None
        if "cubin" in outcome:
            if outcome["cubin"] not in sass:
                functions = parse_sass(disassemble(outcome["cubin"]))
                sass[outcome["cubin"]] = max(functions.values(), key=len) if functions else []
            instructions = sass[outcome["cubin"]]
        rows.append(model_row(launch, config, SPEC_BY_NAME[launch.kernel], outcome, instructions))
    return rows


def memory_kernels() -> list[str]:
    """The specs' names of the memory-bound kernels: those whose spec says what they move."""
    from bench.kernel_specs import SPECS

    return [spec.name for spec in SPECS if spec.moves is not None]


def memory_census(folder: Path, *, kernel: str = "") -> list[MemoryRow]:
    """The model of every memory-bound kernel whose name contains `kernel`, at every AlexNet launch, dtype and config.
    Needs the compiled kernels (no TRITON_INTERPRET) and Triton's NVIDIA backend."""
    names = [name for name in memory_kernels() if kernel in name]
    launches = [launch for launch in alexnet_launches() if launch.kernel in names] if names else []
    return take_memory_census(launches, folder) if launches else []


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def model_text() -> str:
    """The model and its assumptions, as this module's docstring states them."""
    return __doc__.split("The model\n---------\n", 1)[1].strip()


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def _widths(counts: dict) -> str:
    return " ".join(f"{width}:{counts[width]}" for width in sorted(counts)) or "-"


def _loops(counts: ProgramCounts) -> str:
    return ", ".join(f"{length}x{trips:.3g}" for length, trips in counts.loops) or "none"


def _row_line(row: MemoryRow) -> str:
    what = f"| {row.kernel} | {row.launch} | {row.dtype} | {row.config} |"
    if row.error:
        return f"{what} error: {row.error} |" + " |" * 13
    c = row.counts
    return (
        f"{what} {row.programs:,} | {_loops(c)} | {c.instructions:,.0f} | {row.warp_instructions / 1e6:,.2f} "
        f"| {_us(row.issue_s)} | {row.bytes / 1e6:,.2f} | {_us(row.dram_s)} | {row.bound:.2f} "
        f"| {row.loads_per_element:.3g} | {_widths(c.loads_by_width)} | {_widths(c.stores_by_width)} "
        f"| {row.registers} | {row.spill_stores}/{row.spill_loads} |"
    )


HEADER = [
    "| kernel | launch | dtype | config | programs | loops (body x trips) | instructions a program "
    "| warp-instructions (M) | issue us | MB moved | DRAM us | bound | loads per element "
    "| global loads by bits | global stores by bits | registers | spill bytes st/ld |",
    "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |",
]


def summary(rows: list[MemoryRow]) -> list[str]:
    """Per kernel and launch, the best config's bound in bf16 and in fp32, side by side."""
    best = best_rows(rows)
    lines = [
        "| kernel | launch | bf16 bound | its config | fp32 bound | its config |",
        "| --- | --- | ---: | --- | ---: | --- |",
    ]
    for kernel, launch in dict.fromkeys((key[0], key[1]) for key in best):
        cells = []
        for dtype in DTYPES:
            row = best.get((kernel, launch, dtype))
            cells.append("- | -" if row is None else f"{row.bound:.2f} | {row.config}")
        lines.append(f"| {kernel} | {launch} | {' | '.join(cells)} |")
    return lines


def report_lines(rows: list[MemoryRow]) -> list[str]:
    """The memory-bound section of the census, as markdown lines: the model, the goal, the best config per kernel,
    launch and dtype, and every config; by kernel, then dtype, then in AlexNet's order."""
    rows = sorted(rows, key=lambda row: (row.kernel, DTYPES.index(row.dtype)))
    errors = [row for row in rows if row.error]
    best = [row for row in best_rows(rows).values() if row is not None]
    return [
        "## Memory-bound kernels at AlexNet's shapes",
        "",
        "Per tower, batch 128, channels_last; every launch recorded from its launcher on meta tensors and compiled in "
        "each GPU config its autotuner would try. The model (`bench/memory_model.py`):",
        "",
        "```",
        model_text(),
        "```",
        "",
        f"{len(rows)} launches x configs modelled, {len(errors)} errors, {sum(r.spills for r in rows)} with spills.",
        "",
        "### The goal",
        "",
        goal(rows),
        "",
        "### Best config per kernel and launch (no spills): bf16 and fp32",
        "",
        *summary(rows),
        "",
        "### Best config per kernel, launch and dtype",
        "",
        *HEADER,
        *(_row_line(row) for row in best),
        "",
        "### Every config",
        "",
        *HEADER,
        *(_row_line(row) for row in rows),
        "",
    ]


def loudly(rows: list[MemoryRow]) -> None:
    """Each error row on stderr with its kernel's name: a trips mismatch means a kernel's loops changed."""
    for row in rows:
        if row.error:
            print(f"memory census error: {row.kernel} ({row.launch}, {row.dtype}, {row.config}): {row.error}",
                  file=sys.stderr)  # fmt: skip
