"""What the kernel files share: the interpreter switch, tile configs, output sizes, dtype rules, allocation."""

import functools
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
import triton
from torch.library import wrap_triton

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when this package is imported,
# so the flag is read once here and stays true to what the kernels actually are.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

# The dtypes every kernel accepts. float64 exists for gradcheck and float64 reference runs.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tuned(gpu_configs: list[triton.Config], key: list[str], interpreter_blocks, *, prune=None, checked=()):
    """Decorator choosing a kernel's block sizes: autotuned over gpu_configs on a GPU; under the
    interpreter, interpreter_blocks(args) -> {name: value}, computed from the launch's sizes.

    The interpreter runs one program instance at a time in numpy, so its cost is the number of
    program instances times the ops each runs, and tiles that match the problem (a batch-2 fully
    connected layer has 2 rows, not 128) save most of it. Nothing is benchmarked there.

    On a GPU: prune(configs, args) -> the configs a launch may use (args: every argument by name); checked names
    the output pointers of a kernel whose candidates are checked against each other (CheckedAutotuner). Tuning
    results are kept on disk (Triton's cache), so a later run does not tune again.

    Every name in key must be an argument of the kernel: the autotuner silently leaves out one that is
    not, and would then reuse a config tuned for another shape or layout."""

    def decorate(kernel):
        unknown = [name for name in [*key, *checked] if name not in kernel.arg_names]
        if unknown:
            raise ValueError(f"autotune key {unknown} names no argument of {kernel.fn.__name__}: {kernel.arg_names}")
        if not INTERPRET:

            def early_prune(configs, named, **kwargs):  # Triton passes positional and keyword arguments apart
                return prune(configs, {**named, **kwargs})

            return CheckedAutotuner(
                kernel,
                kernel.arg_names,
                gpu_configs,
                key,
                None,
                None,
                prune_configs_by={"early_config_prune": early_prune} if prune else None,
                cache_results=True,
                checked=checked,
            )
        names = list(gpu_configs[0].kwargs)
        return triton.heuristics({name: (lambda args, name=name: interpreter_blocks(args)[name]) for name in names})(
            kernel
        )

    return decorate


# How far a candidate config's output may stray from the first candidate's before it counts as miscompiled: well
# above the rounding two summation orders give at each precision of the inputs, far below a wrong result (O(1)).
AUTOTUNE_AGREEMENT = {torch.float64: 1e-9, torch.float32: 5e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}


