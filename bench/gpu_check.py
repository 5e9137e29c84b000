"""One command for a lent GPU: the CUDA tests, a memory check, the benchmarks that matter, a short training run
and a count of syncs per training step, each in its own process with its own time limit, in under 10 minutes on
one H100 (compilation included).

    pip install --no-deps --no-build-isolation -e .
    python -m bench.gpu_check --out bench/results/gpu-check-2026-11-30

Parts (`--parts` picks some; each has a time limit, `--<part>-limit SECONDS`):

| part | what | limit |
| --- | --- | ---: |
| tests | `pytest tests/` on CUDA (fp32, TF32, bf16, fp16, both layouts), ALEXNET_TRITON_TUNE=first | 240 s |
| sanitizer | compute-sanitizer memcheck on conv2d_relu, lrn_max_pool2d and dropout, forward and backward | 60 s |
| bench | conv2-5, LRN+pool and the training step, bf16 channels_last, with bench.report | 120 s |
| train | 200 steps of `python -m alexnet_triton.train`, built-in data, GPU defaults, caches empty | 90 s |
| syncs | host-device syncs per training step of at.AlexNet (torch.cuda.set_sync_debug_mode("warn")) | 30 s |

A part that fails or runs out of time does not stop the others, and the whole run stays under --total-limit (570
s): a part's limit is cut to the time left. DIR gets report.md (for people), report.json (the same, for programs),
logs/<part>.log (each part's whole output) and what the parts write: tests.xml, bench.json, bench.md, bench.png,
train-steps.csv, train-metrics.jsonl. Without a CUDA GPU every part is skipped, saying so, and the exit code is 0;
with one, the exit code is 0 when every part that ran passed, else 1. docs/gpu-check.md says how to read the report.
"""

import argparse
import contextlib
import csv
import glob
import importlib.util
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PASSED, FAILED, TIMED_OUT, SKIPPED = "passed", "failed", "timed out", "skipped"
NO_GPU = "no CUDA GPU"

# Seconds per part: together 540 s, under the total limit below. The tests compile most (1-7 s per conv config and
# shape), so they get the most; the bench and the training run tune every config, side by side on 16 cores.
DEFAULT_LIMITS = {"tests": 240.0, "sanitizer": 60.0, "bench": 120.0, "train": 90.0, "syncs": 30.0}
PART_NAMES = tuple(DEFAULT_LIMITS)

# The kernels' autotuner reads this (kernels/autotune.py): "first" takes each launch's first pruned config and
# times nothing. The correctness parts (tests, sanitizer, syncs) need every kernel compiled once, not tuned.
TUNE_VARIABLE, TUNE_FIRST = "ALEXNET_TRITON_TUNE", "first"

# On a time limit the part's process group gets SIGINT (pytest then stops cleanly and still writes its JSON and
# XML; the trainer saves), then SIGKILL after this grace.
GRACE_S = 5.0
# The whole run stays under this (--total-limit): a part starts with its limit cut to the time left, less a grace,
# or not at all. 570 s leaves a 10-minute command half a minute for the install and the environment probe.
TOTAL_LIMIT_S = 570.0
MIN_PART_S = 5.0
POLL_S = 0.05
TAIL_LINES, TAIL_CHARS = 40, 4000
RESULT_MARK = "GPU_CHECK_RESULT "  # a workload's last line: this mark, then its numbers as JSON
# tqdm's "epoch 1/10:  52%|█████", redrawn with carriage returns: a tail keeps each bar's latest state only.
PROGRESS_BAR = re.compile(r"(.*?):\s+\d+%\|")

# The benchmarks that carry the project's goals, bf16 channels_last: conv2-5 forward+backward against cuDNN + ReLU,
# the fused LRN + max-pool against our separate ops, eager and torch.compile, and the whole training step against
# the eager twin and torch.compile. Files in this order, so a run cut short by its limit loses the costliest
# compiles (the network's) first.
BENCH_FILES = ("bench/test_ops.py", "bench/test_lrn_pool.py", "bench/test_network.py")
BENCH_SELECTION = (
    "(test_op and forward+backward and (conv2 or conv3 or conv4 or conv5) and (ours or eager))"
    " or (test_lrn_max_pool and forward+backward)"
    " or (test_alexnet and training)"
)
# The goals (bench.report's wording) whose verdicts the summary line gives.
BENCH_GOALS = {
    "conv2-5 vs cuDNN": "conv2d+ReLU bf16 at cuDNN's speed or better on conv2-conv5",
    "training step vs eager and compile": "training step faster than eager and torch.compile",
}
TRAIN_STEPS = 200
SYNC_STEPS, SYNC_WARMUP_STEPS = 5, 2
GRAPH_TIMED_STEPS = 20  # per way (eager, graph): at batch 128 on an H100 well under a second each
SYNC_MESSAGE = "synchronizing CUDA operation"  # what torch.cuda.set_sync_debug_mode("warn") warns


# ---------------------------------------------------------------------------------------------
# Parts and how one runs
# ---------------------------------------------------------------------------------------------


@dataclass
class PartResult:
    name: str
    title: str
    status: str  # passed, failed, timed out, skipped
    reason: str = ""  # why skipped or failed, in a few words
    limit_s: float = 0.0
    limit_cut_from: float | None = None  # the part's own limit, where the total limit cut it
    seconds: float = 0.0
    returncode: int | None = None
    command: str = ""
    log: str = ""  # relative to the report's folder
    tail: str = ""  # the end of the output, for a part that did not pass
    summary: str = ""  # the key numbers in one line
    numbers: dict = field(default_factory=dict)
    details: list[str] = field(default_factory=list)  # markdown lines for the part's own section


