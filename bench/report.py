"""Turn benchmark JSONs into a markdown report and a bar chart.

    pytest bench/ --benchmark-only --benchmark-json=results.json
    python -m bench.report results.json [more.json ...] --out bench/results/h100-2026-11-22

prints the report and, with --out, writes OUT.md and OUT.png. Several JSONs (a run split to fit a time
limit) make one report; they must come from one device. Speed-ups are time(theirs) / time(ours): above 1
means ours is faster. Times are the GPU's where measured (CUDA events around replays of a CUDA graph of warm calls,
the queue primed so that the host is never inside the window; each row names its method, bench/timing.py), else
wall-clock.
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from bench.implementations import IMPLEMENTATIONS
from bench.timing import GRAPH, METHODS

OPS = ("conv2d_relu", "local_response_norm", "max_pool2d", "dropout")


def load(paths: list[Path]) -> tuple[dict, dict]:
    """The runs' machine info (the first's), and their results keyed by row (kind, op, layer, direction,
    dtype, format) and then implementation."""
    machine: dict = {}
    rows: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for path in paths:
        data = json.loads(path.read_text())
        info_of_run = data["machine_info"].get("alexnet_triton", {})
        if machine and info_of_run.get("device") != machine.get("device"):
            raise ValueError(f"{path} is from {info_of_run.get('device')}, the first from {machine.get('device')}")
        machine = machine or info_of_run
        for result in data["benchmarks"]:
            info = result["extra_info"]
            if "median_s" not in info:  # a benchmark that failed before it was timed
                continue
            key = (info["kind"], info["op"], info["layer"], info["direction"], info["dtype"], info["memory_format"])
            rows[key][info["implementation"]] = info
    return machine, dict(rows)


def speedup(results: dict[str, dict], other: str, field: str = "median_s") -> float | None:
    if "ours" not in results or other not in results:
        return None
    return results[other][field] / results["ours"][field]


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_bytes(count: int | None) -> str:
    if count is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def fmt_rate(per_second: float, unit: str) -> str:
    for prefix, size in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if per_second >= size:
            return f"{per_second / size:.1f} {prefix}{unit}/s"
    return f"{per_second:.0f} {unit}/s"


def each(results: dict[str, dict], implementations, show) -> list[str]:
    """show(result) for each implementation, in order; a dash where it did not run."""
    return [show(results[impl]) if impl in results else "—" for impl in implementations]


def achieved(info: dict) -> str:
    """TFLOP/s for what does arithmetic, GB/s for what moves memory."""
    return fmt_rate(info["tflop_per_s"] * 1e12, "FLOP") if info["flops"] else fmt_rate(info["gb_per_s"] * 1e9, "B")


def images_per_s(result: dict) -> str:
    return f"{result['images_per_s']:.1f}"


def peak_memory(result: dict) -> str:
    return fmt_bytes(result["peak_memory_bytes"])


def ours_and_eager_bytes(results: dict[str, dict], field: str) -> str:
    """Ours and eager's byte counts of one field, as "ours / eager"."""
    return " / ".join(each(results, ("ours", "eager"), lambda result: fmt_bytes(result[field])))


def header(machine: dict) -> list[str]:
    peaks = machine.get("peaks") or {}
    gpu = machine.get("gpu_timing") is not None
    lines = [
        f"Device: **{machine.get('device', '?')}** ({machine.get('backend', '?')}), {machine.get('date', '?')}. "
        f"torch {machine.get('torch')}, triton {machine.get('triton')}, torchvision {machine.get('torchvision')}, "
        f"CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn') or '—'}, TF32 in fp32 convolutions "
        f"{'on' if machine.get('cudnn_allow_tf32') else 'off'}. Batch {machine.get('batch')}, "
        f"{machine.get('image_size')}x{machine.get('image_size')} images.",
        "",
    ]
    if peaks:
        lines += [
            f"Measured peaks: copy {fmt_rate(peaks['copy_bytes_per_s'], 'B')}; matrix product "
            f"{fmt_rate(peaks['bfloat16_flop_per_s'], 'FLOP')} in bf16, "
            f"{fmt_rate(peaks['float32_flop_per_s'], 'FLOP')} in fp32"
            f"{' (TF32, as for every fp32 row of this run)' if gpu and machine.get('matmul_allow_tf32') else ''}.",
            "",
        ]
    if gpu:
        lines += [
            f"Times: {machine['gpu_timing']}. The wall-clock column is the time a Python caller waits for a call "
            "(host time, launches and a synchronize included).",
            "",
        ]
    if machine.get("caveat"):
        lines += [f"> **{machine['caveat']}**", ""]
    return lines


