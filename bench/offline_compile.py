"""Compile Triton kernels for an H100 (sm_90) without a GPU, and read what the compiler says of each.

Triton compiles for a GPU target without a GPU or a driver (its NVIDIA backend ships ptxas). Each job names a
kernel (module and attribute) and its cases, each the arguments of one `triton.compile`: a signature of Triton
types, constexpr values, the arguments to compile as multiples of 16 (`divisible`) and options (warps, stages).
`compile_jobs` runs them in a fresh Python process, since TRITON_INTERPRET (which the tests set) is read when
triton is imported, and returns, per case, its error or:

    shared        bytes of shared memory per block
    registers     per thread, and spill_stores / spill_loads in bytes, from ptxas's log
    tensor_cores  whether the PTX has wgmma or mma (tl.dot on tensor cores)
    cubin         the path of the compiled binary, for cuobjdump / nvdisasm
    seconds       the compile's time

That process (`python -m bench.offline_compile FOLDER`, the jobs as JSON on stdin) imports the kernels and warms
Triton up once, then compiles every case in its own forked child, as many at a time as there are CPU cores, so a
compiler crash is pinned on its case. Everything is written under FOLDER, the results to FOLDER/results.json.
`bench.kernel_specs` makes the jobs for this project's kernels.
"""

import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

REPOSITORY = Path(__file__).resolve().parents[1]
SM_90 = ("cuda", 90, 32)  # backend, compute capability, warp size: an H100


def missing_nvidia_backend() -> str | None:
    """Why this machine cannot compile for an NVIDIA GPU, or None when it can."""
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        return "Triton's NVIDIA backend (triton.backends.nvidia) is not installed"
    try:
        triton.knobs.nvidia.ptxas  # noqa: B018 (looks for ptxas and runs `ptxas --version`)
    except Exception as error:
        return f"Triton's NVIDIA backend has no working ptxas: {type(error).__name__}: {error}"
    return None


def compile_jobs(jobs: list[dict], folder: Path, *, timeout: float) -> dict[str, list[dict]]:
    """Job name -> one outcome per case, in order: {"error": ...} or the resources listed above.

    jobs: [{"name", "module", "kernel", "cases": [{"signature", "constexprs", "options", ...}]}], slowest
    kernels first (they start first). folder: an empty folder for the cubins, logs and Triton's cache."""
    # A fresh cache, so that every kernel is really compiled (and ptxas prints its log) on every run. Without
    # TRITON_INTERPRET the kernels are JIT functions that compile; no GPU is needed or looked at.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env |= {"CUDA_VISIBLE_DEVICES": "", "TRITON_CACHE_DIR": str(folder / "cache"), "TRITON_DUMP_PTXAS_LOG": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.offline_compile", str(folder)],
        input=json.dumps(jobs),
        env=env,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the compile process failed:\n{result.stderr[-5000:]}")
    return json.loads((folder / "results.json").read_text())


# ---------------------------------------------------------------------------------------------
# The compile process
# ---------------------------------------------------------------------------------------------


def jit_function(module: str, name: str) -> triton.runtime.JITFunction:
    """The kernel under its @triton.autotune / @triton.heuristics decorators."""
    fn = getattr(importlib.import_module(module), name)
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    return fn


def compile_case(fn: triton.runtime.JITFunction, case: dict, cubin_path: str) -> dict:
    """Compile one case and read its resources; a compile error is returned, as the autotuner would meet it."""
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas's log to stdout
            # Arguments Triton would see as multiples of 16 at run time carry that hint, as its launcher gives it.
            divisible = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in case.get("divisible", ())}
            source = ASTSource(fn, case["signature"], constexprs=case["constexprs"], attrs=divisible)
            compiled = triton.compile(source, target=GPUTarget(*SM_90), options=case["options"])
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}", "seconds": time.perf_counter() - start}
    ptx, ptxas_log = compiled.asm["ptx"], log.getvalue()
    with open(cubin_path, "wb") as out:
        out.write(compiled.asm["cubin"])

    def number(pattern: str) -> int | None:
        found = re.search(pattern, ptxas_log)
        return int(found.group(1)) if found else None

    return {
        "shared": compiled.metadata.shared,
        "registers": number(r"Used (\d+) registers"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "tensor_cores": re.search(r"\b(wgmma\.mma_async|mma\.sync)\b", ptx) is not None,
        "cubin": cubin_path,
        "seconds": time.perf_counter() - start,
    }


def compile_in_children(jobs: list[dict], functions: list, scratch: str) -> None:
    """Every case in a forked child, as many at once as this process may use cores; each writes
    SCRATCH/<job>-<case>.json, or a record of its crash."""
    # The first compile in a process sets Triton and LLVM up (0.5 s): done here, for the cheapest kernel's
    # first case (the last job's), so that every child inherits it.
    last = len(jobs) - 1
    warm_up = compile_case(functions[last], jobs[last]["cases"][0], os.path.join(scratch, f"{last}-0.cubin"))
    with open(os.path.join(scratch, f"{last}-0.json"), "w") as out:
        json.dump(warm_up, out)
    tasks = [(j, i) for j, job in enumerate(jobs) for i in range(len(job["cases"])) if (j, i) != (last, 0)]
    running, pending = {}, list(reversed(tasks))  # popped from the end: the first jobs start first
    while pending or running:
        while pending and len(running) < len(os.sched_getaffinity(0)):
            j, i = task = pending.pop()
            path = os.path.join(scratch, f"{j}-{i}")
            pid = os.fork()
            if pid == 0:
                try:
                    with open(path + ".err", "w") as err:
                        os.dup2(err.fileno(), 2)
                    result = compile_case(functions[j], jobs[j]["cases"][i], path + ".cubin")
                    with open(path + ".json", "w") as out:
                        json.dump(result, out)
                finally:
                    os._exit(0)
            running[pid] = task
        pid, status = os.wait()
        j, i = running.pop(pid)
        path = os.path.join(scratch, f"{j}-{i}")
        if not os.path.exists(path + ".json"):
            with open(path + ".err") as err:
                stderr = err.read()[-3000:]
            with open(path + ".json", "w") as out:
                json.dump({"error": f"the compiler crashed (wait status {status}): {stderr}"}, out)


def main(folder: str) -> None:
    jobs = json.load(sys.stdin)
    functions = [jit_function(job["module"], job["kernel"]) for job in jobs]
    scratch = os.path.join(folder, "cases")
    os.makedirs(scratch)
    compile_in_children(jobs, functions, scratch)
    results = {}
    for j, job in enumerate(jobs):
        results[job["name"]] = []
        for i in range(len(job["cases"])):
            with open(os.path.join(scratch, f"{j}-{i}.json")) as f:
                results[job["name"]].append(json.load(f))
    with open(os.path.join(folder, "results.json"), "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m bench.offline_compile FOLDER < jobs.json\n\n{__doc__}")
    main(sys.argv[1])