@dataclass
class Part:
    """One check: a command run in its own process group with a time limit. prepare() runs before it, watch(elapsed)
    every POLL_S while it runs, summarize(result) after it, even after a time limit, to read what it wrote: fill
    summary, numbers and details, and set status FAILED with a reason when the output shows a failure the exit code
    does not."""

    name: str
    title: str
    command: list[str]
    limit_s: float
    env: dict[str, str] = field(default_factory=dict)
    needs_gpu: bool = True
    unavailable: str | None = None  # a reason to skip it even on a GPU (a tool that is missing)
    prepare: Callable[[], None] | None = None
    watch: Callable[[float], None] | None = None
    summarize: Callable[[PartResult], None] | None = None


def tail_of(path: Path, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last lines of a log; progress bars' carriage returns count as line ends."""
    if not path.is_file():
        return ""
    with open(path, "rb") as file:
        file.seek(max(0, path.stat().st_size - 4 * chars))
        text = file.read().decode("utf-8", "replace")
    kept: list[str] = []
    for line in (line.rstrip() for line in text.replace("\r", "\n").split("\n")):
        if not line.strip():
            continue
        bar = PROGRESS_BAR.match(line)
        if bar and kept and (previous := PROGRESS_BAR.match(kept[-1])) and previous[1] == bar[1]:
            kept[-1] = line  # a progress bar redrawn: its latest state only
        else:
            kept.append(line)
    return "\n".join(kept[-lines:])[-chars:]


def stop_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGINT to the process group this module started, then SIGKILL if it is still there after grace_s."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_part(part: Part, out: Path, gpu: bool, no_gpu_reason: str = NO_GPU, grace_s: float = GRACE_S) -> PartResult:
    """Run one part and return what happened; a part never raises (a bug in its summary fails the part)."""
    log = out / "logs" / f"{part.name}.log"
    result = PartResult(part.name, part.title, SKIPPED, limit_s=part.limit_s, command=shlex.join(part.command))
    if part.needs_gpu and not gpu:
        result.reason = no_gpu_reason
        return result
    if part.unavailable:
        result.reason = part.unavailable
        return result
    log.parent.mkdir(parents=True, exist_ok=True)
    result.log = str(log.relative_to(out))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **part.env}
    start = time.monotonic()
    timed_out = False
    try:
        if part.prepare:
            part.prepare()
        with open(log, "wb") as sink:
            sink.write(f"$ {result.command}\n".encode())
            sink.flush()
            process = subprocess.Popen(
                part.command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                while process.poll() is None:
                    elapsed = time.monotonic() - start
                    if elapsed > part.limit_s:
                        timed_out = True
                        stop_group(process, grace_s)
                        break
                    if part.watch:
                        part.watch(elapsed)
                    time.sleep(POLL_S)
            except BaseException:  # Ctrl-C of this program: take the part's processes down with it
                stop_group(process, 0.0)
                raise
            with contextlib.suppress(ProcessLookupError):  # what it left behind would hold on to the GPU
                os.killpg(process.pid, signal.SIGKILL)
        result.returncode = process.returncode
        if timed_out:
            result.status, result.reason = TIMED_OUT, f"stopped at its {part.limit_s:.0f} s limit"
        elif process.returncode == 0:
            result.status = PASSED
        else:
            result.status, result.reason = FAILED, f"exit code {process.returncode}"
    except OSError as error:  # the command could not be started
        result.status, result.reason = FAILED, f"could not run: {error}"
    result.seconds = time.monotonic() - start
    if part.summarize:
        try:
            part.summarize(result)
        except Exception as error:  # noqa: BLE001 - a report with the error beats no report
            result.status = FAILED if result.status == PASSED else result.status
            result.reason = result.reason or f"its results could not be read: {error!r}"
            result.details.append(f"Reading its results raised `{error!r}`.")
    if result.status != PASSED:
        result.tail = tail_of(log)
    return result


def run_parts(
    parts: list[Part],
    out: Path,
    gpu: bool,
    no_gpu_reason: str = NO_GPU,
    grace_s: float = GRACE_S,
    total_limit_s: float | None = None,
) -> list[PartResult]:
    """Each part in turn; one that fails or times out does not stop the rest. With total_limit_s, each part's limit
    is cut to the time left (less the grace a stop takes), and a part with under MIN_PART_S left does not start.
    Ctrl-C stops the part running and leaves the rest not run, and the report still gets written."""
    results = []
    deadline = None if total_limit_s is None else time.monotonic() + total_limit_s
    for index, part in enumerate(parts):
        own_limit = part.limit_s
        if deadline is not None and (not part.needs_gpu or gpu) and not part.unavailable:
            left = deadline - time.monotonic() - grace_s
            if left < MIN_PART_S:  # not run, and so not passed
                reason = f"not run: the total limit ({total_limit_s:.0f} s) was spent"
                results.append(PartResult(part.name, part.title, TIMED_OUT, reason, own_limit))
                continue
            part = replace(part, limit_s=min(own_limit, left))
        print(f"[gpu_check] {part.name}: {part.title} (limit {part.limit_s:.0f} s)", file=sys.stderr, flush=True)
        try:
            result = run_part(part, out, gpu, no_gpu_reason, grace_s)
        except KeyboardInterrupt:
            results.append(PartResult(part.name, part.title, FAILED, "interrupted (Ctrl-C)", part.limit_s))
            for rest in parts[index + 1 :]:
                results.append(PartResult(rest.name, rest.title, SKIPPED, "not run: interrupted", rest.limit_s))
            break
        if part.limit_s < own_limit:
            result.limit_cut_from = own_limit
            if result.status == TIMED_OUT:
                result.reason += f" (cut from {own_limit:g} s to fit the total limit)"
        results.append(result)
        said = f"{result.status}" + (f": {result.reason}" if result.reason else "")
        said += f" ({result.seconds:.1f} s)" + (f"; {result.summary}" if result.summary else "")
        print(f"[gpu_check] {part.name}: {said}", file=sys.stderr, flush=True)
    return results


def exit_code(results: list[PartResult]) -> int:
    """0 when every part that ran passed (skipped parts did not run), else 1."""
    return 0 if all(result.status in (PASSED, SKIPPED) for result in results) else 1


# ---------------------------------------------------------------------------------------------
# Reading what the parts wrote
# ---------------------------------------------------------------------------------------------


def workload_result(log: Path) -> dict | None:
    """The numbers a workload printed last (RESULT_MARK, then JSON), or None."""
    if not log.is_file():
        return None
    found = None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_MARK):
            found = json.loads(line[len(RESULT_MARK) :])
    return found


