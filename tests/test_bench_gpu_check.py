"""bench/gpu_check.py: the one command for a lent GPU. Here, without one: the whole program end to end (every part
skipped, saying why), the part runner with parts that fail, time out and pass, what each part reads from its
output, the report, and the workloads the GPU parts run, on the CPU's reference backend."""

import json
import subprocess
import sys
import time

import pytest
from helpers import reference_backend_env

from bench import gpu_check
from bench.gpu_check import FAILED, PASSED, SKIPPED, TIMED_OUT, Part, PartResult


def python_part(name: str, code: str, limit_s: float = 30.0, **options) -> Part:
    return Part(name, f"fake part {name}", [sys.executable, "-c", code], limit_s, needs_gpu=False, **options)


# ---------------------------------------------------------------------------------------------
# The whole program, here
# ---------------------------------------------------------------------------------------------


def test_without_a_gpu_every_part_is_skipped_and_the_report_says_why(tmp_path):
    out = tmp_path / "check"
    command = [sys.executable, "-m", "bench.gpu_check", "--out", str(out), "--cpu-only"]
    done = subprocess.run(command, cwd=gpu_check.REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((out / "report.json").read_text())
    assert report["gpu"] is False and report["exit_code"] == 0
    assert [part["name"] for part in report["parts"]] == list(gpu_check.PART_NAMES)
    for part in report["parts"]:
        assert part["status"] == SKIPPED and "no CUDA GPU" in part["reason"], part
    assert report["environment"]["torch"] and report["environment"]["python"]  # the probe ran

    text = (out / "report.md").read_text()
    assert "No GPU part ran" in text
    for name in gpu_check.PART_NAMES:
        assert f"| {name} | skipped: no CUDA GPU (--cpu-only) |" in text
    assert "| tests | skipped" in done.stdout  # the table is printed too


def test_parts_and_limits_on_the_command_line():
    args = gpu_check.parse_args(["--parts", "syncs,tests", "--tests-limit", "12", "--tests-workers", "1"])
    assert args.part_names == ["tests", "syncs"]  # the budget's order, whatever order they were named in
    assert args.tests_limit == 12 and args.bench_limit == gpu_check.DEFAULT_LIMITS["bench"]
    assert sum(gpu_check.DEFAULT_LIMITS.values()) <= 540  # a minute of a 10-minute command left over
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--parts", "tests,nonsense"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--train-limit", "0"])


# ---------------------------------------------------------------------------------------------
# The part runner
# ---------------------------------------------------------------------------------------------


def test_a_failing_and_a_timed_out_part_do_not_stop_the_others(tmp_path):
    parts = [
        python_part("fails", "import sys; print('something broke'); sys.exit(3)"),
        python_part("hangs", "import time; print('waiting', flush=True); time.sleep(60)", limit_s=1.0),
        python_part("passes", "print('all good')"),
    ]
    start = time.monotonic()
    results = gpu_check.run_parts(parts, tmp_path, gpu=False, grace_s=2.0)
    assert time.monotonic() - start < 20  # the hang was cut at its limit

    fails, hangs, passes = results
    assert (fails.status, fails.returncode, fails.reason) == (FAILED, 3, "exit code 3")
    assert "something broke" in fails.tail
    assert hangs.status == TIMED_OUT and "1 s limit" in hangs.reason and "waiting" in hangs.tail
    assert 1.0 <= hangs.seconds < 10
    assert passes.status == PASSED and passes.returncode == 0 and passes.tail == ""
    assert "all good" in (tmp_path / passes.log).read_text()
    assert gpu_check.exit_code(results) == 1
    assert gpu_check.exit_code([passes]) == 0


def test_a_part_at_its_limit_gets_sigint_first_so_it_can_stop_cleanly(tmp_path):
    # As pytest does on SIGINT: finish up (write its JSON) and exit.
    code = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    print('wrote what I had', flush=True); sys.exit(2)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    result = gpu_check.run_part(python_part("clean", code, limit_s=1.5), tmp_path, gpu=False, grace_s=5.0)
    assert result.status == TIMED_OUT and result.returncode == 2
    assert "wrote what I had" in result.tail


