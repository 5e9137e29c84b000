"""Comparison helpers: relative error against a float64 reference, and tolerances per precision."""

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Tolerance(float):
    """What a precision allows against a float64 reference, two bounds in one (a float, the first, so that it
    reads and computes as one number wherever a tolerance is a number):

    - itself: the relative error of the whole tensor, ||out - ref|| / ||ref||;
    - .elementwise: the error of each element, |out - ref| <= elementwise * magnitude, where magnitude is what
      the element's own rounding scales with: the op's per-element magnitude where a test gives one, else
      |ref| + mean |ref| (the element's size, and the tensor's typical size for elements that cancel to near 0).

    The norm alone lets through one element (or one tile) off by its own size in a large tensor: in bf16 at 2e-2
    of the norm, any one element of a tensor of 2,500; the elementwise bound catches it at any size."""

    def __new__(cls, norm: float, elementwise: float, name: str):
        self = super().__new__(cls, norm)
        self.elementwise = elementwise
        self.name = name
        return self

    def __repr__(self) -> str:
        return f"Tolerance({float(self)!r}, elementwise={self.elementwise!r}, name={self.name!r})"


# Per precision the computation ran in, against a float64 reference: above what rounding at that precision gives
# and below what a wrong index or a missed element gives. NaN never passes (assert_close checks finiteness first).
# Norm bounds: fp32 rounding gives near 2e-7 on the tests' conv and LRN shapes, TF32 near 3e-4, bf16 1e-3 to 1e-2.
# Elementwise bounds, in units of each element's magnitude (Tolerance), about three times the largest error measured
# under the interpreter (ERROR_LOG below; test_conv, test_lrn, test_pool, test_lrn_pool, test_dropout, test_layouts,
# test_reference, test_swap, test_swap_sequential, test_model twice, test_half_precision four times):
#   bf16 3.8e-3 -> 1.2e-2 and fp16 4.6e-4 -> 1.5e-3: one rounding of the result (unit roundoff 3.9e-3, 4.9e-4), as on
#     a GPU, whose kernels accumulate in fp32 and round once (the interpreter runs bf16 in fp32 rounded once, fp16
#     as is); the reference must see the same rounded inputs, the incoming gradient included;
#   fp32 2.45e-6 (LRN+pool's input gradient, whose two terms cancel) -> 1e-5, four times, for a GPU's approximate
#     exp2 and log2 in LRN's power;
#   fp64 1.4e-13 (whole torchvision models against the plain ones) -> 5e-13;
#   TF32 not measured (no interpreter runs it): Triton truncates each operand to 10 bits (2^-9 per product), an
#     error of about 2^-10 of the result plus a random part of the same order, so 2e-2 leaves a GPU's largest
#     elements five times or more; to be measured on a GPU with ERROR_LOG.
TOLERANCE = {
    torch.float64: Tolerance(1e-12, 5e-13, "float64"),
    torch.float32: Tolerance(1e-5, 1e-5, "float32"),
    "tf32": Tolerance(2e-3, 2e-2, "tf32"),
    torch.float16: Tolerance(5e-3, 1.5e-3, "float16"),
    torch.bfloat16: Tolerance(2e-2, 1.2e-2, "bfloat16"),
}

# Set to a file to have every assert_close append its measured errors to it, one JSON object a line (the test, what
# it compared, the precision, the norm and elementwise errors and bounds); `python tests/helpers.py FILE` prints the
# largest per precision. This is how the elementwise bounds above were measured (and are to be measured on a GPU).
ERROR_LOG = "ALEXNET_TRITON_ERROR_LOG"


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm()).item()


def typical_magnitude(ref: torch.Tensor) -> torch.Tensor:
    """Each element's magnitude where the op gives none: its own size plus the tensor's mean size, so that an element
    that cancels to near zero is judged at the scale its rounding error has (that of the terms that cancelled)."""
    ref = ref.detach().double().abs()
    return ref + ref.mean()


def elementwise_error(
    out: torch.Tensor, ref: torch.Tensor, magnitude: torch.Tensor | None = None
) -> tuple[float, tuple[int, ...]]:
    """max |out - ref| / magnitude over the elements (magnitude: typical_magnitude(ref) unless given), and where.
    An element equal to its reference has error 0 whatever its magnitude (0 included)."""
    out, ref = out.detach().double(), ref.detach().double()
    magnitude = typical_magnitude(ref) if magnitude is None else magnitude.detach().double().expand_as(ref)
    diff = (out - ref).abs()
    error = torch.where(diff == 0, 0.0, diff / magnitude)
    if error.numel() == 0:
        return 0.0, ()
    flat = int(error.argmax())
    return error.flatten()[flat].item(), tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), error.shape))


