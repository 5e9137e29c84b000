"""What the kernel files share: the interpreter switch, the launch (device, grid limits, what tuning checks),
output sizes, dtype rules, allocation."""

import contextlib
import functools
import os
import threading

import torch
import triton
from torch.library import wrap_triton
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from . import launch_cache

# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when this package is imported,
# so the flag is read once here and stays true to what the kernels actually are.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _squeeze_interpreter_index() -> None:
    """Triton < 3.7's interpreter turns a scalar tensor into an int (a loop `range(first, last)` over tensors, an
    index) with int() of its 1-element 1-D numpy array, which NumPy >= 2.4 refuses ("only 0-dimensional arrays can
    be converted to Python scalars"). Triton 3.7 squeezes the array first (triton-lang/triton#9172); this does the
    same for older releases, which pip pairs with today's NumPy."""
    from triton.runtime import interpreter

    patch_tensor = interpreter._patch_lang_tensor

    def patch_lang_tensor(tensor, *scope):
        patch_tensor(tensor, *scope)
        index = lambda self: int(self.handle.data.squeeze())  # noqa: E731
        if scope:  # Triton 3.5+: a scope that restores the attribute after the launch
            scope[0].set_attr(tensor, "__index__", index)
        else:
            tensor.__index__ = index

    interpreter._patch_lang_tensor = patch_lang_tensor


if INTERPRET and tuple(int(part) for part in triton.__version__.split(".")[:2]) < (3, 7):
    _squeeze_interpreter_index()

# The dtypes every kernel accepts. float64 exists for gradcheck and float64 reference runs.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# CUDA's grid limits: axis 0 up to 2**31 - 1 programs, axes 1 and 2 up to 65,535 (the interpreter checks neither).
GRID_LIMITS = (2**31 - 1, 65535, 65535)


def check_grid(grid: tuple, kernel_name: str) -> tuple:
    """grid itself, after checking it against GRID_LIMITS: a launch past them fails on a GPU with a driver error
    that names no kernel, so it fails here first, saying which kernel and axis."""
    for axis, (programs, limit) in enumerate(zip(grid, GRID_LIMITS, strict=False)):
        if programs > limit:
            raise ValueError(
                f"{kernel_name}: {programs:,} programs on grid axis {axis}, past CUDA's limit of {limit:,} "
                "(the input is too large for one launch: split the batch)"
            )
    return grid


def device_guard(device: torch.device):
    """What a launch runs under: CUDA's device guard for a CUDA tensor's device, so that Triton, which launches on
    the current device and its current stream, launches on the tensor's (a tower on cuda:1 while cuda:0 is
    current). Nothing for other devices."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


_pending = threading.local()


def pending_expectation():
    """The expectation the launch on this thread hands its autotuner, made now (only a launch that tunes asks)."""
    make = getattr(_pending, "make", None)
    return make() if make is not None else None


class expecting:  # noqa: N801 (a context manager used as a function: with expecting(make): ...)
    """Within it, a launch on this thread that tunes checks its candidates against make() (launcher does this).
    A class rather than a generator-based context manager: it is entered on every launch, and a generator's costs
    microseconds."""

    __slots__ = ("make", "saved")

    def __init__(self, make):
        self.make = make

    def __enter__(self):
        self.saved = getattr(_pending, "make", None)
        _pending.make = self.make

    def __exit__(self, *exc):
        _pending.make = self.saved


# The tensor types a straight (untraced) call sees: any other subclass is traced (traced below). Tested with type(),
# which costs a tenth of isinstance on torch.Tensor.
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def capturing(device: torch.device) -> bool:
    """Whether work queued now for device goes into a CUDA graph being captured rather than running: then a tensor
    made now is only a recorded allocation of the graph's, which no cache outside the graph may keep."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _tracing_modes() -> tuple[type, ...]:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import FunctionalTensorMode
    from torch.fx.experimental.proxy_tensor import ProxyTorchDispatchMode

    return (FakeTensorMode, FunctionalTensorMode, ProxyTorchDispatchMode)


def traced(args) -> bool:
    """Whether a tracer or transform sees a call with these arguments: torch.compile (dynamo), torch.jit.trace, a
    fake, functional or proxy dispatch mode (AOTAutograd, export, make_fx), a functorch transform (vmap, grad), or a
    tensor subclass
    among args (FakeTensor, DTensor, ...; a Parameter is a plain tensor). Then ops go through torch.library and
    launches through wrap_triton, which they understand; otherwise both go straight to the kernels. Other dispatch
    modes (one that counts launches, say) leave a call as it is."""
    if torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is not None:
        return True
    if torch._C._get_tracing_state() is not None:  # torch.jit.trace: it records ops, not the kernels' launches
        return True
    if torch._C._len_torch_dispatch_stack() and any(
        isinstance(mode, _tracing_modes()) for mode in _get_current_dispatch_mode_stack()
    ):
        return True
    return any(type(a) not in PLAIN_TENSORS and isinstance(a, torch.Tensor) for a in args)


