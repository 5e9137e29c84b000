"""Choosing a kernel's tile config on a GPU: Triton's autotuner, made safe to trust.

- Every candidate is run once on the tuning inputs and its outputs checked elementwise against a trusted answer
  (PyTorch's own op in float64 on the same device, expected.py) that its launcher supplies: a miscompiled config
  (Triton has miscompiled implicit-GEMM loops at num_warps=8, triton-lang/triton#1254) never wins by being fast,
  a single candidate is checked too, and a key where every candidate fails raises instead of running wrong code.
- Keys see every constexpr the launch passes (HAS_BIAS, RELU, ... change the code) and sizes rounded up to powers
  of two, so a new batch size does not retune; the tensors' dtypes are part of the key, as in Triton.
- Results are kept on disk per GPU model and library versions, and the config read back is checked again once.
- Tuning takes a per-kernel lock: autograd runs each device's backward on its own thread.
- ALEXNET_TRITON_TUNE=first takes each launch's first pruned config without timing (still checked): for
  correctness passes on a lent GPU, whose time must not go to compiling every candidate.
"""

import hashlib
import inspect
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import triton
import triton.language as tl

from . import _common, launch_cache
from .expected import compare, rounding_unit

TUNE_MODES = ("full", "first")


def tune_mode() -> str:
    mode = os.environ.get("ALEXNET_TRITON_TUNE", "full").strip().lower() or "full"
    if mode not in TUNE_MODES:
        raise ValueError(f"ALEXNET_TRITON_TUNE={mode!r}: expected one of {', '.join(TUNE_MODES)}")
    return mode


def bucket(value):
    """A key's view of an integer: rounded up to a power of two (0 and 1 kept), so that sizes within a factor of
    two share a tuning result. Anything else (bools, floats, strings) as it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    return value if value <= 1 else 1 << (value - 1).bit_length()  # plain Python: this runs on every launch


class AutotuneError(RuntimeError):
    """No candidate config of a kernel computed the right answer at a key."""


def tuned(gpu_configs: list[triton.Config], key: list[str], interpreter_blocks, *, prune=None, checked=()):
    """Decorator choosing a kernel's block sizes: autotuned over gpu_configs on a GPU (CheckedAutotuner); under
    the interpreter, interpreter_blocks(args) -> {name: value}, computed from the launch's sizes.

    The interpreter runs one program instance at a time in numpy, so its cost is the number of program instances
    times the ops each runs, and tiles that match the problem (a batch-2 fully connected layer has 2 rows, not
    128) save most of it. Nothing is benchmarked there.

    On a GPU: prune(configs, args) -> the configs a launch may use (args: every argument by name); checked names
    the output pointers that are poisoned with NaN before each candidate runs and then checked.

    Every name in key must be an argument of the kernel: the autotuner would silently leave out one that is not,
    and then reuse a config tuned for another shape or layout."""

    def decorate(kernel):
        unknown = [name for name in [*key, *checked] if name not in kernel.arg_names]
        if unknown:
            raise ValueError(f"autotune key {unknown} names no argument of {kernel.fn.__name__}: {kernel.arg_names}")
        if not _common.INTERPRET:
            return CheckedAutotuner(kernel, kernel.arg_names, gpu_configs, key, prune=prune, checked=checked)
        names = list(gpu_configs[0].kwargs)
        wrapped = triton.heuristics({name: (lambda args, name=name: interpreter_blocks(args)[name]) for name in names})(
            kernel
        )
        wrapped.gpu_configs, wrapped.checked = gpu_configs, tuple(checked)  # what a GPU would tune and check (tests)
        return wrapped

    return decorate


def constexpr_names(kernel) -> list[str]:
    """The kernel's tl.constexpr parameters, read from the Python function under its wrappers."""
    fn = kernel
    while not inspect.isfunction(fn):
        fn = fn.fn
    parameters = inspect.signature(fn).parameters.values()
    return [p.name for p in parameters if p.annotation is tl.constexpr or str(p.annotation).endswith("constexpr")]


