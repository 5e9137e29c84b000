"""A static census of the kernels as an H100 would run them: every kernel x config x dtype compiled for sm_90
offline, and its SASS read.

    python -m bench.census                                  # every kernel, config and dtype (minutes)
    python -m bench.census --kernel conv --out census.md    # the kernels whose name contains "conv"
    python -m bench.census --first-step                     # the compiles AlexNet's first bf16 training step needs

Per compiled variant: registers per thread, spill bytes (stores/loads), shared memory, compile seconds, and the hot
loop, the innermost loop that holds the most tensor-core instructions (without any, the longest innermost loop):
its length in instructions, its tensor-core instructions (HGMMA on Hopper, HMMA), async copies into shared memory
(LDGSTS, and TMA's UTMALDG), 128-bit global loads, and the modeled issue bound.

The modeled issue bound compares two cycle counts of one trip round the hot loop on one SM: the cycles the tensor
cores need for the loop's FLOPs (4096 bf16/fp16 FLOP or 2048 TF32 FLOP per clock per SM on an H100) against the
cycles its instructions take to issue (length x warps / 4 schedulers, one instruction per clock each). 1.0 means
issuing the loop's instructions need not slow the tensor cores; 0.1 means it keeps them at most 10% busy. It bounds
issue only: memory bandwidth, latency, occupancy and bank conflicts are not in it. Everything here is static:
nothing runs on a GPU.
"""

import argparse
import dataclasses
import datetime
import platform
import sys
import tempfile
from pathlib import Path

import triton

from bench.sass import LoopCensus, census_of_loop, disassemble, hot_loop, parse_sass

# ---------------------------------------------------------------------------------------------
# The census of compiled cases
# ---------------------------------------------------------------------------------------------


def precision(case: dict) -> str:
    """What tl.dot multiplies in: tf32 for fp32 with TF32 on, else the tensors' dtype."""
    return "tf32" if case["dtype"] == "fp32" and case["constexprs"].get("TF32") else case["dtype"]


@dataclasses.dataclass
class Row:
    kernel: str
    precision: str
    variant: str
    config: str
    num_warps: int
    error: str | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    shared: int | None = None
    seconds: float = 0.0
    loop: LoopCensus | None = None

    @property
    def bound(self) -> float | None:
        return self.loop.issue_bound(self.num_warps, self.precision) if self.loop else None

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads)


def census_row(kernel: str, result: dict) -> Row:
    """One compile result of bench.kernel_specs.compile_specs, with its SASS read."""
    row = Row(kernel, precision(result), result["variant"], result["config"], result["options"]["num_warps"])
    row.seconds = result.get("seconds", 0.0)
    if "error" in result:
        row.error = result["error"].splitlines()[0][:200] if result["error"] else "error"
        return row
    row.registers, row.shared = result["registers"], result["shared"]
    row.spill_stores, row.spill_loads = result["spill_stores"] or 0, result["spill_loads"] or 0
    functions = parse_sass(disassemble(result["cubin"]))
    instructions = max(functions.values(), key=len) if functions else []
    body = hot_loop(instructions)
    row.loop = census_of_loop(body) if body else None
    return row


def take_census(specs, folder: Path, *, all_configs: bool = True) -> list[Row]:
    from bench.kernel_specs import compile_specs  # imports the kernels: not needed to parse SASS

    results = compile_specs(specs, folder, all_configs=all_configs, timeout=7200)
    return [census_row(name, result) for name, outcomes in results.items() for result in outcomes]