class CheckedAutotuner(triton.runtime.Autotuner):
    """Triton's autotuner, which also runs each candidate once on the tuning inputs and compares the outputs named
    in checked with the first candidate's: a config that disagrees beyond rounding is dropped (never picked), with
    one warning naming kernel, config and error. Triton has miscompiled implicit-GEMM loops at num_warps=8
    (triton-lang/triton#1254); a wrong kernel must not win by being fast. Each output is filled with NaN before a
    candidate runs, so one that leaves elements unwritten disagrees too. The candidates are compiled side by side
    before the first is timed (compile_candidates)."""

    def __init__(self, *args, checked=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.checked = tuple(checked)
        self.reference = None  # (config, outputs) of the first candidate for the shape being tuned
        self.candidates = []  # the configs being tuned, compiled side by side before the first is timed
        self.compile_ahead = False

    def run(self, *args, **kwargs):
        self.reference, self.compile_ahead = None, True
        try:
            return super().run(*args, **kwargs)
        finally:
            self.reference, self.compile_ahead = None, False

    def prune_configs(self, kwargs):
        self.candidates = super().prune_configs(kwargs)
        return self.candidates

    def compile_candidates(self, args, meta) -> None:
        """Compile every candidate at once, on as many threads as cores, before the first is timed: Triton's
        compiler spends most of its time outside the GIL (MLIR, LLVM, ptxas), so the first step's compile bill
        divides over the cores instead of adding up config by config. A config that fails is left to the benchmark,
        which skips it."""
        workers = min(len(self.candidates), os.cpu_count() or 1)
        if workers < 2 or INTERPRET:
            return
        with ThreadPoolExecutor(workers) as pool, triton.AsyncCompileMode(pool, ignore_errors=True):
            for config in self.candidates:
                try:
                    self.fn.run(*args, **{**meta, "warmup": True}, **config.all_kwargs())
                except Exception:
                    continue

    def _bench(self, *args, config, **meta):
        if self.compile_ahead:
            self.compile_ahead = False
            self.compile_candidates(args, meta)
        if self.checked:
            error = self.disagreement(args, config, meta)
            if error is not None:
                return [float("inf")] * 3
        return super()._bench(*args, config=config, **meta)

    def disagreement(self, args, config, meta) -> float | None:
        """Run config once; its relative error against the reference if it is past AUTOTUNE_AGREEMENT, else None."""
        named = {**dict(zip(self.arg_names, args, strict=False)), **meta}
        outputs = [named[name] for name in self.checked]
        for output in outputs:
            output.fill_(float("nan"))
        try:
            self.fn.run(*args, **meta, **config.all_kwargs())
        except Exception:  # a config that does not compile or fit is left to the benchmark, which skips it
            return None
        got = [output.clone() for output in outputs]
        if self.reference is None:
            self.reference = (config, got)
            return None
        reference_config, wanted = self.reference
        error = max(relative_difference(a, b) for a, b in zip(got, wanted, strict=True))
        dtypes = [value.dtype for value in named.values() if isinstance(value, torch.Tensor)]
        tolerance = max((AUTOTUNE_AGREEMENT.get(dtype, 0.0) for dtype in dtypes), default=0.0)
        if error <= tolerance:
            return None
        warnings.warn(
            f"autotuning {self.base_fn.__name__}: dropped config ({config}): its output differs from the first "
            f"config's ({reference_config}) by relative error {error:.3g}, past the {tolerance:g} rounding allows",
            RuntimeWarning,
            stacklevel=2,
        )
        return error


def relative_difference(got: torch.Tensor, wanted: torch.Tensor) -> float:
    """||got - wanted|| / ||wanted|| in float64, where equal non-finite values (NaN and NaN, inf and inf) agree and
    any other NaN makes it infinite."""
    got, wanted = got.double(), wanted.double()
    same = (got == wanted) | (got.isnan() & wanted.isnan())
    difference = torch.where(same, 0.0, got - wanted)
    if difference.isnan().any():
        return float("inf")
    scale = torch.where(wanted.isfinite(), wanted, 0.0).norm().item()
    return difference.norm().item() / max(scale, torch.finfo(torch.float64).tiny)


def launcher(kernel):
    """kernel[grid](...) through torch.library.wrap_triton, so torch.compile can trace the launch; the
    interpreter's kernels (never compiled, and not Autotuner objects) launch directly."""
    return kernel if INTERPRET else wrap_triton(kernel)


def bf16_in_fp32_under_interpreter(launch):
    """Decorator for a host launcher: under the interpreter, bf16 tensor arguments are cast to fp32 for
    the launch and the fp32 results rounded back to bf16 once. That is what a GPU computes: the
    kernels load bf16 into fp32, accumulate in fp32 and round on their single store. Compiled kernels
    are left exactly as they are.

    Why: Triton's interpreter (3.8) keeps bf16 tiles as raw 16-bit integers, so tl.dot multiplies bit
    patterns (conv returned 1.06e9 for 4), comparisons order them as integers and tl.full cannot make
    them (max-pool raised). fp16 it computes correctly, so fp16 still runs the kernels as they are."""
    if not INTERPRET:
        return launch

    def is_bf16(value) -> bool:
        return isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16

    def to_bf16(value):
        return value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else value

    @functools.wraps(launch)
    def launch_in_fp32(*args, **kwargs):
        if not any(is_bf16(value) for value in (*args, *kwargs.values())):
            return launch(*args, **kwargs)
        args = [arg.float() if is_bf16(arg) else arg for arg in args]
        kwargs = {name: value.float() if is_bf16(value) else value for name, value in kwargs.items()}
        result = launch(*args, **kwargs)
        return tuple(map(to_bf16, result)) if isinstance(result, tuple) else to_bf16(result)

    return launch_in_fp32


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output positions along one axis of a convolution or pool with zero padding, in floor mode (as
    F.conv2d, and F.max_pool2d with ceil_mode=False)."""
    return (size + 2 * padding - kernel) // stride + 1


def block(size: int, low: int, high: int) -> int:
    """The power of two covering size, clamped to [low, high]."""
    return max(low, min(high, triton.next_power_of_2(max(int(size), 1))))


def use_tf32(dtype: torch.dtype) -> bool:
    """Whether tl.dot may round fp32 operands to TF32: when PyTorch allows it for cuDNN convolutions,
    so a fused conv rounds like the F.conv2d it replaces. Other dtypes never do.

    Kernels take this as a bool and derive their accumulator dtype from their pointers (fp32, or fp64
    for fp64), so no tl.dtype or string travels as a launch argument through torch.compile."""
    return dtype == torch.float32 and torch.backends.cudnn.allow_tf32


def empty(shape, *, like: torch.Tensor, dtype: torch.dtype | None = None, memory_format=None) -> torch.Tensor:
    """Every buffer a launcher hands to a kernel comes from here. Tests replace it with a NaN-filled
    allocation to prove that kernels write every element they return."""
    return torch.empty(
        shape,
        dtype=like.dtype if dtype is None else dtype,
        device=like.device,
        memory_format=memory_format or torch.contiguous_format,
    )


def suggest_memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout PyTorch gives the output of a 4-D op on t: c10's suggest_memory_format.

    channels_last when t's strides, read in the order C, W, H, N, never decrease (each at least the
    span of the dimension before it), which holds for views too, e.g. a channel slice of a
    channels_last tensor; NCHW otherwise. Ambiguous strides fall back to NCHW as in PyTorch: a
    broadcast channel dimension, an empty dimension, and N111-like shapes whose strides all agree."""
    if t.dim() != 4:
        return torch.contiguous_format
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return torch.contiguous_format
    span = 0  # the memory the dimensions visited so far cover
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < span or (d == 0 and span == strides[1]):
            return torch.contiguous_format
        span = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return torch.channels_last