def unspecialized_names(kernel) -> list[str]:
    """The parameters its @triton.jit(do_not_specialize=...) names (Triton compiles one variant for any value)."""
    names = []
    while True:
        for entry in getattr(kernel, "do_not_specialize", None) or []:
            names.append(entry if isinstance(entry, str) else kernel.arg_names[entry])
        if inspect.isfunction(kernel) or not hasattr(kernel, "fn"):
            return names
        kernel = kernel.fn


def capturing(named: dict) -> bool:
    """Whether the launch's device is capturing a CUDA graph (where tuning's fills, checks and timing cannot run)."""
    device = next((value.device for value in named.values() if isinstance(value, torch.Tensor)), None)
    return device is not None and _common.capturing(device)


# What a failing GPU raises (an illegal address, a device-side assert): the process's CUDA context is lost, so it is
# never taken for a wrong candidate. torch.AcceleratorError exists from torch 2.8 on.
DEVICE_FAULTS = tuple(getattr(torch, name) for name in ("AcceleratorError",) if hasattr(torch, name))


class CheckedAutotuner(triton.runtime.Autotuner):
    """Triton's autotuner (whose configs, keys and fn torch.compile reads when it traces a launch) with its own
    run: the key, the check of every candidate, the disk cache and the lock described in this module's docstring.
    Relies only on what Triton's Autotuner has kept across releases: the constructor, self.fn.run, configs, keys,
    cache, arg_names."""

    def __init__(self, fn, arg_names, configs, key, *, prune=None, checked=(), do_bench=None, disk_cache=True):
        super().__init__(fn, arg_names, configs, key, None, None)
        self.prune = prune
        self.checked = tuple(checked)
        self.bench = do_bench
        self.disk_cache = disk_cache
        tuned_names = {name for config in configs for name in config.kwargs}
        # Constexprs a launch passes change the compiled code, so they are part of the key.
        constexprs = constexpr_names(fn)
        self.key_names = list(dict.fromkeys([*key, *(n for n in constexprs if n not in tuned_names)]))
        # Triton compiles a variant per integer that is 1 or a multiple of 16 and per 16-byte-aligned pointer: each
        # variant is tuned and checked on its own, so those facts are part of the key too.
        self.specialized = [n for n in arg_names if n not in constexprs and n not in unspecialized_names(fn)]
        self._key_slots = [(name, list(arg_names).index(name)) for name in self.key_names]
        self._specialized_slots = [(name, list(arg_names).index(name)) for name in self.specialized]
        self.lock = threading.Lock()
        self._meta: dict[triton.Config, dict] = {}
        self.configs_timings = {}

    # -- the key --------------------------------------------------------------------------------------------

    def key_of(self, named: dict) -> tuple:
        """The tuning key of a launch's arguments by name (torch.compile's launches pass them all by keyword)."""
        return self._key([named.get(name) for name in self.key_names], [named.get(name) for name in self.specialized])

    def _launch_key(self, args: tuple, kwargs: dict) -> tuple:
        """key_of for a launch's own arguments, read by position (no dict of ~40 names built per launch)."""
        count = len(args)
        values = [args[slot] if slot < count else kwargs.get(name) for name, slot in self._key_slots]
        specialized = [args[slot] if slot < count else kwargs.get(name) for name, slot in self._specialized_slots]
        return self._key(values, specialized)

    @staticmethod
    def _key(values: list, specialized: list) -> tuple:
        key = [bucket(value) for value in values]
        for value in specialized:
            if isinstance(value, torch.Tensor):
                key.append((str(value.dtype), value.data_ptr() % 16 == 0))
            elif isinstance(value, int) and not isinstance(value, bool):
                key.append(1 if value == 1 else 16 if value % 16 == 0 else 0)
        return tuple(key)

    # -- launching ------------------------------------------------------------------------------------------

    def run(self, *args, **kwargs):
        key = self._launch_key(args, kwargs)
        config = self.cache.get(key)
        if config is None:
            named = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
            with self.lock:  # two devices' backward threads may reach one key together
                config = self.cache.get(key) or self.tune(key, args, kwargs, named)
        self.best_config = config
        meta = self._meta.get(config)
        if meta is None:  # config.all_kwargs() builds a dict: once per config, not per launch
            meta = self._meta[config] = config.all_kwargs()
        return self.fn.run(*args, **kwargs, **meta)

    def tune(self, key: tuple, args: tuple, kwargs: dict, named: dict) -> triton.Config:
        launch_cache.forget()  # what launches remember may rest on a config this replaces
        if capturing(named):
            raise AutotuneError(
                f"{self.base_fn.__name__}: a launch during CUDA graph capture would tune (key {key}); run the "
                "captured work once outside capture first, so that every kernel is tuned and compiled"
            )
        candidates = self.prune(self.configs, named) if self.prune else list(self.configs)
        if not candidates:
            raise AutotuneError(f"{self.base_fn.__name__}: no config fits the launch (key {key})")
        check = Check(self, args, kwargs, named, _common.pending_expectation())
        cached = self.read_disk_cache(key, candidates, named)
        if cached is not None and check.passes(cached):
            self.cache[key] = cached
            return cached
        first = tune_mode() == "first"
        if len(candidates) > 1 and not first:
            self.compile_candidates(candidates, args, kwargs)
        timings = {}
        for config in candidates:
            if not check.passes(config):
                timings[config] = [float("inf")] * 3
            elif first:  # the first that passes, untimed
                timings[config] = [0.0] * 3
                break
            else:  # a single candidate needs no timing
                timings[config] = self.time(config, args, kwargs) if len(candidates) > 1 else [0.0] * 3
        passed = [config for config in timings if timings[config][0] != float("inf")]
        if not passed:
            raise AutotuneError(
                f"{self.base_fn.__name__}: none of its {len(timings)} candidate config(s) computed the right answer "
                f"at key {key} ({'; '.join(check.failures)}); refusing to run a wrong kernel"
            )
        best = min(passed, key=lambda config: timings[config])
        self.configs_timings = timings
        self.cache[key] = best
        self.write_disk_cache(key, candidates, best, named)
        return best

    def time(self, config: triton.Config, args: tuple, kwargs: dict) -> list[float]:
        """Median, 20th and 80th percentile milliseconds; infinite for a config that does not fit the GPU."""

        def call():
            self.fn.run(*args, **kwargs, **config.all_kwargs())

        if self.bench is not None:
            return self.bench(call, quantiles=(0.5, 0.2, 0.8))
        try:
            return triton.testing.do_bench(call, quantiles=(0.5, 0.2, 0.8))
        except Exception as error:  # out of resources, a ptxas failure: this config cannot run here
            warnings.warn(f"autotuning {self.base_fn.__name__}: config ({config}) failed: {error}", stacklevel=2)
            return [float("inf")] * 3

    def compile_candidates(self, candidates, args, kwargs) -> None:
        """Compile every candidate at once, on as many threads as cores, before the first is timed: Triton's
        compiler spends most of its time outside the GIL (MLIR, LLVM, ptxas), so the first step's compile bill
        divides over the cores instead of adding up config by config. A config that fails is left to the check,
        which reports it."""
        workers = min(len(candidates), os.cpu_count() or 1)
        compile_mode = getattr(triton, "AsyncCompileMode", None)  # not in every Triton release
        if workers < 2 or _common.INTERPRET or compile_mode is None:
            return
        with ThreadPoolExecutor(workers) as pool, compile_mode(pool, ignore_errors=True):
            for config in candidates:
                try:
                    self.fn.run(*args, **{**kwargs, "warmup": True}, **config.all_kwargs())
                except Exception:
                    continue

    # -- the disk cache -------------------------------------------------------------------------------------

    def cache_file(self, candidates, named) -> Path | None:
        """One file per kernel, GPU model, library versions, kernel source and candidate list."""
        if not self.disk_cache or _common.INTERPRET:
            return None
        device = next((value.device for value in named.values() if isinstance(value, torch.Tensor)), None)
        if device is None or device.type != "cuda":
            return None
        return self.cache_path(torch.cuda.get_device_name(device), candidates)

    def cache_path(self, device_name: str, candidates) -> Path:
        fn = self.fn
        while not hasattr(fn, "cache_key") and hasattr(fn, "fn"):
            fn = fn.fn
        source = getattr(fn, "cache_key", None) or inspect.getsource(self.base_fn)
        identity = [device_name, torch.__version__, triton.__version__, source, *map(str, candidates)]
        digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:32]
        folder = Path(os.environ.get("ALEXNET_TRITON_CACHE", Path.home() / ".cache" / "alexnet_triton")) / "autotune"
        return folder / f"{self.base_fn.__name__}-{digest}.json"

    def read_disk_cache(self, key, candidates, named) -> triton.Config | None:
        path = self.cache_file(candidates, named)
        try:
            index = json.loads(path.read_text())[repr(key)] if path else None
        except (OSError, ValueError, KeyError):
            return None
        return candidates[index] if isinstance(index, int) and 0 <= index < len(candidates) else None

    def write_disk_cache(self, key, candidates, best, named) -> None:
        path = self.cache_file(candidates, named)
        if path is None or tune_mode() == "first":  # an untimed choice is no tuning result
            return
        try:
            known = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            known = {}
        known[repr(key)] = candidates.index(best)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_text(json.dumps(known))
            temporary.replace(path)  # another process's file is replaced whole, never half-written
        except OSError as error:
            warnings.warn(f"autotune cache {path} not written: {error}", stacklevel=2)