def junit_counts(path: Path) -> dict:
    """Counts and the failing and skipped tests of a pytest --junitxml file (one or several testsuites)."""
    root = ElementTree.parse(path).getroot()
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "time_s": 0.0}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            counts[key] += int(suite.get(key, 0))
        counts["time_s"] += float(suite.get("time", 0.0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failing, skips = [], Counter()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for kind in ("failure", "error"):
            element = case.find(kind)
            if element is not None:
                first_line = (element.get("message") or "").strip().splitlines()[:1]
                failing.append(f"{name} ({kind}: {first_line[0][:160] if first_line else '?'})")
        skipped = case.find("skipped")
        if skipped is not None:
            skips[(skipped.get("message") or "").strip()[:160]] += 1
    counts["failing"] = failing
    counts["skip_reasons"] = dict(skips.most_common())
    return counts


def sanitizer_errors(log: Path) -> tuple[int | None, list[str]]:
    """compute-sanitizer's ERROR SUMMARY count (None when it printed none) and its report lines."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    counts = re.findall(r"ERROR SUMMARY: (\d+) errors?", text)
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("=========")
        and line.strip("= ")
        and "COMPUTE-SANITIZER" not in line
        and "ERROR SUMMARY" not in line
    ]
    return (int(counts[-1]) if counts else None), lines


def read_steps(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("step", "").isdigit()]


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_numbers(
    steps: list[dict],
    metrics: list[dict],
    step_seen: dict[int, float],
    loop_start: float | None,
    wall_s: float,
    wanted_steps: int,
) -> dict:
    """Wall time, time to the first step and its compile + tuning share, and images/s of a training run, from its
    steps.csv rows, its metrics.jsonl rows (one per finished epoch), when each step's row appeared (seconds since
    the process started) and when the training loop started (the "training epoch" line)."""
    numbers: dict = {"steps": max((int(row["step"]) for row in steps), default=0), "wanted_steps": wanted_steps}
    numbers["wall_s"] = round(wall_s, 2)
    first = step_seen.get(1)
    if first is not None:
        numbers["to_first_step_s"] = round(first, 2)  # imports, data, loaders, compilation and tuning
        if loop_start is not None:
            numbers["setup_s"] = round(loop_start, 2)
            numbers["first_step_s"] = round(first - loop_start, 2)
    if numbers["steps"] > 1 and first is not None and step_seen.get(numbers["steps"]) is not None:
        numbers["after_first_step_s"] = round(step_seen[numbers["steps"]] - first, 2)
    per_epoch = Counter(int(row["epoch"]) for row in steps)
    epochs = []
    for row in metrics:
        count = per_epoch.get(int(row["epoch"]))
        epochs.append(
            {
                "epoch": row["epoch"],
                "images_per_s": round(row["images_per_s"], 1),
                "seconds": round(row["seconds"], 2),
                "steps": count,
                "step_s": round(row["seconds"] / count, 4) if count else None,
                "val_top1_error": round(row["val_top1_error"], 4) if "val_top1_error" in row else None,
            }
        )
    numbers["epochs"] = epochs
    later = [epoch for epoch in epochs[1:] if epoch["step_s"]]  # the first epoch holds the compilation
    if later:
        numbers["steady_images_per_s"] = round(statistics.median(e["images_per_s"] for e in later), 1)
        numbers["steady_step_s"] = round(statistics.median(e["step_s"] for e in later), 4)
        if "first_step_s" in numbers:
            numbers["compile_and_tuning_s"] = round(numbers["first_step_s"] - numbers["steady_step_s"], 2)
    elif epochs:
        numbers["first_epoch_images_per_s"] = epochs[0]["images_per_s"]
    return numbers


def speedup_rows(rows: dict) -> list[str]:
    """A compact table of the benchmark rows: ours' time and each comparison's speed-up."""
    from bench import report

    lines = [
        "| what | layer | direction | ours | vs eager | vs compile | vs separate |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key in sorted(rows, key=lambda k: (k[0] != "op", k[0], k[2], k[3])):
        _, op, layer, direction = key[:4]
        results = rows[key]
        ours = results.get("ours")
        shown = report.fmt_time(ours["median_s"]) if ours else "—"
        if ours and "images_per_s" in ours:
            shown += f" ({ours['images_per_s']:.0f} img/s)"
        ratios = [report.fmt_ratio(report.speedup(results, other)) for other in ("eager", "compile", "separate")]
        lines.append(f"| {op} | {layer} | {direction} | {shown} | {' | '.join(ratios)} |")
    return lines


# ---------------------------------------------------------------------------------------------
# The five parts
# ---------------------------------------------------------------------------------------------


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH, else in a CUDA toolkit under /usr/local."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    candidates = [
        *sorted(glob.glob("/usr/local/cuda*/bin/compute-sanitizer"), reverse=True),
        *sorted(glob.glob("/usr/local/cuda*/compute-sanitizer/compute-sanitizer"), reverse=True),
    ]
    return next((path for path in candidates if os.access(path, os.X_OK)), None)


def workload_command(python: str, function: str) -> list[str]:
    return [python, "-c", f"from bench.gpu_check import {function}; {function}()"]


def tests_part(out: Path, python: str, limit_s: float, workers: int) -> Part:
    xml = out / "tests.xml"
    command = [python, "-m", "pytest", "tests/", "-q", "-rfE", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    if workers > 1:
        command += ["-n", str(workers)]

    def prepare():
        xml.unlink(missing_ok=True)

    def summarize(result: PartResult):
        if not xml.is_file():
            result.summary = "no test report (tests.xml) was written"
            if result.status == PASSED:
                result.status, result.reason = FAILED, "pytest wrote no tests.xml"
            return
        counts = junit_counts(xml)
        result.numbers = counts
        result.summary = (
            f"{counts['passed']} passed, {counts['failures']} failed, {counts['errors']} errors, "
            f"{counts['skipped']} skipped in {counts['time_s']:.0f} s"
            + (f" ({workers} workers)" if workers > 1 else " (one process)")
        )
        if counts["tests"] == 0 and result.status == PASSED:
            result.status, result.reason = FAILED, "no tests ran"
        if counts["failing"]:
            result.details += ["Failing:", "", *(f"- `{name}`" for name in counts["failing"][:30]), ""]
            if len(counts["failing"]) > 30:
                result.details += [f"- ... and {len(counts['failing']) - 30} more (see tests.xml)", ""]
        if counts["skip_reasons"]:
            result.details += ["Skipped, by reason:", ""]
            result.details += [f"- {n} x {reason or '(no reason)'}" for reason, n in counts["skip_reasons"].items()]
            result.details.append("")

    return Part(
        "tests",
        "the test suite on CUDA (pytest tests/)",
        command,
        limit_s,
        env={TUNE_VARIABLE: TUNE_FIRST},
        prepare=prepare,
        summarize=summarize,
    )


def sanitizer_part(out: Path, python: str, limit_s: float) -> Part:
    tool = find_sanitizer()
    flags = "--tool memcheck --leak-check no --print-limit 100 --error-exitcode 1".split()
    command = [tool or "compute-sanitizer", *flags, *workload_command(python, "sanitizer_workload")]

    def summarize(result: PartResult):
        errors, lines = sanitizer_errors(out / result.log)
        if any("Device not supported" in line for line in lines):  # seen on gVisor machines (KINDS.md)
            result.status, result.reason = SKIPPED, "compute-sanitizer does not support this device here"
            result.details += ["compute-sanitizer said:", "", "```", *lines[:10], "```", ""]
            return
        ran = workload_result(out / result.log) or {}
        result.numbers = {"errors": errors, "ran": ran.get("ran", [])}
        if errors is None:
            result.summary = "no ERROR SUMMARY from compute-sanitizer"
            if result.status == PASSED:
                result.status, result.reason = FAILED, "compute-sanitizer printed no ERROR SUMMARY"
        else:
            result.summary = f"{errors} memcheck errors in {len(ran.get('ran', []))} calls"
            if errors and result.status == PASSED:
                result.status = FAILED
            if errors:
                result.reason = f"{errors} memcheck errors"
        if ran.get("ran"):
            result.details += ["Ran (forward and backward):", "", *(f"- {call}" for call in ran["ran"]), ""]
        if lines:
            result.details += ["compute-sanitizer said:", "", "```", *lines[:40], "```", ""]

    return Part(
        "sanitizer",
        "compute-sanitizer memcheck on the fused ops",
        command,
        limit_s,
        env={TUNE_VARIABLE: TUNE_FIRST, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
        unavailable=None if tool else "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)",
        summarize=summarize,
    )


def bench_part(out: Path, python: str, limit_s: float, seconds: float, selection: str) -> Part:
    results, report_stem = out / "bench.json", out / "bench"
    flags = "--benchmark-only -q -p no:cacheprovider --bench-dtypes bfloat16 --bench-formats channels_last".split()
    selected = [*BENCH_FILES, "--bench-seconds", f"{seconds:g}", "-k", selection, f"--benchmark-json={results}"]
    command = [python, "-m", "pytest", *flags, *selected]

    def prepare():
        results.unlink(missing_ok=True)

    def summarize(result: PartResult):
        from bench import report

        if not results.is_file():  # pytest-benchmark writes none when nothing was timed
            result.summary = "no bench.json was written"
            if result.status == PASSED:
                result.status, result.reason = FAILED, "no benchmark was timed"
            return
        _, rows = report.load([results])
        timed = sum(len(implementations) for implementations in rows.values())
        result.numbers = {"timed": timed, "json": results.name}
        if not rows:
            result.summary = "nothing was timed"
            if result.status == PASSED:
                result.status, result.reason = FAILED, "no benchmark was timed"
            return
        printed = io.StringIO()  # python -m bench.report's own path, its printout kept out of ours
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            report.main([str(results), "--out", str(report_stem)])
        result.numbers["report"] = report_stem.with_suffix(".md").name
        goals = report.goals(rows)[2:]  # the table's rows, without its header
        verdicts = {cells[1].strip(): cells[2].strip() for cells in (line.split("|") for line in goals)}
        result.numbers["goals"] = verdicts
        training = {
            impl: round(info["images_per_s"], 1)
            for key, row in rows.items()
            if key[0] == "network" and key[3] == "training"
            for impl, info in row.items()
        }
        result.numbers["training_images_per_s"] = training
        said = [f"{timed} timed"]
        said += [f"{short}: {verdicts[goal]}" for short, goal in BENCH_GOALS.items() if goal in verdicts]
        if training:
            said.append("training img/s " + ", ".join(f"{impl} {rate:.0f}" for impl, rate in training.items()))
        result.numbers["gpu_timing"] = report.timing_methods(rows)  # how many results each method timed
        result.summary = "; ".join(said)
        result.details += [*speedup_rows(rows), "", *report.goals(rows), "", *report.timing_table(rows), ""]

    return Part(
        "bench",
        "benchmarks: conv2-5, LRN+pool, training step (bf16, channels_last)",
        command,
        limit_s,
        prepare=prepare,
        summarize=summarize,
    )


def train_part(out: Path, python: str, limit_s: float, steps: int, scratch: Path) -> Part:
    # Triton's compiled kernels and the kernels' own tuning results (kernels/autotune.py) start empty.
    run_dir, cache, tuning = scratch / "train" / "run", scratch / "train-triton-cache", scratch / "train-tuning"
    options = ["--max-steps", str(steps), "--output-dir", str(run_dir.parent), "--name", run_dir.name]
    command = [python, "-m", "alexnet_triton.train", *options]
    step_seen: dict[int, float] = {}
    loop_start: list[float] = []

    def prepare():
        shutil.rmtree(run_dir, ignore_errors=True)  # steps.csv appends: a stale run would mix in
        for folder in (cache, tuning):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)

    def watch(elapsed: float):
        """When the loop started (its "training epoch" line) and when each step's row appeared in steps.csv."""
        if not loop_start:
            log = out / "logs" / "train.log"
            if log.is_file() and "\ntraining epoch" in log.read_text(errors="replace"):
                loop_start.append(elapsed)
        for row in read_steps(run_dir / "steps.csv")[len(step_seen) :]:
            step_seen.setdefault(int(row["step"]), elapsed)

    def summarize(result: PartResult):
        watch(result.seconds)  # rows written since the last look
        for name, kept in (("steps.csv", "train-steps.csv"), ("metrics.jsonl", "train-metrics.jsonl")):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, out / kept)
        numbers = training_numbers(
            read_steps(run_dir / "steps.csv"),
            read_metrics(run_dir / "metrics.jsonl"),
            step_seen,
            loop_start[0] if loop_start else None,
            result.seconds,
            steps,
        )
        result.numbers = numbers
        parts = [f"{numbers['steps']}/{steps} steps in {numbers['wall_s']:.0f} s"]
        if "first_step_s" in numbers:
            parts.append(f"first step {numbers['first_step_s']:.1f} s")
        if "compile_and_tuning_s" in numbers:
            parts.append(f"compile+tuning ~{numbers['compile_and_tuning_s']:.1f} s")
        if "steady_images_per_s" in numbers:
            parts.append(f"{numbers['steady_images_per_s']:.0f} images/s after epoch 1")
        elif "first_epoch_images_per_s" in numbers:
            parts.append(f"{numbers['first_epoch_images_per_s']:.0f} images/s in epoch 1 (compilation included)")
        result.summary = ", ".join(parts)
        if result.status == PASSED and numbers["steps"] < steps:
            result.status, result.reason = FAILED, f"stopped at step {numbers['steps']} of {steps}"
        if numbers["epochs"]:
            result.details += [
                "| epoch | steps | seconds | per step | images/s | val top-1 error |",
                "| ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            result.details += [
                f"| {e['epoch']} | {e['steps']} | {e['seconds']} | {e['step_s']} | {e['images_per_s']} "
                f"| {e['val_top1_error']} |"
                for e in numbers["epochs"]
            ]
            result.details.append("")
        result.details.append(
            "First step: from the trainer's `training epoch 1` line to step 1's row in steps.csv (the loader's "
            "first batch, Triton's compilation and autotuning). Compile + tuning: that less a steady step. Triton's "
            "cache and the tuning results started empty, so these are what a first run on a fresh machine pays."
        )
        result.details.append("")

    return Part(
        "train",
        f"{steps} training steps (python -m alexnet_triton.train, built-in data)",
        command,
        limit_s,
        env={"TRITON_CACHE_DIR": str(cache), "ALEXNET_TRITON_CACHE": str(tuning)},
        prepare=prepare,
        watch=watch,
        summarize=summarize,
    )