def test_the_total_limit_cuts_later_parts_and_fails_the_ones_it_leaves_no_time(tmp_path):
    parts = [
        python_part("first", "import time; time.sleep(0.2)", limit_s=2.0),
        python_part("cut", "import time; time.sleep(30)", limit_s=30.0),
        python_part("none left", "pass", limit_s=30.0),
    ]
    first, cut, none_left = gpu_check.run_parts(parts, tmp_path, gpu=False, grace_s=0.5, total_limit_s=7.0)
    assert first.status == PASSED and first.limit_cut_from is None  # its own 2 s fitted in the 7 s
    assert cut.status == TIMED_OUT and cut.limit_cut_from == 30.0 and "to fit the total limit" in cut.reason
    assert cut.seconds < 7
    assert none_left.status == TIMED_OUT and none_left.reason == "not run: the total limit (7 s) was spent"
    assert gpu_check.exit_code([first, none_left]) == 1


def test_the_tail_of_a_log_keeps_a_progress_bars_latest_state(tmp_path):
    log = tmp_path / "log"
    bars = "".join(f"\repoch 1/10:  {n}%|##   | {n}/100 [00:01<00:09]" for n in range(0, 60, 10))
    log.write_text("run directory: x\n" + bars + "\nstopped at step 50\n")
    assert gpu_check.tail_of(log).splitlines() == [
        "run directory: x",
        "epoch 1/10:  50%|##   | 50/100 [00:01<00:09]",
        "stopped at step 50",
    ]


def test_skipped_parts_and_parts_whose_results_show_a_failure(tmp_path):
    needs_gpu = Part("gpu", "needs a GPU", [sys.executable, "-c", "raise SystemExit(1)"], 5.0)
    missing_tool = python_part("tool", "pass", unavailable="compute-sanitizer not found")
    seen = []

    def watch(elapsed):
        seen.append(elapsed)

    def finds_errors(result: PartResult):
        result.status, result.reason, result.summary = FAILED, "2 memcheck errors", "2 errors"

    def breaks(result: PartResult):
        raise KeyError("missing")

    watched = python_part("watched", "import time; time.sleep(0.5)", watch=watch, summarize=finds_errors)
    broken = python_part("broken", "pass", summarize=breaks)
    results = gpu_check.run_parts([needs_gpu, missing_tool, watched, broken], tmp_path, gpu=False)

    assert [(r.status, r.reason) for r in results[:2]] == [
        (SKIPPED, "no CUDA GPU"),
        (SKIPPED, "compute-sanitizer not found"),
    ]
    assert results[0].log == "" and not (tmp_path / "logs" / "gpu.log").exists()  # never started
    assert results[2].status == FAILED and results[2].summary == "2 errors" and seen
    assert results[3].status == FAILED and "KeyError" in results[3].reason
    assert gpu_check.exit_code(results[:2]) == 0  # nothing ran, nothing failed


# ---------------------------------------------------------------------------------------------
# What each part reads from its output
# ---------------------------------------------------------------------------------------------


def test_the_tests_part_reads_pytests_junit_xml(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_good(): pass\n"
        "def test_bad(): assert 1 == 2, 'one is not two'\n"
        "def test_later(): pytest.skip('needs two GPUs')\n"
    )
    xml = tmp_path / "out.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", "test_sample.py"]
    subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=120)
    counts = gpu_check.junit_counts(xml)
    assert (counts["tests"], counts["passed"], counts["failures"], counts["skipped"]) == (3, 1, 1, 1)
    assert (
        len(counts["failing"]) == 1 and "test_bad" in counts["failing"][0] and "one is not two" in counts["failing"][0]
    )
    assert counts["skip_reasons"] == {"needs two GPUs": 1}