class Check:
    """Runs candidates once on the tuning inputs and judges their outputs against the launch's expectation.

    The expectation is made once per tuning, when the Check is (before the first candidate runs). A launch without one
    (a test's kernel, or a caller outside this package) has its candidates compared with the first candidate's
    outputs instead, bit for bit where they are integers and within the rounding of their dtype otherwise."""

    def __init__(self, tuner: CheckedAutotuner, args, kwargs, named, expectation):
        self.tuner, self.args, self.kwargs = tuner, args, kwargs
        self.outputs = [named[name] for name in tuner.checked]
        self.expectation = expectation
        self.failures: list[str] = []

    def passes(self, config: triton.Config) -> bool:
        if not self.outputs and self.expectation is None:
            return True
        for output in self.outputs:  # so that an element a candidate leaves unwritten cannot look right
            output.fill_(float("nan") if output.is_floating_point() else torch.iinfo(output.dtype).max)
        try:
            self.tuner.fn.run(*self.args, **self.kwargs, **config.all_kwargs())
        except DEVICE_FAULTS:  # the GPU itself failed: not a verdict on this config
            raise
        except Exception as error:  # does not compile or fit: never chosen
            self.failures.append(f"({config}) failed: {type(error).__name__}: {str(error)[:200]}")
            return False
        if self.expectation is None:
            self.expectation = FirstCandidate(self.outputs)
        try:
            problem = self.expectation.judge()
        except DEVICE_FAULTS:
            raise
        except (RuntimeError, IndexError, ValueError) as error:  # e.g. a saved position outside its window
            problem = f"its outputs could not be read back: {error}"
        if problem is None:
            return True
        self.failures.append(f"({config}): {problem}")
        warnings.warn(
            f"autotuning {self.tuner.base_fn.__name__}: dropped config ({config}): {problem}",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


class FirstCandidate:
    """The fallback expectation: every candidate agrees with the first one within its dtype's rounding."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.first = None

    def judge(self) -> str | None:
        got = [output.clone() for output in self.outputs]
        if self.first is None:
            self.first = got
            return None
        for index, (value, wanted) in enumerate(zip(got, self.first, strict=True)):
            allowance = wanted.double().abs() * 4 * rounding_unit(wanted.dtype)
            problem = compare(value, wanted.double(), allowance, f"output {index} against the first candidate")
            if problem:
                return problem
        return None