def syncs_part(out: Path, python: str, limit_s: float) -> Part:
    def summarize(result: PartResult):
        found = workload_result(out / result.log)
        if found is None:
            result.summary = "the workload printed no result"
            return
        result.numbers = found
        steady = found["per_step"][found["warmup_steps"] :]
        result.summary = (
            f"{max(steady, default=0)} syncs per step after {found['warmup_steps']} warm-up steps "
            f"(warm-up: {found['per_step'][: found['warmup_steps']]})"
        )
        if any(steady) and result.status == PASSED:
            result.status, result.reason = FAILED, f"{sum(steady)} syncs in {len(steady)} steps after warm-up"
        if "step_ms" in found:
            times = found["step_ms"]
            result.summary += (
                f"; a step takes {times['eager']} ms eagerly, {times['graph']} ms as a CUDA graph "
                f"({'captured' if found['graph_captured'] else 'capture FAILED: eager'}), "
                f"{max(found['graph_syncs_per_step'], default=0)} syncs per replay"
            )
            if result.status == PASSED and (not found["graph_captured"] or any(found["graph_syncs_per_step"])):
                result.status, result.reason = FAILED, "the training step's CUDA graph did not capture, or synced"
        result.details += [
            f"{found['what']}. Syncs per step: {found['per_step']} (the first {found['warmup_steps']} compile and "
            "tune, which synchronizes by design).",
            "",
        ]
        if found["steady_locations"]:
            result.details += ["Where, after warm-up:", ""]
            result.details += [f"- {n} x `{where}`" for where, n in found["steady_locations"].items()]
            result.details.append("")

    return Part(
        "syncs",
        "host-device syncs per training step (set_sync_debug_mode)",
        workload_command(python, "syncs_workload"),
        limit_s,
        env={TUNE_VARIABLE: TUNE_FIRST},
        summarize=summarize,
    )