def test_the_sanitizer_part_counts_memcheck_errors(tmp_path):
    log = tmp_path / "sanitizer.log"
    log.write_text(
        "========= COMPUTE-SANITIZER\n"
        "========= Invalid __global__ write of size 4 bytes\n"
        "=========     at conv2d_relu_kernel+0x1a0\n"
        "=========\n"
        'GPU_CHECK_RESULT {"ran": ["conv2d_relu channels_last"]}\n'
        "========= ERROR SUMMARY: 2 errors\n"
    )
    errors, lines = gpu_check.sanitizer_errors(log)
    assert errors == 2
    assert lines == ["========= Invalid __global__ write of size 4 bytes", "=========     at conv2d_relu_kernel+0x1a0"]
    assert gpu_check.workload_result(log) == {"ran": ["conv2d_relu channels_last"]}

    part = gpu_check.sanitizer_part(tmp_path, sys.executable, 60)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "sanitizer.log").write_text(log.read_text())
    result = PartResult("sanitizer", "", PASSED, log="logs/sanitizer.log")
    part.summarize(result)
    assert result.status == FAILED and result.reason == "2 memcheck errors"
    assert "Invalid __global__ write" in "\n".join(result.details)


def test_the_train_part_times_the_first_step_and_reads_images_per_second(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    (out / "logs").mkdir(parents=True)
    part = gpu_check.train_part(out, sys.executable, 90, steps=6, scratch=scratch)
    part.prepare()
    run_dir = scratch / "train" / "run"
    run_dir.mkdir(parents=True)
    (out / "logs" / "train.log").write_text("$ python -m alexnet_triton.train\nrun directory: x\ntraining epoch 1/10\n")
    part.watch(4.0)  # the loop started 4 s in
    rows = ["step,epoch,loss,lr"]
    for step, seen in ((1, 14.0), (2, 14.1), (3, 14.2), (4, 15.0), (5, 15.1), (6, 15.2)):
        rows.append(f"{step},{1 if step <= 3 else 2},2.3,0.01")
        (run_dir / "steps.csv").write_text("\n".join(rows) + "\n")
        part.watch(seen)
    metrics = [{"epoch": 1, "images_per_s": 20.0, "seconds": 9.6}, {"epoch": 2, "images_per_s": 640.0, "seconds": 0.3}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in metrics))

    result = PartResult("train", "", PASSED, seconds=16.0)
    part.summarize(result)
    numbers = result.numbers
    assert numbers["steps"] == 6 and numbers["to_first_step_s"] == 14.0 and numbers["setup_s"] == 4.0
    assert numbers["first_step_s"] == 10.0 and numbers["steady_step_s"] == 0.1
    assert numbers["compile_and_tuning_s"] == 9.9 and numbers["steady_images_per_s"] == 640.0
    assert result.status == PASSED and "compile+tuning ~9.9 s" in result.summary
    assert (out / "train-steps.csv").is_file() and (out / "train-metrics.jsonl").is_file()

    short = PartResult("train", "", PASSED, seconds=16.0)
    gpu_check.train_part(out, sys.executable, 90, steps=200, scratch=scratch).summarize(short)
    assert short.status == FAILED and short.reason == "stopped at step 6 of 200"


def test_the_syncs_part_fails_when_a_step_after_warm_up_syncs(tmp_path):
    (tmp_path / "logs").mkdir()
    found = {"what": "at.AlexNet", "per_step": [40, 3, 0, 1], "warmup_steps": 2,
             "steady_locations": {"alexnet_triton/functional/dropout.py:70": 1}}  # fmt: skip
    (tmp_path / "logs" / "syncs.log").write_text("noise\n" + gpu_check.RESULT_MARK + json.dumps(found) + "\n")
    result = PartResult("syncs", "", PASSED, log="logs/syncs.log")
    gpu_check.syncs_part(tmp_path, sys.executable, 30).summarize(result)
    assert result.status == FAILED and result.reason == "1 syncs in 2 steps after warm-up"
    assert "`alexnet_triton/functional/dropout.py:70`" in "\n".join(result.details)