def first_step_compiles(*, batch: int = 128, dtype: str = "bf16", sms: int = 132) -> dict[str, int]:
    """Kernel -> how many distinct compiles AlexNet's first training step launches (per tower, channels_last, the
    input image needing no gradient): the conv launchers run on meta tensors of the towers' shapes with the kernels'
    launches recorded instead of run, each counted once per Triton specialization (an integer argument equal to 1
    becomes a constant, a multiple of 16 gets a hint, unless the kernel's do_not_specialize names it) and per config
    the autotuner keeps after pruning. sms: the GPU's SM count, which decides the reduction splits. Needs the
    compiled kernels (no TRITON_INTERPRET)."""
    import torch
    from alexnet_triton.kernels import _common, conv, conv_grad, conv_tuning

    from alexnet_triton.model import layer_shapes
    from bench.kernel_specs import unspecialized

    if _common.INTERPRET:
        raise RuntimeError("first_step_compiles needs the kernels as compiled (TRITON_INTERPRET unset)")
    compiles = set()

    def candidates(kernel, args, kwargs) -> list:
        """The configs the kernel's autotuner keeps for a launch: its own prune (autotune.CheckedAutotuner), else
        Triton's early_config_prune."""
        named = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs}
        if getattr(kernel, "prune", None) is not None:
            return kernel.prune(kernel.configs, named)
        kernel.nargs = named
        return kernel.prune_configs(kwargs)

    def record(kernel, expect=None):  # _common.launcher(kernel, expect): the expectation only matters to tuning
        unspecialized_args = unspecialized(kernel)  # neither constant nor hint
        fixed = [name not in unspecialized_args for name in kernel.arg_names]

        def seen_as(arg, specialized: bool) -> str:  # what Triton specializes an argument on
            if isinstance(arg, torch.Tensor):
                return str(arg.dtype)
            return "" if not specialized else "1" if arg == 1 else "D" if arg % 16 == 0 else ""

        def launch(*args, **kwargs):
            specialization = tuple(map(seen_as, args, fixed))
            for config in candidates(kernel, args, kwargs):
                compiles.add((kernel.base_fn.__name__, specialization, tuple(sorted(kwargs.items())), str(config)))

        return type("Recorder", (), {"__getitem__": lambda self, grid: launch})()

    saved = (_common.launcher, conv_tuning.sm_count)
    _common.launcher, conv_tuning.sm_count = record, lambda device: sms  # the launchers' splits on that GPU
    try:
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        last = torch.channels_last
        for shape in layer_shapes():
            if not shape.layer.relu:  # fc8: a plain linear layer
                continue
            c_in, c_out, k, size = shape.in_channels, shape.out_channels, shape.kernel, shape.input_size
            x = torch.empty(batch, c_in, size, size, dtype=torch_dtype, device="meta").to(memory_format=last)
            w = torch.empty(c_out, c_in, k, k, dtype=torch_dtype, device="meta").to(memory_format=last)
            stride, padding = (shape.layer.stride,) * 2, (shape.layer.padding,) * 2
            out = conv.conv_relu_forward(x, w, torch.empty(c_out, dtype=torch_dtype, device="meta"), stride, padding, 1)
            masked, _ = conv_grad.relu_grad(torch.empty_like(out), out, True)
            if shape.layer.reads != "image":  # the image needs no gradient
                conv_grad.conv_relu_input_grad(masked, w, list(x.shape), last, stride, padding, 1)
            conv_grad.conv_relu_weight_grad(masked, x, list(w.shape), last, stride, padding, 1)
    finally:
        _common.launcher, conv_tuning.sm_count = saved
    counts: dict[str, int] = {}
    for name, *_ in compiles:
        counts[name] = counts.get(name, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _number(value, fmt="{}") -> str:
    return "-" if value is None else fmt.format(value)


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| kernel | precision | variant | config | registers | spill bytes st/ld | shared | compile s "
        "| hot loop | tensor-core | async copies | 128-bit loads | issue bound |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        what = f"| {row.kernel} | {row.precision} | {row.variant} | {row.config} |"
        if row.error:
            lines.append(f"{what} error: {row.error} | | | {row.seconds:.1f} | | | | | |")
            continue
        loop = row.loop
        lines.append(
            f"{what} {row.registers} | {row.spill_stores}/{row.spill_loads} | {row.shared} | {row.seconds:.1f} "
            f"| {_number(loop and loop.length)} | {_number(loop and loop.tensor_core)} "
            f"| {_number(loop and loop.async_copies)} | {_number(loop and loop.wide_loads)} "
            f"| {_number(row.bound, '{:.2f}')} |"
        )
    return lines


def best_rows(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    """(kernel, variant, precision) -> its config without spills and with the highest issue bound (ties: the
    shortest loop)."""
    best: dict[tuple[str, str, str], Row] = {}
    for row in rows:
        if row.error or row.spills or row.bound is None:
            continue
        key = (row.kernel, row.variant, row.precision)
        held = best.get(key)
        if held is None or (row.bound, -row.loop.length) > (held.bound, -held.loop.length):
            best[key] = row
    return best


def summary(rows: list[Row]) -> list[str]:
    lines = [
        "| kernel | variant | precision | best issue bound (no spills) | its config | hot loop | async copies "
        "| best bound (any) | configs | configs that spill | compile s (all configs) |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    best = best_rows(rows)
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.kernel, row.variant, row.precision), []).append(row)
    for key, group in groups.items():
        chosen = best.get(key)
        spilling = sum(row.spills for row in group)
        seconds = sum(row.seconds for row in group)
        any_bound = max((row.bound for row in group if row.bound is not None), default=None)
        what = f"| {key[0]} | {key[1]} | {key[2]} |"
        tail = f"| {_number(any_bound, '{:.2f}')} | {len(group)} | {spilling} | {seconds:.0f} |"
        if chosen is None:
            lines.append(f"{what} - | - | - | - {tail}")
            continue
        lines.append(
            f"{what} {chosen.bound:.2f} | {chosen.config} | {chosen.loop.length} | {chosen.loop.async_copies} {tail}"
        )
    return lines


# The kernels with tl.dot: none of their configs may spill, nor run more than MAX_CONV_WARPS warps (their
# div/mod-indexed loops miscompiled at 8: triton-lang/triton#1254, pytorch/pytorch#173068; see conv_tuning.py).
CONV_KERNELS = ("conv._conv_fwd_kernel", "conv_grad._conv_wgrad_kernel", "conv_grad._conv_dgrad_gather_kernel")
MAX_CONV_WARPS = 4
# The issue's goals for the convolution (issues 13 and 20), by role: the kernel, the variant's flags, and the lowest
# modeled bound its best non-spilling config must reach per precision, with async copies in its hot loop.
GOALS = [
    ("forward", "conv._conv_fwd_kernel", "HAS_BIAS=True RELU=True PACKED=False"),
    ("input gradient (stride 1)", "conv._conv_fwd_kernel", "HAS_BIAS=False RELU=False PACKED=False"),
    ("weight gradient", "conv_grad._conv_wgrad_kernel", "PACKED=False"),
]
GOAL_BOUND = {"bf16": 0.8, "fp16": 0.8, "tf32": 0.6}


def goals(rows: list[Row]) -> list[str]:
    """One line per role and precision: met or not, with the best non-spilling config's numbers; and whether any
    conv config spills or runs more than MAX_CONV_WARPS warps."""
    lines = []
    for role, kernel, flags in GOALS:
        for precision, wanted in GOAL_BOUND.items():
            candidates = [
                row
                for row in rows
                if row.kernel == kernel
                and row.precision == precision
                and set(flags.split()) <= set(row.variant.split())
                and not row.error
                and not row.spills
                and row.bound is not None
                and row.loop.async_copies > 0
            ]
            if not any(row.kernel == kernel and row.precision == precision for row in rows):
                continue
            best = max(candidates, key=lambda row: row.bound, default=None)
            if best is None:
                lines.append(f"- {role}, {precision}: NOT MET (no config without spills and with async copies)")
                continue
            verdict = "met" if best.bound >= wanted else "NOT MET"
            lines.append(
                f"- {role}, {precision}: {verdict}: bound {best.bound:.2f} (goal {wanted}) with {best.config}, "
                f"{best.loop.length}-instruction hot loop, {best.loop.async_copies} async copies, no spills"
            )
    conv = [row for row in rows if row.kernel in CONV_KERNELS and not row.error]
    if conv:
        spilling = [row for row in conv if row.spills]
        lines.append(f"- no conv config spills: {'met' if not spilling else f'NOT MET ({len(spilling)} spill)'}")
        wide = sorted({row.config for row in conv if row.num_warps > MAX_CONV_WARPS})
        verdict = "met" if not wide else f"NOT MET ({', '.join(wide)})"
        lines.append(f"- no conv config runs more than {MAX_CONV_WARPS} warps: {verdict}")
    return lines


def software() -> str:
    """The versions that decide the compiled code: Triton, its ptxas, and the Python and PyTorch it ran under."""
    import torch

    try:
        ptxas = f"ptxas {triton.knobs.nvidia.ptxas.version}"
    except Exception:  # no NVIDIA backend: nothing was compiled for sm_90 either
        ptxas = "no ptxas"
    return f"Triton {triton.__version__} ({ptxas}), PyTorch {torch.__version__}, Python {platform.python_version()}"


def report(rows: list[Row], *, title: str) -> str:
    total = sum(row.seconds for row in rows)
    spilling = [row for row in rows if row.spills]
    head = [
        f"# {title}",
        "",
        f"Static: compiled offline for sm_90 (an H100) with {software()} on "
        f"{datetime.date.today().isoformat()}, SASS read with cuobjdump; nothing ran on a GPU. "
        "The issue bound models issue only (hot-loop instructions x warps / 4 schedulers against the tensor-core "
        "cycles of the loop's FLOPs), not memory, latency or occupancy. See `bench/census.py`.",
        "",
        f"{len(rows)} compiled variants, {sum(1 for row in rows if row.error)} errors, {len(spilling)} with spills; "
        f"{total:.0f} s of compilation in all (one core each).",
        "",
        "## The issue's goals",
        "",
        *goals(rows),
        "",
        "## Best config per kernel, variant and precision",
        "",
        *summary(rows),
        "",
        "## Every variant",
        "",
        *table(rows),
        "",
    ]
    return "\n".join(head)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="", help="only the kernels whose name contains this")
    parser.add_argument("--default-configs", action="store_true", help="only each kernel's default configs")
    parser.add_argument("--out", type=Path, help="write the markdown report here (else print it)")
    parser.add_argument("--title", default="Static census of the kernels for sm_90")
    parser.add_argument(
        "--first-step", action="store_true", help="only count the compiles AlexNet's first bf16 training step needs"
    )
    args = parser.parse_args(argv)
    if args.first_step:
        counts = first_step_compiles()
        print(f"{sum(counts.values())} compiles: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
        return

    from bench.kernel_specs import SPECS
    from bench.offline_compile import missing_nvidia_backend

    reason = missing_nvidia_backend()
    if reason is not None:
        sys.exit(f"cannot compile for sm_90 here: {reason}")
    specs = [spec for spec in SPECS if args.kernel in spec.name]
    if not specs:
        sys.exit(f"no kernel's name contains {args.kernel!r}")
    with tempfile.TemporaryDirectory() as folder:
        rows = take_census(specs, Path(folder), all_configs=not args.default_configs)
    text = report(rows, title=args.title)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