def build_parts(names, out: Path, python: str, limits: dict[str, float], options, scratch: Path) -> list[Part]:
    makers = {
        "tests": lambda: tests_part(out, python, limits["tests"], options.tests_workers),
        "sanitizer": lambda: sanitizer_part(out, python, limits["sanitizer"]),
        "bench": lambda: bench_part(out, python, limits["bench"], options.bench_seconds, options.bench_select),
        "train": lambda: train_part(out, python, limits["train"], options.train_steps, scratch),
        "syncs": lambda: syncs_part(out, python, limits["syncs"]),
    }
    return [makers[name]() for name in names]


# ---------------------------------------------------------------------------------------------
# Workloads: run as `python -c "from bench.gpu_check import ...; ...()"` inside a part
# ---------------------------------------------------------------------------------------------


def where(filename: str) -> str:
    """A file's path relative to the repository when it is in it."""
    path = Path(filename).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else filename


def print_result(numbers: dict) -> None:
    print(RESULT_MARK + json.dumps(numbers), flush=True)


def sanitizer_workload(device: str = "cuda") -> None:
    """Forward and backward of conv2d_relu, lrn_max_pool2d and dropout: at an AlexNet tower's conv2 / layer 1 shapes
    in bf16 channels_last (batch 2) and at odd shapes in fp32, so that edge tiles and partial blocks run."""
    import torch

    import alexnet_triton as at
    from alexnet_triton.model import OVERLAPPING_POOL, PAPER_LRN

    kernel, stride = OVERLAPPING_POOL
    ran = []

    def tensor(shape, dtype, channels_last=False, grad=True):
        value = torch.randn(shape, device=device, dtype=dtype)
        if channels_last:
            value = value.contiguous(memory_format=torch.channels_last)
        return value.requires_grad_(grad)

    def forward_backward(name, function, *inputs):
        out = function(*inputs)
        out.backward(torch.randn_like(out))
        if not all(bool(torch.isfinite(x.grad).all()) for x in inputs if x.requires_grad):
            raise FloatingPointError(f"{name}: a gradient is not finite")
        ran.append(f"{name}: {' '.join(str(tuple(x.shape)) for x in inputs)} {inputs[0].dtype}")

    for dtype, channels_last, (x, w, padding) in (
        (torch.bfloat16, True, ((2, 48, 27, 27), (128, 48, 5, 5), 2)),
        (torch.float32, False, ((3, 5, 19, 19), (7, 5, 3, 3), 1)),
    ):
        layout = "channels_last" if channels_last else "contiguous"
        inputs = (tensor(x, dtype, channels_last), tensor(w, dtype, channels_last), tensor(w[:1], dtype))
        forward_backward(f"conv2d_relu {layout}", lambda a, b, c, p=padding: at.conv2d_relu(a, b, c, 1, p), *inputs)
    for dtype, channels_last, shape in (
        (torch.bfloat16, True, (2, 48, 55, 55)),
        (torch.float32, False, (3, 7, 17, 17)),
    ):
        layout = "channels_last" if channels_last else "contiguous"
        forward_backward(
            f"lrn_max_pool2d {layout}",
            lambda a: at.lrn_max_pool2d(
                a, PAPER_LRN["size"], kernel, stride, alpha=PAPER_LRN["alpha"], beta=PAPER_LRN["beta"], k=PAPER_LRN["k"]
            ),
            tensor(shape, dtype, channels_last),
        )
    for dtype, shape in ((torch.bfloat16, (2, 2048)), (torch.float32, (3, 1001))):
        forward_backward("dropout", lambda a: at.dropout(a, 0.5, True), tensor(shape, dtype))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    print_result({"ran": ran})