class launcher:  # noqa: N801 (used as launcher(kernel)[grid](...), like the kernel itself)
    """launcher(kernel, expect)[grid](*args, **meta): the kernel's launch, on its first tensor argument's device,
    with the grid checked against CUDA's limits, through torch.library.wrap_triton while something traces it
    (traced: torch.compile, make_fx), straight otherwise (the interpreter's kernels, never compiled, always).
    expect: () -> the trusted answer a tuning candidate must produce (expected.py), called only when the launch
    tunes. A compiled launch at a key it has run at before goes straight to its compiled kernel (launch_cache)."""

    __slots__ = ("kernel", "expect")

    def __init__(self, kernel, expect=None):
        self.kernel = kernel
        self.expect = expect

    def __getitem__(self, grid):
        kernel, expect = self.kernel, self.expect

        def launch(*args, **kwargs):
            tensor = next(arg for arg in args if isinstance(arg, torch.Tensor))
            ran = []

            def within_limits(meta):
                ran.append(check_grid(grid(meta) if callable(grid) else grid, _kernel_name(kernel)))
                return ran[-1]

            # The first tensor tells: a traced launch gets fake or functional tensors, or runs under a mode.
            if not INTERPRET and traced((tensor,)):
                with device_guard(tensor.device), expecting(expect):
                    return wrap_triton(kernel)[within_limits](*args, **kwargs)
            key = None if INTERPRET else launch_cache.key(kernel, tensor.device, grid, args, kwargs)
            with device_guard(tensor.device):
                if launch_cache.run(key, args):
                    return None
                with expecting(expect):
                    compiled = kernel[within_limits](*args, **kwargs)
                if key is not None and ran:
                    launch_cache.remember(key, kernel, compiled, ran[-1], args, kwargs)
                return compiled

        return launch


def _kernel_name(kernel) -> str:
    while not hasattr(kernel, "__name__") and hasattr(kernel, "fn"):
        kernel = kernel.fn
    return getattr(kernel, "__name__", repr(kernel))


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


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host sizes. triton.cdiv is a Triton function: called on the host it costs microseconds."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1), in plain Python for the same reason as cdiv."""
    return 1 << (n - 1).bit_length() if n > 1 else 1


def contiguous_strides(shape) -> tuple[int, ...]:
    """The strides of a contiguous tensor of this shape, without making one."""
    strides, span = [], 1
    for size in reversed(shape):
        strides.append(span)
        span *= max(size, 1)
    return tuple(reversed(strides))


def block(size: int, low: int, high: int) -> int:
    """The power of two covering size, clamped to [low, high]."""
    return max(low, min(high, next_power_of_2(max(int(size), 1))))


# Past the first tile (DESIGN.md, "Tests"): the interpreter's blocks otherwise cover a whole test shape, so a test
# would run one program and one trip of every loop, and never see a bug in how programs or trips divide the work.
# The kernel tests set TEST_TILES (tests/conftest.py); each kernel's interpreter blocks then cut every tiled dimension
# into TEST_PROGRAMS programs or more and every reduction loop into TEST_TRIPS trips or more, wherever a block's floor
# (16 where tl.dot reads it) leaves room. Off by default: a user's interpreter run takes the fewest, largest tiles,
# which run fastest. Read whenever a launch picks its blocks; a GPU's tuned blocks never read it.
TEST_TILES = False
TEST_PROGRAMS = 3
TEST_TRIPS = 2


def parts_block(size: int, low: int, high: int, parts: int) -> int:
    """The largest power of two that cuts size into `parts` blocks or more, within [low, high]: cdiv(size, b) >=
    parts exactly when b <= (size - 1) // (parts - 1). Where low allows it, that is parts to 2 * (parts - 1) blocks
    (two for two, three or four for three) however large size is, the last one partial wherever size is no multiple
    of the block."""
    most = (int(size) - 1) // max(parts - 1, 1)
    return max(low, min(high, 1 << (most.bit_length() - 1) if most > 0 else low))


def program_block(size: int, low: int, high: int) -> int:
    """The interpreter's block along a dimension that programs share: block() (one program covers size), or under
    TEST_TILES one that gives TEST_PROGRAMS programs or more."""
    return parts_block(size, low, high, TEST_PROGRAMS) if TEST_TILES else block(size, low, high)


def trip_block(size: int, low: int, high: int) -> int:
    """The interpreter's block along a dimension a loop walks: block() (one trip), or under TEST_TILES one that
    takes TEST_TRIPS trips or more."""
    return parts_block(size, low, high, TEST_TRIPS) if TEST_TILES else block(size, low, high)


def use_tf32(dtype: torch.dtype) -> bool:
    """Whether tl.dot may round fp32 operands to TF32: when PyTorch allows it for cuDNN convolutions,
    so a fused conv rounds like the F.conv2d it replaces. Other dtypes never do.

    Kernels take this as a bool and derive their accumulator dtype from their pointers (fp32, or fp64
    for fp64), so no tl.dtype or string travels as a launch argument through torch.compile."""
    return dtype == torch.float32 and cudnn_allows_tf32()


def cudnn_allows_tf32() -> bool:
    """torch.backends.cudnn.allow_tf32, or where a user set PyTorch's newer per-backend precision (which makes
    reading the old flag raise), that setting: cudnn.conv's, else cudnn's, else the global one ("none" defers)."""
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        backends = torch.backends
        for setting in (getattr(backends.cudnn, "conv", None), backends.cudnn, backends):
            precision = getattr(setting, "fp32_precision", "none")
            if precision != "none":
                return precision == "tf32"
        return False


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