def assert_close(
    out: torch.Tensor,
    ref: torch.Tensor,
    tol: float,
    what: str,
    *,
    elementwise: float | None = None,
    magnitude: torch.Tensor | None = None,
) -> None:
    """out against its float64 reference: same shape, every element finite, relative norm error below tol, and, when
    tol is a Tolerance (TOLERANCE's are) or elementwise is given, every element within elementwise of its magnitude
    (typical_magnitude(ref) unless the op's own per-element magnitude is given)."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: {(~torch.isfinite(out)).sum().item()} non-finite elements"
    assert ref.norm() > 0, f"{what}: the reference is all zeros, so the comparison would prove nothing"
    if elementwise is None:
        elementwise = getattr(tol, "elementwise", None)
    err = relative_error(out, ref)
    elem_err, where = elementwise_error(out, ref, magnitude)
    _log_errors(what, tol, err, elementwise, elem_err)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:.3g}"
    if elementwise is not None:
        o, r = out[where].item(), ref[where].item()
        assert elem_err <= elementwise, (
            f"{what}: element {where} is {o:.6g}, the reference {r:.6g}: off by {elem_err:.3g} of its magnitude "
            f"> {elementwise:.3g} (relative norm error {err:.3g})"
        )


def _log_errors(what: str, tol: float, err: float, elementwise: float | None, elem_err: float) -> None:
    path = os.environ.get(ERROR_LOG)
    if not path:
        return
    record = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0],
        "what": what,
        "precision": getattr(tol, "name", None),
        "norm": err,
        "norm_bound": float(tol),
        "elementwise": elem_err,
        "elementwise_bound": elementwise,
    }
    with open(path, "a") as log:
        log.write(json.dumps(record) + "\n")


def summarize_error_log(path: str) -> str:
    """Per precision in an ERROR_LOG file: the comparisons, the largest norm and elementwise errors and the test that
    gave each, against the bounds."""
    worst: dict = {}
    with open(path) as log:
        for line in log:
            r = json.loads(line)
            key = r["precision"] or f"plain {r['norm_bound']:g}"
            entry = worst.setdefault(key, {"count": 0, "norm": (0.0, ""), "elementwise": (0.0, "")})
            entry["count"] += 1
            for measure in ("norm", "elementwise"):
                if r[measure] >= entry[measure][0]:
                    entry[measure] = (r[measure], f"{r['test']} {r['what']}")
            entry["bounds"] = (r["norm_bound"], r["elementwise_bound"])
    lines = []
    for key, e in sorted(worst.items(), key=lambda item: str(item[0])):
        norm_bound, elem_bound = e["bounds"]
        lines.append(
            f"{key}: {e['count']} comparisons\n"
            f"  norm        {e['norm'][0]:.3g} (bound {norm_bound:.3g})  {e['norm'][1]}\n"
            f"  elementwise {e['elementwise'][0]:.3g} (bound {elem_bound})  {e['elementwise'][1]}"
        )
    return "\n".join(lines)


def away_from_kink(grad: torch.Tensor, pre_activation: torch.Tensor, tol: float) -> torch.Tensor:
    """Zero the incoming gradient where the pre-activation is so close to 0 that rounding at the
    tested precision may put it on the other side of ReLU's kink than the float64 reference; there
    the derivative itself is undefined up to rounding. Everywhere else the gradient is compared."""
    margin = 10 * tol * pre_activation.std()
    return grad * (pre_activation.abs() > margin)


def check_input_gradient(op, ref_op, x: torch.Tensor, tol: float, *, grad_view=None):
    """op(x) and its gradient against ref_op on x in float64 (assert_close, so with TOLERANCE's elementwise bound
    too). grad_view, if given, turns the incoming gradient into a non-contiguous view of the same values."""
    x.requires_grad_(True)
    out = op(x)
    x64 = x.detach().double().requires_grad_(True)
    ref = ref_op(x64)
    assert out.dtype == x.dtype
    assert_close(out, ref, tol, "output")
    # The incoming gradient as the op receives it, rounded to its dtype, so the reference's gradient is of the same
    # values and the comparison measures the op's rounding, not the test's.
    grad = torch.randn_like(ref).to(out.dtype).double()
    grad_in = grad.to(out.dtype)
    if grad_view is not None:
        grad_in = grad_view(grad_in)
        assert not grad_in.is_contiguous() and torch.equal(grad_in, grad.to(out.dtype))
    (grad_x,) = torch.autograd.grad(out, x, grad_in)
    (ref_grad_x,) = torch.autograd.grad(ref, x64, grad)
    assert grad_x.dtype == x.dtype
    assert_close(grad_x, ref_grad_x, tol, "input gradient")
    return out, grad_x


def every_other(g: torch.Tensor) -> torch.Tensor:
    """The same values as g, as every other element of a buffer twice as wide (non-contiguous)."""
    wide = torch.empty(*g.shape[:-1], 2 * g.shape[-1], dtype=g.dtype, device=g.device)
    wide[..., ::2] = g
    return wide[..., ::2]


def saved_tensors(fn):
    """Run fn() and return its result and the tensors autograd saved for backward while it ran."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, saved