def syncs_workload(
    device: str = "cuda",
    batch: int = 128,
    image_size: int = 227,
    steps: int = SYNC_STEPS,
    warmup: int = SYNC_WARMUP_STEPS,
) -> None:
    """Count the warnings torch.cuda.set_sync_debug_mode("warn") gives in each training step of at.AlexNet (bf16
    autocast, channels_last, SGD with momentum and weight decay: the benchmarks' step), by where they came from."""
    import warnings

    import torch

    import alexnet_triton as at
    from bench.workloads import CLASSES, image_batches, mixed_precision, training_step

    on_cuda = device.startswith("cuda")
    model = at.AlexNet(CLASSES, image_size=image_size, init="kaiming").to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    autocast = mixed_precision(torch.device(device), torch.bfloat16)
    batches = image_batches(2, batch, image_size, device, channels_last=True)
    per_step, locations = [], Counter()
    for step in range(warmup + steps):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if on_cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                training_step(model, optimizer, autocast, *batches[step % len(batches)])
            finally:
                if on_cuda:
                    torch.cuda.set_sync_debug_mode("default")
        if on_cuda:
            torch.cuda.synchronize()
        syncs = [warning for warning in caught if SYNC_MESSAGE in str(warning.message)]
        per_step.append(len(syncs))
        if step >= warmup:
            locations.update(f"{where(w.filename)}:{w.lineno}" for w in syncs)
    what = f"at.AlexNet, batch {batch} at {image_size}x{image_size}, bf16 autocast, channels_last, on {device}"
    found = {
        "what": what,
        "per_step": per_step,
        "warmup_steps": warmup,
        "steady_locations": dict(locations.most_common()),
    }
    if on_cuda:
        found.update(graph_step_timing(model, optimizer, autocast, batches, device))
    print_result(found)