@pytest.mark.parametrize(
    ("captured", "replay_syncs", "status"), [(True, [0, 0], PASSED), (False, [0, 0], FAILED), (True, [0, 2], FAILED)]
)
def test_the_syncs_part_reports_the_step_with_and_without_a_graph(tmp_path, captured, replay_syncs, status):
    (tmp_path / "logs").mkdir()
    found = {"what": "at.AlexNet", "per_step": [40, 3, 0, 0], "warmup_steps": 2, "steady_locations": {},
             "step_ms": {"eager": 31.5, "graph": 24.25}, "graph_captured": captured,
             "graph_syncs_per_step": replay_syncs}  # fmt: skip
    (tmp_path / "logs" / "syncs.log").write_text(gpu_check.RESULT_MARK + json.dumps(found) + "\n")
    result = PartResult("syncs", "", PASSED, log="logs/syncs.log")
    gpu_check.syncs_part(tmp_path, sys.executable, 30).summarize(result)
    assert "31.5 ms eagerly, 24.25 ms as a CUDA graph" in result.summary
    assert result.status == status


def test_the_bench_part_makes_the_harness_report(tmp_path):
    def row(layer, op, impl, seconds, kind="op", direction="forward+backward", **extra):
        info = {"kind": kind, "op": op, "layer": layer, "direction": direction, "dtype": "bfloat16",
                "memory_format": "channels_last", "implementation": impl, "median_s": seconds,
                "wall_median_s": seconds, "flops": 1e9, "bytes": 2**20, "tflop_per_s": 1.0, "gb_per_s": 1.0,
                "roofline_fraction": 0.5, "peak_memory_bytes": 2**20, "saved_bytes": 0, **extra}  # fmt: skip
        info.setdefault("gpu_timing", "cuda-graph")
        return {"name": f"{layer}-{impl}", "extra_info": info}

    network = {"images_per_s_bound": 9000.0, "fraction_of_bound": 0.3}
    benchmarks = [
        row("conv2", "conv2d_relu", "ours", 1e-3),
        row("conv2", "conv2d_relu", "eager", 2e-3),
        row("alexnet", "alexnet", "ours", 0.05, kind="network", direction="training", images_per_s=2560, **network),
        row("alexnet", "alexnet", "compile", 0.04, kind="network", direction="training", images_per_s=3200,
            gpu_timing="primed", capture_error="RuntimeError: operation not permitted when stream is capturing",
            **network),
    ]  # fmt: skip
    machine = {"device": "Test GPU", "backend": "triton", "caveat": None, "batch": 128, "image_size": 227}
    (tmp_path / "bench.json").write_text(json.dumps({"machine_info": {"alexnet_triton": machine},
                                                     "benchmarks": benchmarks}))  # fmt: skip
    result = PartResult("bench", "", PASSED)
    gpu_check.bench_part(tmp_path, sys.executable, 120, 0.5, gpu_check.BENCH_SELECTION).summarize(result)

    assert result.status == PASSED and result.numbers["timed"] == 4
    assert (tmp_path / "bench.md").read_text().startswith("# alexnet_triton benchmarks")
    assert (tmp_path / "bench.png").stat().st_size > 0
    details = "\n".join(result.details)
    assert "| conv2d_relu | conv2 | forward+backward | 1.000 ms | 2.00x | — | — |" in details
    assert "| alexnet | alexnet | training | 50.000 ms (2560 img/s) | — | 0.80x | — |" in details
    assert result.numbers["goals"]["conv2d+ReLU bf16 at cuDNN's speed or better on conv2-conv5"] == "met"
    assert result.numbers["gpu_timing"] == {"cuda-graph": 3, "primed": 1}
    assert "| alexnet | alexnet | training | bfloat16 | channels_last | compile | primed: " in details
    assert result.summary == (
        "4 timed; conv2-5 vs cuDNN: met; training step vs eager and compile: missed (1 of 1 short); 1 of 2 "
        "comparisons not measured; training img/s ours 2560, compile 3200"
    )


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def test_the_report_shows_each_parts_status_time_numbers_and_the_end_of_a_failures_output():
    parts = [
        PartResult("tests", "the test suite", PASSED, limit_s=240, seconds=201.4, returncode=0, command="pytest tests/",
                   log="logs/tests.log", summary="2000 passed, 0 failed"),
        PartResult("sanitizer", "memcheck", FAILED, "3 memcheck errors", limit_s=60, seconds=20.0, returncode=1,
                   command="compute-sanitizer ...", log="logs/sanitizer.log", tail="========= Invalid __global__ read",
                   summary="3 memcheck errors", details=["Ran (forward and backward):", "", "- dropout", ""]),
        PartResult("bench", "benchmarks", TIMED_OUT, "stopped at its 100 s limit", limit_s=100, limit_cut_from=120,
                   seconds=106.0, returncode=-2, command="pytest bench/", log="logs/bench.log",
                   tail="collected 19 items"),
        PartResult("train", "training", SKIPPED, "no CUDA GPU", 90),
    ]  # fmt: skip
    report = {
        "command": "python -m bench.gpu_check --out x",
        "started": "2026-12-01 10:00:00 UTC",
        "finished": "2026-12-01 10:09:00 UTC",
        "wall_s": 540.0,
        "gpu": True,
        "no_gpu_reason": None,
        "environment": {
            "python": "3.12.3",
            "torch": "2.11.0",
            "triton": "3.6.0",
            "device": "NVIDIA H100 80GB HBM3",
            "cpus": 16,
            "tune_first_honoured": False,
        },  # fmt: skip
        "exit_code": 1,
        "parts": [vars(part) for part in parts],
    }
    text = gpu_check.render_markdown(report)
    assert "Device: **NVIDIA H100 80GB HBM3**. Python 3.12.3, torch 2.11.0, triton 3.6.0." in text
    assert "Exit code 1." in text and "No GPU part ran" not in text
    assert "ALEXNET_TRITON_TUNE=first was set" in text  # the kernels did not read it: say so
    assert "| tests | passed | 201.4 (240) | 2000 passed, 0 failed |" in text
    assert "| sanitizer | failed: 3 memcheck errors | 20.0 (60) | 3 memcheck errors |" in text
    assert "| bench | timed out: stopped at its 100 s limit | 106.0 (100, cut from 120) | — |" in text
    assert "| train | skipped: no CUDA GPU | — | — |" in text
    sanitizer = text.split("## sanitizer")[1].split("## bench")[0]
    assert "exit code 1; output in `logs/sanitizer.log`" in sanitizer
    assert "- dropout" in sanitizer and "```\n========= Invalid __global__ read\n```" in sanitizer
    json.dumps(report)  # what report.json holds


# ---------------------------------------------------------------------------------------------
# The workloads the GPU parts run, here on the CPU's reference backend
# ---------------------------------------------------------------------------------------------


def test_the_sanitizer_and_sync_workloads_run(tmp_path):
    code = (
        "from bench.gpu_check import sanitizer_workload, syncs_workload\n"
        "sanitizer_workload('cpu')\n"
        "syncs_workload('cpu', batch=2, image_size=67, steps=1, warmup=1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=gpu_check.REPO, env=reference_backend_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = tmp_path / "log"
    lines = [line for line in done.stdout.splitlines() if line.startswith(gpu_check.RESULT_MARK)]
    log.write_text(lines[0] + "\n")
    ran = gpu_check.workload_result(log)["ran"]
    assert [call.split(":")[0] for call in ran] == ["conv2d_relu channels_last", "conv2d_relu contiguous",
                                                    "lrn_max_pool2d channels_last", "lrn_max_pool2d contiguous",
                                                    "dropout", "dropout"]  # fmt: skip
    log.write_text(lines[1] + "\n")
    syncs = gpu_check.workload_result(log)
    assert syncs["per_step"] == [0, 0] and syncs["warmup_steps"] == 1  # no CUDA, nothing to sync with
