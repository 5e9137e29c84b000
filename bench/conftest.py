"""Benchmark setup: `pytest bench/ --benchmark-only`.

On a CUDA GPU: AlexNet's shapes at batch 128 (`--bench-batch`), fp32 and bf16, contiguous and
channels_last. Without one, Triton's CPU interpreter runs our kernels on tiny shapes (batch 2, 67x67
images) so that the harness is proven end to end; those numbers say nothing about kernel speed, and the
machine info and report say so. TRITON_INTERPRET must be set before triton is imported, hence here.
"""

import os
import platform
from datetime import datetime, timezone

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torchvision  # noqa: E402
import triton  # noqa: E402
from alexnet_triton.kernels import _common  # noqa: E402

import alexnet_triton as at  # noqa: E402
from bench.timing import Settings, fair_footing, measure_peaks  # noqa: E402

CPU_CAVEAT = (
    "CPU run: our kernels ran in Triton's CPU interpreter on tiny shapes. These numbers prove the harness "
    "works and say nothing about kernel speed."
)
PEAKS = pytest.StashKey[dict]()
# What the report's header says of the times (bench/timing.py's docstring has the reasons).
GPU_TIMING = (
    "the GPU's, median per call: CUDA events around replays of a CUDA graph of warm calls, each replay queued "
    "behind a sleep kernel so that the host is never inside the window (each row's gpu_timing names its method)"
)


def pytest_addoption(parser):
    group = parser.getgroup("alexnet_triton benchmarks")
    group.addoption("--bench-batch", type=int, default=None, help="batch size (default 128 on a GPU, 2 on a CPU)")
    group.addoption("--bench-image-size", type=int, default=None, help="input size (default 227 on a GPU, 67 on a CPU)")
    group.addoption("--bench-dtypes", default=None, help="comma-separated (default float32,bfloat16 on a GPU)")
    group.addoption(
        "--bench-formats", default=None, help="memory formats of 4-d inputs (default contiguous,channels_last on a GPU)"
    )
    group.addoption(
        "--bench-seconds", type=float, default=None, help="timing budget per benchmark (default 1 s on a GPU)"
    )
    group.addoption(
        "--bench-input-images", type=int, default=64, help="JPEGs the input-pipeline benchmark writes and reads"
    )
    group.addoption(
        "--bench-cpu-compile",
        action="store_true",
        help="on a CPU, time torch.compile too (inductor builds C++, 10-20 s a graph; off by default)",
    )


def _on_gpu() -> bool:
    return torch.cuda.is_available()


def _choice(config, option: str, gpu_default: str, cpu_default: str) -> list[str]:
    value = config.getoption(option) or (gpu_default if _on_gpu() else cpu_default)
    return [item.strip() for item in value.split(",") if item.strip()]


def pytest_generate_tests(metafunc):
    config = metafunc.config
    if "dtype_name" in metafunc.fixturenames:
        metafunc.parametrize("dtype_name", _choice(config, "--bench-dtypes", "float32,bfloat16", "float32"))
    if "memory_format" in metafunc.fixturenames:
        formats = _choice(config, "--bench-formats", "contiguous,channels_last", "contiguous")
        for name in formats:
            if name not in ("contiguous", "channels_last"):
                raise pytest.UsageError(f"--bench-formats takes contiguous and channels_last, got {name!r}")
        metafunc.parametrize("memory_format", formats)


def read_settings(config) -> Settings:
    on_gpu = _on_gpu()
    seconds = config.getoption("--bench-seconds")
    return Settings(
        device=torch.device("cuda" if on_gpu else "cpu"),
        batch=config.getoption("--bench-batch") or (128 if on_gpu else 2),
        image_size=config.getoption("--bench-image-size") or (227 if on_gpu else 67),
        warmup=3 if on_gpu else 0,
        seconds=seconds if seconds is not None else (1.0 if on_gpu else 0.0),
        min_rounds=10 if on_gpu else 1,
    )


@pytest.fixture(scope="session")
def settings(pytestconfig) -> Settings:
    return read_settings(pytestconfig)


@pytest.fixture(scope="session", autouse=True)
def fair_backend_flags():
    """The same footing for every implementation (timing.fair_footing): fp32 matrix products may use TF32 exactly
    when cuDNN's convolutions (and so ours) may, and cuDNN picks its algorithms by timing them, as ours are
    autotuned. PyTorch's settings are put back after the run."""
    with fair_footing():
        yield


@pytest.fixture(scope="session")
def peaks(fair_backend_flags, pytestconfig, settings) -> dict[str, float]:
    """Measured once per run; the machine info carries them into the JSON for the report."""
    measured = measure_peaks(settings.device)
    pytestconfig.stash[PEAKS] = measured
    return measured


@pytest.fixture
def dtype(dtype_name) -> torch.dtype:
    if dtype_name not in ("float32", "bfloat16", "float16"):
        raise pytest.UsageError(f"--bench-dtypes takes float32, bfloat16 and float16, got {dtype_name!r}")
    return getattr(torch, dtype_name)


@pytest.fixture
def skip_unrunnable(request, pytestconfig):
    """Skips, with the reason, what this machine cannot run or measure meaningfully."""
    params = request.node.callspec.params
    if not _on_gpu() and params.get("dtype_name") != "float32":
        pytest.skip("Triton's CPU interpreter does not do half-precision arithmetic")
    if not _on_gpu() and params.get("impl") == "compile" and not pytestconfig.getoption("--bench-cpu-compile"):
        pytest.skip("torch.compile on a CPU compiles C++ for 10-20 s a graph; --bench-cpu-compile to include it")


def pytest_benchmark_update_machine_info(config, machine_info):
    on_gpu = _on_gpu()
    settings = read_settings(config)
    machine_info["alexnet_triton"] = {
        "device": torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.processor() or platform.machine()})",
        "backend": at.backend(torch.device("cuda" if on_gpu else "cpu")),
        "caveat": None if on_gpu else CPU_CAVEAT,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if on_gpu else None,
        # Read through the API that is in use (reading the legacy flag raises once the newer one is set apart).
        "cudnn_allow_tf32": _common.cudnn_allows_tf32(),
        "matmul_allow_tf32": _common.cudnn_allows_tf32(),  # set alike for the run: fair_backend_flags
        "cudnn_benchmark": True,
        "gpu_timing": GPU_TIMING if on_gpu else None,
        "batch": settings.batch,
        "image_size": settings.image_size,
        "peaks": config.stash.get(PEAKS, None),
    }


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep the statistics, drop every round's time: a thousand rounds a benchmark over hundreds of
    benchmarks makes a JSON of tens of MB that no report reads."""
    for result in output_json["benchmarks"]:
        result["stats"].pop("data", None)