def reference_backend_env(**extra: str) -> dict[str, str]:
    """Environment for a fresh process that runs the plain-PyTorch backend: no interpreter, no GPU."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    return env | {"CUDA_VISIBLE_DEVICES": ""} | extra


# ---- TF32: every test chooses its precision -------------------------------------------------------


def _legacy_tf32_switches() -> tuple:
    """cuDNN's allow_tf32 (which our conv kernels follow, _common.use_tf32) and cuBLAS's."""
    return torch.backends.cudnn, torch.backends.cuda.matmul


def _set_legacy_tf32(switch, on: bool) -> None:
    """switch.allow_tf32 = on, leaving it untouched where it already is (so PyTorch's state is not rewritten
    into another spelling of the same value: cuBLAS's "none" would become "ieee")."""
    try:
        if switch.allow_tf32 == on:
            return
    except RuntimeError:  # legacy and new settings mixed (tf32_settings): setting the legacy flag unites them
        pass
    switch.allow_tf32 = on


def tf32_settings() -> list[tuple[object, str, object]]:
    """(owner, attribute, value) of each setting that decides whether fp32 cuDNN convolutions (and ours) and cuBLAS
    matmuls may round to TF32, as it is now, in the order restore_tf32_settings sets them back.

    The legacy allow_tf32 flags, which the kernels read, where they can be read; then, in PyTorch >= 2.9, the
    per-backend fp32_precision strings (the broad "cuda" one before the narrow ones it overwrites), of which the
    legacy flags are views. Those strings say what the flags cannot: the new API can set cuDNN's conv and rnn
    apart, or cuBLAS's new setting apart from its legacy one, and PyTorch 2.14 then refuses to read the legacy
    flag; restored last, they bring such a state back exactly."""
    cudnn, matmul = _legacy_tf32_switches()
    settings = []
    for switch in (cudnn, matmul):
        try:
            settings.append((switch, "allow_tf32", switch.allow_tf32))
        except RuntimeError:  # set apart through the new API: its strings below hold the state
            pass
    conv, rnn = getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)
    owners = (cudnn, conv, rnn, matmul)
    if all(hasattr(owner, "fp32_precision") for owner in owners):
        settings += [(owner, "fp32_precision", owner.fp32_precision) for owner in owners]
    return settings


def restore_tf32_settings(settings: list[tuple[object, str, object]]) -> None:
    """Set back what tf32_settings saved, touching only what differs."""
    for owner, name, value in settings:
        if name == "allow_tf32":
            _set_legacy_tf32(owner, value)
        elif getattr(owner, name) != value:
            setattr(owner, name, value)


def allow_tf32(on: bool) -> None:
    """Let fp32 cuDNN convolutions (and so our conv kernels) and cuBLAS matmuls use TF32, or forbid it."""
    for switch in _legacy_tf32_switches():
        _set_legacy_tf32(switch, on)


@contextlib.contextmanager
def tf32_off_until_allowed() -> Iterator[Callable[[bool], None]]:
    """TF32 off (true fp32) for cuDNN convolutions, our conv kernels and cuBLAS matmuls until the body turns it
    on with the allow_tf32 it is given; PyTorch's settings as they were on exit. PyTorch's default lets cuDNN
    convolutions, and so our kernels, use TF32, which fp32's tolerance does not allow."""
    saved = tf32_settings()
    try:
        allow_tf32(False)
        yield allow_tf32
    finally:
        restore_tf32_settings(saved)


if __name__ == "__main__":
    print(summarize_error_log(sys.argv[1]))


def assert_within_a_grey_level(got: torch.Tensor, expected: torch.Tensor, stats: dict) -> None:
    """Normalized crops (..., 3, h, w) got equal expected but for a grey level on at most 1% of values: where
    PyTorch's uint8 resize (fixed-point weights) and the crop kernel's fp32 sums round a half differently when
    rescaling (measured: 0.4% of values on pixel noise)."""
    levels = ((got - expected) / stats["scale"][:, None, None]).abs()
    assert levels.max() <= 1 + 1e-3, levels.max()
    assert (levels > 1e-3).double().mean() <= 0.01, (levels > 1e-3).double().mean()