def op_table(rows: dict[tuple, dict]) -> list[str]:
    lines = [
        "| op | layer | direction | dtype | format | ours | eager | compile | vs eager | vs compile "
        "| vs eager, wall-clock | ours achieved | of roofline | saved for backward (ours / eager) "
        "| peak memory (ours / eager) |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted((k for k in rows if k[0] == "op"), key=lambda k: (OPS.index(k[1]), *k[2:])):
        _, op, layer, direction, dtype, memory_format = key
        results = rows[key]
        ours = results.get("ours")
        times = " | ".join(each(results, IMPLEMENTATIONS, lambda result: fmt_time(result["median_s"])))
        rate, of_roofline = (achieved(ours), f"{ours['roofline_fraction']:.0%}") if ours else ("—", "—")
        lines.append(
            f"| {op} | {layer} | {direction} | {dtype} | {memory_format} | {times}"
            f" | {fmt_ratio(speedup(results, 'eager'))} | {fmt_ratio(speedup(results, 'compile'))}"
            f" | {fmt_ratio(speedup(results, 'eager', 'wall_median_s'))} | {rate} | {of_roofline}"
            f" | {ours_and_eager_bytes(results, 'saved_bytes')}"
            f" | {ours_and_eager_bytes(results, 'peak_memory_bytes')} |"
        )
    return lines


def network_table(rows: dict[tuple, dict]) -> list[str]:
    lines = [
        "| mode | dtype | format | ours img/s | eager img/s | compile img/s | vs eager | vs compile "
        "| bound img/s (bf16 peak) | ours of bound | peak memory (ours / eager / compile) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted(k for k in rows if k[0] == "network"):
        _, _, _, mode, dtype, memory_format = key
        results = rows[key]
        rates = each(results, IMPLEMENTATIONS, images_per_s)
        any_result = next(iter(results.values()))
        of_bound = f"{results['ours']['fraction_of_bound']:.1%}" if "ours" in results else "—"
        memory = " / ".join(each(results, IMPLEMENTATIONS, peak_memory))
        lines.append(
            f"| {mode} | {dtype} | {memory_format} | {' | '.join(rates)} | {fmt_ratio(speedup(results, 'eager'))} "
            f"| {fmt_ratio(speedup(results, 'compile'))} | {any_result['images_per_s_bound']:.0f} "
            f"| {of_bound} | {memory} |"
        )
    return lines


def swap_table(rows: dict[tuple, dict]) -> list[str]:
    lines = [
        "| model | batch x size | dtype | format | as is img/s | swapped img/s | speed-up | modules swapped "
        "| peak memory (as is / swapped) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted(k for k in rows if k[0] == "swap"):
        _, _, model, _, dtype, memory_format = key
        results = rows[key]
        rates = each(results, ("eager", "ours"), images_per_s)
        memory = " / ".join(each(results, ("eager", "ours"), peak_memory))
        swapped = results["ours"]["swapped"] if "ours" in results else "—"
        any_result = next(iter(results.values()))
        size = f"{any_result['batch']} x {any_result['image_size']}"
        lines.append(
            f"| {model} | {size} | {dtype} | {memory_format} | {' | '.join(rates)} "
            f"| {fmt_ratio(speedup(results, 'eager'))} | {swapped} | {memory} |"
        )
    return lines


def input_table(rows: dict[tuple, dict]) -> list[str]:
    """The input pipeline's rows: the CPU cost of a training image per core by each path (bench/test_input.py),
    and the GPU augmentation kernel's rate."""
    today = next((r["ours"] for k, r in rows.items() if k[0] == "input" and k[2] == "imagefolder"), None)
    lines = [
        "| path | dtype | format | images/s | per image | vs today's --data DIR path | achieved |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted(k for k in rows if k[0] == "input"):
        _, _, path, _, dtype, memory_format = key
        info = rows[key]["ours"]
        if "images_per_s_per_core" in info:
            rate = info["images_per_s_per_core"]
            versus = fmt_ratio(rate / today["images_per_s_per_core"]) if today else "—"
            lines.append(
                f"| {path} | {dtype} | {memory_format} | {rate:,.0f} per core | {1e3 / rate:.3f} ms | {versus} | — |"
            )
        else:
            rate = info["images_per_s"]
            lines.append(
                f"| {path} | {dtype} | {memory_format} | {rate:,.0f} | {fmt_time(1 / rate)} | — "
                f"| {fmt_rate(info['gb_per_s'] * 1e9, 'B')} |"
            )
    return lines


def timing_methods(rows: dict[tuple, dict]) -> dict[str, int]:
    """How many results each GPU timing method measured (bench/timing.py's names; "wall-clock" off a GPU)."""
    counts: dict[str, int] = defaultdict(int)
    for results in rows.values():
        for info in results.values():
            if "gpu_timing" in info:
                counts[info["gpu_timing"]] += 1
    return dict(counts)


def timing_table(rows: dict[tuple, dict]) -> list[str]:
    """The GPU results not timed as a CUDA graph, each with its method and why its call could not be captured; a line
    saying so when every one was."""
    counts = timing_methods(rows)
    if not counts:
        return ["The results do not say how they were timed (written before bench/timing.py recorded it)."]
    graphed = counts.get(GRAPH, 0)
    others = [
        (key, impl, info)
        for key, results in sorted(rows.items())
        for impl, info in sorted(results.items())
        if info.get("gpu_timing") not in (None, GRAPH)
    ]
    if not others:
        return [f"Every one of the {graphed} GPU results was timed as a CUDA graph."]
    lines = [
        f"{graphed} GPU results were timed as a CUDA graph; these {len(others)} were not:",
        "",
        "| what | layer | direction | dtype | format | implementation | timed as | why not a graph |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (_, op, layer, direction, dtype, memory_format), impl, info in others:
        method = info["gpu_timing"]
        lines.append(
            f"| {op} | {layer} | {direction} | {dtype} | {memory_format} | {impl} "
            f"| {method}: {METHODS.get(method, '?')} | {(info.get('capture_error') or '—').replace('|', '/')} |"
        )
    return lines


# The fused LRN + max-pool's traffic goals (issue 14), as fractions of the separate ops' traffic, to two decimals
# as the issue states them.
LRN_POOL_TRAFFIC_GOALS = {"forward": 0.41, "backward": 0.54}


def lrn_pool_table(rows: dict[tuple, dict]) -> list[str]:
    """The fused LRN + max-pool (bench/test_lrn_pool.py) against our separate ops, eager and torch.compile, with the
    bytes each of ours moves, counted from the shapes."""
    implementations = ("ours", "separate", "eager", "compile")
    lines = [
        "| layer | direction | dtype | format | fused | separate (ours) | eager | compile | vs separate | vs eager "
        "| vs compile | bytes (fused / separate) | fused of copy bandwidth | saved for backward (fused / eager) |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted(k for k in rows if k[0] == "lrn_pool"):
        _, _, layer, direction, dtype, memory_format = key
        results = rows[key]
        counts = next(iter(results.values()))["traffic"]
        ways = ("forward", "backward") if direction == "forward+backward" else ("forward",)
        fused, separate = (sum(counts[f"{kind}_{way}"] for way in ways) for kind in ("fused", "separate"))
        times = " | ".join(each(results, implementations, lambda result: fmt_time(result["median_s"])))
        of_copy = f"{results['ours']['roofline_fraction']:.0%}" if "ours" in results else "—"
        lines.append(
            f"| {layer} | {direction} | {dtype} | {memory_format} | {times} | {fmt_ratio(speedup(results, 'separate'))}"
            f" | {fmt_ratio(speedup(results, 'eager'))} | {fmt_ratio(speedup(results, 'compile'))}"
            f" | {fmt_bytes(fused)} / {fmt_bytes(separate)} ({fused / separate:.2f}x) | {of_copy}"
            f" | {ours_and_eager_bytes(results, 'saved_bytes')} |"
        )
    return lines


def goals(rows: dict[tuple, dict]) -> list[str]:
    """The project's goals, each judged from this run: met or missed where measured, and how many of the
    comparisons it needs are missing (a split or failed run), so a partial run never reads as met."""

    def verdict(checks: list[bool | None]) -> str:
        measured = [check for check in checks if check is not None]
        if not measured:
            return "not measured"
        short, missing = measured.count(False), len(checks) - len(measured)
        text = "met" if short == 0 else f"missed ({short} of {len(measured)} short)"
        return text + (f"; {missing} of {len(checks)} comparisons not measured" if missing else "")

    def select(op, direction=None, dtype=None, layers=None):
        return [
            results
            for key, results in rows.items()
            if key[0] in ("op", "network")
            and key[1] == op
            and (direction is None or key[3] == direction)
            and (dtype is None or key[4] == dtype)
            and (layers is None or key[2] in layers)
        ]

    def speedups(selected, other, at_least):
        return [None if s is None else s >= at_least for s in (speedup(r, other) for r in selected)]

    def bandwidth(selected):
        # Large transfers only: a 1 MB tensor measures launch time, not bandwidth.
        large = [r for r in selected if next(iter(r.values()))["bytes"] > 2**26]
        return [r["ours"]["roofline_fraction"] >= 0.8 if "ours" in r else None for r in large]

    def less_memory(selected, other):
        # None where either was not measured (a torch.compile'd call's tensors cannot be counted: bench/timing.py).
        peaks = [[r.get(impl, {}).get("peak_memory_bytes") for impl in ("ours", other)] for r in selected]
        return [None if None in pair else pair[0] < pair[1] for pair in peaks]

    def lrn_pool_traffic(way):
        counted = [next(iter(results.values()))["traffic"] for key, results in rows.items() if key[0] == "lrn_pool"]
        return [round(counts[f"{way}_ratio"], 2) <= LRN_POOL_TRAFFIC_GOALS[way] for counts in counted]

    lrn = select("local_response_norm", "forward+backward")
    memory_bound = select("max_pool2d") + select("dropout")
    convs = select("conv2d_relu", dtype="bfloat16", layers={"conv2", "conv3", "conv4", "conv5"})
    training = select("alexnet", "training")
    return [
        "| goal | verdict |",
        "| --- | --- |",
        f"| LRN forward+backward at least 5x eager | {verdict(speedups(lrn, 'eager', 5.0))} |",
        f"| LRN forward+backward faster than torch.compile | {verdict(speedups(lrn, 'compile', 1.0))} |",
        f"| max-pool and dropout at 80% of copy bandwidth or more (calls moving over 64 MiB) "
        f"| {verdict(bandwidth(memory_bound))} |",
        f"| conv2d+ReLU bf16 at cuDNN's speed or better on conv2-conv5 | {verdict(speedups(convs, 'eager', 1.0))} |",
        f"| training step faster than eager and torch.compile "
        f"| {verdict(speedups(training, 'eager', 1.0) + speedups(training, 'compile', 1.0))} |",
        f"| training step with less peak memory than eager and torch.compile "
        f"| {verdict(less_memory(training, 'eager') + less_memory(training, 'compile'))} |",
        f"| LRN + max-pool fused: traffic at most {LRN_POOL_TRAFFIC_GOALS['forward']}x the separate ops' forward, "
        f"{LRN_POOL_TRAFFIC_GOALS['backward']}x backward (counted) "
        f"| {verdict(lrn_pool_traffic('forward') + lrn_pool_traffic('backward'))} |",
    ]


def report(machine: dict, rows: dict[tuple, dict]) -> str:
    lines = ["# alexnet_triton benchmarks", "", *header(machine)]
    if machine.get("caveat"):
        lines += ["## Goals", "", "Not judged: the goals are about GPU speed, and this is not a GPU run.", ""]
    else:
        lines += ["## Goals", "", *goals(rows), ""]
    lines += ["## The whole network", "", *network_table(rows), ""]
    lines += ["## Each op at AlexNet's layer shapes (per tower)", "", *op_table(rows), ""]
    if any(key[0] == "lrn_pool" for key in rows):
        lines += ["## LRN + max-pool fused, at AlexNet's layers 1 and 2 (per tower)", "", *lrn_pool_table(rows), ""]
    if any(key[0] == "swap" for key in rows):
        lines += ["## torchvision models, a training step as they are and after at.swap_fused_ops", ""]
        lines += [*swap_table(rows), ""]
    if any(key[0] == "input" for key in rows):
        lines += ["## The input pipeline (ImageNet-like JPEGs, 500x375)", "", *input_table(rows), ""]
    if machine.get("gpu_timing") is not None:
        lines += ["## How each result was timed", "", *timing_table(rows), ""]
    lines += [
        "Speed-ups are time(theirs) / time(ours). Roofline: the slower of the op's FLOPs at the measured "
        "matrix-product rate and its unavoidable bytes at the measured copy bandwidth, over its time. "
        "Memory is counted from the tensors, not the allocator: "
        "saved for backward is the bytes of the tensors the autograd graph holds after the forward (each storage "
        "once), beyond the op's arguments and output; peak memory is the most bytes of tensors one call creates "
        "that are alive at once (each storage once, from the op that makes it until it is freed), which leaves out "
        "what is no tensor (cuDNN's and cuBLAS's workspaces) and is not measured for torch.compile (—: dynamo "
        "does not compile under the dispatch mode that counts).",
        "",
    ]
    return "\n".join(lines)


def chart(machine: dict, rows: dict[tuple, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [key for key in rows if key[0] != "input"]  # the input rows compare paths, not implementations
    keys = sorted(compared, key=lambda k: (k[0] != "network", k[1] in OPS and OPS.index(k[1]), *k[2:]))
    labels = [("torchvision " if key[0] == "swap" else "") + " ".join(map(str, key[2:])) for key in keys]
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(keys) + 1.5))
    positions = range(len(keys))
    for offset, other in ((-0.2, "eager"), (0.2, "compile")):
        values = [speedup(rows[key], other) or float("nan") for key in keys]  # NaN: no bar
        ax.barh([p + offset for p in positions], values, height=0.4, label=f"vs {other}")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(positions), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed-up of ours: time(theirs) / time(ours)")
    title = f"alexnet_triton on {machine.get('device', '?')}"
    if machine.get("caveat"):
        title += "\n(CPU interpreter: says nothing about kernel speed)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="the JSONs that --benchmark-json wrote")
    parser.add_argument("--out", type=Path, help="write OUT.md and OUT.png")
    args = parser.parse_args(argv)
    for path in args.results:
        if not path.is_file():
            parser.error(f"results: no such file {path}")
    try:
        machine, rows = load(args.results)
    except ValueError as error:
        parser.error(f"results: {error}")
    if not rows:
        parser.error("results: no timed benchmarks in them (was the run made with --benchmark-disable?)")
    text = report(machine, rows)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        chart(machine, rows, args.out.with_suffix(".png"))
        print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