def graph_step_timing(model, optimizer, autocast, batches, device: str, steps: int = GRAPH_TIMED_STEPS) -> dict:
    """The same training step eagerly and replayed as one CUDA graph (step_graph.GraphedStep, as the trainer's
    --cuda-graphs runs it): milliseconds per step over `steps` steps each (CUDA events around them all, so the host's
    queuing counts where the GPU waits for it), and the syncs each replayed step makes."""
    import warnings

    import torch

    from alexnet_triton import step_graph
    from bench.workloads import training_step

    def step(images, labels):
        training_step(model, optimizer, autocast, images, labels)
        return (images,)  # a graph's outputs: nothing the timing reads

    def milliseconds(run) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for index in range(steps):
            run(*batches[index % len(batches)])
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / steps

    graphed = step_graph.GraphedStep(step, step_graph.CudaGraphs(torch.device(device)), name="training step", warmup=3,
                                     prepare=lambda: optimizer.zero_grad(set_to_none=True))  # fmt: skip
    for index in range(5):  # warm-up (3), the capture, a replay
        graphed(*batches[index % len(batches)])
    syncs = []
    for index in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                graphed(*batches[index % len(batches)])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs.append(sum(SYNC_MESSAGE in str(warning.message) for warning in caught))
    torch.cuda.synchronize()
    return {
        "step_ms": {"eager": round(milliseconds(step), 3), "graph": round(milliseconds(graphed), 3)},
        "graph_captured": graphed.graph is not None and not graphed.failed,
        "graph_syncs_per_step": syncs,
    }


