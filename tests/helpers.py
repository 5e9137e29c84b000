"""Comparison helpers: relative error against a float64 reference, and tolerances per precision."""

import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Relative error ||out - ref|| / ||ref|| allowed per computation precision (see DESIGN.md, "Tests").
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
