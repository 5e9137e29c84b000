"""Comparison helpers: relative error against a float64 reference, and tolerances per precision."""

import os

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