def probe() -> None:
    """Versions and the device, printed as a workload's result (run in a fresh process: the parent stays off CUDA)."""
    info = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "xdist": importlib.util.find_spec("xdist") is not None,
    }
    import torch

    info.update(torch=torch.__version__, cuda_runtime=torch.version.cuda, cuda_available=torch.cuda.is_available())
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as error:
        info["triton"] = f"not importable ({error})"
    if info["cuda_available"]:
        properties = torch.cuda.get_device_properties(0)
        info.update(
            device=properties.name,
            device_count=torch.cuda.device_count(),
            capability=f"{properties.major}.{properties.minor}",
            multiprocessors=properties.multi_processor_count,
            memory_gib=round(properties.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
    print_result(info)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def environment(python: str, out: Path, cpu_only: bool) -> dict:
    """What probe() says in a fresh process, and the driver from nvidia-smi where there is one."""
    log = out / "logs" / "probe.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu_only else {})}
    try:
        done = subprocess.run(
            workload_command(python, "probe"), cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        log.write_text(done.stdout + done.stderr)
        info = workload_result(log) or {"probe_error": f"exit code {done.returncode}: {tail_of(log, 5)}"}
    except subprocess.TimeoutExpired:
        info = {"probe_error": "the probe ran past 120 s"}
    smi = shutil.which("nvidia-smi")
    if smi and not cpu_only:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or None
    sources = (path.read_text(errors="replace") for path in sorted((REPO / "kernels").glob("*.py")))
    info["tune_first_honoured"] = any(TUNE_VARIABLE in source for source in sources)
    return info


def status_text(result: dict) -> str:
    return result["status"] + (f": {result['reason']}" if result.get("reason") else "")


def render_markdown(report: dict) -> str:
    """report.md from the report.json dict."""
    env = report["environment"]
    device = env.get("device") or f"none ({report['no_gpu_reason']})"
    versions = ", ".join(
        f"{name} {env[key]}"
        for name, key in (
            ("Python", "python"),
            ("torch", "torch"),
            ("triton", "triton"),
            ("CUDA", "cuda_runtime"),
            ("cuDNN", "cudnn"),
            ("driver", "driver"),
        )
        if env.get(key)
    )
    lines = [
        "# GPU check",
        "",
        f"Device: **{device}**. {versions}. {env.get('cpus', '?')} CPUs. {report['started']} to {report['finished']}, "
        f"{report['wall_s']:.0f} s in all. Exit code {report['exit_code']}.",
        "",
        f"`{report['command']}`",
        "",
    ]
    if not report["gpu"]:
        lines += [
            f"> **No GPU part ran: {report['no_gpu_reason']}.** This run proves the program works, nothing "
            "about the kernels.",
            "",
        ]
    if env.get("probe_error"):
        lines += [f"> The environment probe failed: {env['probe_error']}", ""]
    if report["gpu"] and not env.get("tune_first_honoured", True):
        lines += [
            f"> {TUNE_VARIABLE}={TUNE_FIRST} was set for the correctness parts, but no file in kernels/ reads it: "
            "they tuned every config.",
            "",
        ]
    lines += ["| part | status | seconds (limit) | key numbers |", "| --- | --- | ---: | --- |"]
    for result in report["parts"]:
        limit = f"{result['limit_s']:.0f}" + (f", cut from {cut:g}" if (cut := result.get("limit_cut_from")) else "")
        seconds = f"{result['seconds']:.1f} ({limit})" if result["log"] else "—"
        lines.append(f"| {result['name']} | {status_text(result)} | {seconds} | {result['summary'] or '—'} |")
    lines.append("")
    for result in report["parts"]:
        lines += [f"## {result['name']}: {result['title']}", "", f"Status: **{status_text(result)}**."]
        if result["log"]:
            code = "—" if result["returncode"] is None else result["returncode"]
            lines += [
                f"{result['seconds']:.1f} s of its {result['limit_s']:.0f} s; exit code {code}; "
                f"output in `{result['log']}`.",
                "",
                f"`{result['command']}`",
            ]
        lines.append("")
        lines += result["details"]
        if result["tail"]:
            lines += ["The end of its output:", "", "```", result["tail"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(report))


# ---------------------------------------------------------------------------------------------
# The program
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(f"bench/results/gpu-check-{today}"),
        help="folder for report.md, report.json, logs/ and the parts' files (default: %(default)s)",
    )
    parser.add_argument("--parts", default=",".join(PART_NAMES), help=f"comma-separated, from {', '.join(PART_NAMES)}")
    for name, seconds in DEFAULT_LIMITS.items():
        parser.add_argument(
            f"--{name}-limit",
            type=float,
            default=seconds,
            metavar="S",
            help=f"time limit of the {name} part in seconds (default %(default)g)",
        )
    parser.add_argument(
        "--tests-workers",
        type=int,
        default=None,
        help="pytest-xdist processes for the tests (default: 8 if xdist is installed, else 1)",
    )
    parser.add_argument("--bench-seconds", type=float, default=0.5, help="timing budget per benchmark (%(default)g)")
    parser.add_argument("--bench-select", default=BENCH_SELECTION, help="pytest -k expression of the benchmarks")
    parser.add_argument("--train-steps", type=int, default=TRAIN_STEPS, help="training steps (%(default)s)")
    parser.add_argument(
        "--total-limit",
        type=float,
        default=TOTAL_LIMIT_S,
        metavar="S",
        help="the whole run's limit: later parts' limits are cut to fit (default %(default)g)",
    )
    parser.add_argument("--cpu-only", action="store_true", help="run as if no CUDA GPU were present")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in names if name not in PART_NAMES]
    if unknown or not names:
        parser.error(f"--parts takes {', '.join(PART_NAMES)}; got {args.parts!r}")
    args.part_names = [name for name in PART_NAMES if name in names]  # always in the budget's order
    for name in PART_NAMES:
        if getattr(args, f"{name}_limit") <= 0:
            parser.error(f"--{name}-limit must be positive")
    if args.tests_workers is None:
        args.tests_workers = min(8, os.cpu_count() or 1) if importlib.util.find_spec("xdist") else 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    started, clock = datetime.now(timezone.utc), time.monotonic()
    info = environment(python, out, args.cpu_only)
    gpu = bool(info.get("cuda_available")) and not args.cpu_only
    no_gpu_reason = NO_GPU + (" (--cpu-only)" if args.cpu_only else "")
    limits = {name: getattr(args, f"{name}_limit") for name in PART_NAMES}
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    try:
        parts = build_parts(args.part_names, out, python, limits, args, scratch)
        results = run_parts(parts, out, gpu, no_gpu_reason, total_limit_s=args.total_limit - (time.monotonic() - clock))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "command": shlex.join(["python", "-m", "bench.gpu_check", *(sys.argv[1:] if argv is None else argv)]),
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "wall_s": round(time.monotonic() - clock, 1),
        "gpu": gpu,
        "no_gpu_reason": None if gpu else no_gpu_reason,
        "environment": info,
        "limits_s": {name: limits[name] for name in args.part_names},
        "total_limit_s": args.total_limit,
        # A probe that failed leaves the GPU parts skipped for a reason that is not "no GPU": never a pass.
        "exit_code": 1 if info.get("probe_error") else exit_code(results),
        "parts": [asdict(result) for result in results],
    }
    write_report(out, report)
    print(render_markdown(report).split("\n## ")[0])  # the header and the table of parts
    print(f"[gpu_check] wrote {out / 'report.md'} and {out / 'report.json'}", file=sys.stderr)
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
