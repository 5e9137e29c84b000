"""Comparison helpers: relative error against a float64 reference, and tolerances per precision."""

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Relative error ||out - ref|| / ||ref|| allowed against a float64 reference, per precision the computation ran
# in: above what rounding at that precision gives (fp32 near 2e-7 on the tests' conv and LRN shapes; TF32 is
# expected near 3e-4, bf16 at 1e-3 to 1e-2) and below what a wrong index or a missed element gives. NaN never
# passes (assert_close checks finiteness first).
TOLERANCE = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    "tf32": 2e-3,
    torch.float16: 5e-3,
    torch.bfloat16: 2e-2,
}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double(), ref.detach().double()
    return ((out - ref).norm() / ref.norm()).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str) -> None:
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: {(~torch.isfinite(out)).sum().item()} non-finite elements"
    assert ref.norm() > 0, f"{what}: the reference is all zeros, so the comparison would prove nothing"
    err = relative_error(out, ref)
    assert err < tol, f"{what}: relative error {err:.3g} >= {tol:.3g}"


def away_from_kink(grad: torch.Tensor, pre_activation: torch.Tensor, tol: float) -> torch.Tensor:
    """Zero the incoming gradient where the pre-activation is so close to 0 that rounding at the
    tested precision may put it on the other side of ReLU's kink than the float64 reference; there
    the derivative itself is undefined up to rounding. Everywhere else the gradient is compared."""
    margin = 10 * tol * pre_activation.std()
    return grad * (pre_activation.abs() > margin)


def check_input_gradient(op, ref_op, x: torch.Tensor, tol: float, *, grad_view=None):
    """op(x) and its gradient against ref_op on x in float64. grad_view, if given, turns the incoming
    gradient into a non-contiguous view of the same values."""
    x.requires_grad_(True)
    out = op(x)
    x64 = x.detach().double().requires_grad_(True)
    ref = ref_op(x64)
    assert out.dtype == x.dtype
    assert_close(out, ref, tol, "output")
    grad = torch.randn_like(ref)
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
