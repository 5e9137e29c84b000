"""Self-check: ``python -m alexnet_triton`` runs each public op (conv2d_relu, local_response_norm, max_pool2d,
lrn_max_pool2d, dropout) once on this machine, forward and backward at one of AlexNet's shapes (batch 2), against
float64 PyTorch, and says which backend ran. It exits 0 when every op matches, and 1 with a line naming each op
that does not (a relative error at or above the tolerance, NaN, a wrong shape, or dropout's dropped fraction)."""

import os
import sys
import time

import torch
import torch.nn.functional as F

import alexnet_triton as at
from alexnet_triton.kernels import _common
from alexnet_triton.model import DROPOUT_P, OVERLAPPING_POOL, PAPER_LRN, layer_shapes

# Relative error ||out - ref|| / ||ref|| allowed against float64, as the tests allow it (tests/helpers.py): fp32
# rounding on these shapes is near 1e-7; TF32 (fp32 convolutions on a GPU where PyTorch allows it) near 3e-4.
FP32_TOLERANCE = 1e-5
TF32_TOLERANCE = 2e-3
# Dropout's dropped fraction may stray this far from p: for 2 x 4096 elements, 9 standard deviations.
DROPPED_FRACTION_SLACK = 0.05


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.detach().double() - ref.detach()).norm() / ref.detach().norm()).item()


def check(name: str, op, reference, inputs: list[torch.Tensor], tolerance: float, grad_mask=None) -> bool:
    """Print op's time and its relative error against reference in float64, value and gradients, and whether
    each is under tolerance; returns whether all are."""
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref = reference(*inputs64)
    grad = torch.randn_like(ref)
    if grad_mask is not None:
        grad = grad * grad_mask(*inputs64)
    ref_grads = torch.autograd.grad(ref, inputs64, grad)

    inputs = [t.detach().requires_grad_() for t in inputs]
    start = time.perf_counter()
    out = op(*inputs)
    if out.shape != ref.shape:
        print(f"{name:<62} MISMATCH: output shape {tuple(out.shape)}, float64 PyTorch's {tuple(ref.shape)}")
        return False
    grads = torch.autograd.grad(out, inputs, grad.to(out.dtype))
    if out.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    labels = ["out"] + [f"d{i}" for i in range(len(grads))]
    errors = [_relative_error(a, r) for a, r in zip((out, *grads), (ref, *ref_grads), strict=True)]
    bad = [label for label, error in zip(labels, errors, strict=True) if not error < tolerance]  # NaN is bad
    verdict = "ok" if not bad else f"MISMATCH: {', '.join(bad)} at or above {tolerance:.0e}"
    values = "  ".join(f"{label} {error:.1e}" for label, error in zip(labels, errors, strict=True))
    print(f"{name:<62} {seconds:6.2f} s   {values}   {verdict}")
    return not bad


def clear_maxima(values: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """1 for each pooling window whose maximum beats the runner-up by more than rounding could blur (so the
    fp32 op and the float64 reference pick the same element), else 0; shaped as the pool's output."""
    n, c, h, w = values.shape
    windows = F.unfold(values.reshape(n * c, 1, h, w), kernel, stride=stride)  # (n*c, kernel^2, windows)
    top = windows.topk(2, dim=1).values
    gap = top[:, 0] - top[:, 1]
    side = (h - kernel) // stride + 1
    return (gap > 1e-4 * values.std()).double().reshape(n, c, side, -1)


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = at.backend(device)
    print(f"alexnet_triton {at.__version__}  torch {torch.__version__}  device {device}  backend {backend}")
    if backend == "torch" and os.environ.get("TRITON_INTERPRET") != "1":
        print("(no GPU: the plain-PyTorch reference runs; TRITON_INTERPRET=1 runs the Triton kernels on the CPU)")
    # The interpreter ignores TF32 (its tl.dot multiplies in fp32); a GPU rounds fp32 convolutions to TF32 where
    # PyTorch lets cuDNN do so, and so do ours.
    tf32 = device.type == "cuda" and _common.use_tf32(torch.float32)
    conv_tolerance = TF32_TOLERANCE if tf32 else FP32_TOLERANCE
    print(
        f"relative error against float64 PyTorch (out = value, d0.. = gradient of each input), under "
        f"{FP32_TOLERANCE:.0e}{f' ({TF32_TOLERANCE:.0e} for conv2d_relu: TF32 is allowed)' if tf32 else ''}:"
    )

    def randn(*shape):
        return torch.randn(*shape, device=device)

    results = {}
    # AlexNet's layers with both towers in one tensor, as its grouped twin holds them; conv2 and LRN at smaller
    # maps than the network's (27x27 and 55x55), which keeps the interpreter quick.
    conv1, conv2, *_, fc6, _, _ = layer_shapes()
    c1, c2, k, pad = 2 * conv1.out_channels, 2 * conv2.out_channels, conv2.kernel, conv2.layer.padding
    side = conv2.pooled_size
    conv_inputs = [randn(2, c1, side, side), randn(c2, c1 // 2, k, k) / (c1 // 2 * k * k) ** 0.5, randn(c2)]

    def away_from_kink(x, w, b):
        # Where the pre-activation is within rounding of 0, ReLU's derivative is a coin toss.
        pre_activation = F.conv2d(x, w, b, padding=pad, groups=2)
        return (pre_activation.abs() > 10 * conv_tolerance * pre_activation.std()).double()

    results["conv2d_relu"] = check(
        f"conv2d_relu {c1}->{c2} {k}x{k} pad {pad} groups 2, {side}x{side}",
        lambda x, w, b: at.conv2d_relu(x, w, b, padding=pad, groups=2),
        lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=pad, groups=2)),
        conv_inputs,
        conv_tolerance,
        grad_mask=away_from_kink,
    )
    side = conv1.pooled_size
    results["local_response_norm"] = check(
        f"local_response_norm (paper: n=5 k=2), {c1} x {side}x{side}",
        lambda x: at.local_response_norm(x, **PAPER_LRN),
        lambda x: F.local_response_norm(x, **PAPER_LRN),
        [randn(2, c1, side, side)],
        FP32_TOLERANCE,
    )
    pool_kernel, pool_stride = OVERLAPPING_POOL
    side = conv1.output_size
    results["max_pool2d"] = check(
        f"max_pool2d {pool_kernel}x{pool_kernel} stride {pool_stride}, {c1} x {side}x{side}",
        lambda x: at.max_pool2d(x, pool_kernel, pool_stride),
        lambda x: F.max_pool2d(x, pool_kernel, pool_stride),
        [randn(2, c1, side, side)],
        FP32_TOLERANCE,
    )
    lrn_arguments = {key: value for key, value in PAPER_LRN.items() if key != "size"}
    results["lrn_max_pool2d"] = check(
        f"lrn_max_pool2d (paper's LRN, then {pool_kernel}x{pool_kernel} stride {pool_stride}), {c1} x {side}x{side}",
        lambda x: at.lrn_max_pool2d(x, PAPER_LRN["size"], pool_kernel, pool_stride, **lrn_arguments),
        lambda x: F.max_pool2d(F.local_response_norm(x, **PAPER_LRN), pool_kernel, pool_stride),
        [randn(2, c1, side, side)],
        FP32_TOLERANCE,
        # Where two LRN values of a window are within fp32 rounding, either may be its maximum.
        grad_mask=lambda x: clear_maxima(F.local_response_norm(x, **PAPER_LRN), pool_kernel, pool_stride),
    )
    results["dropout"] = check_dropout(randn(2, 2 * fc6.out_channels), DROPOUT_P)

    failed = [name for name, passed in results.items() if not passed]
    if failed:
        print(f"self-check FAILED: {', '.join(failed)} did not match float64 PyTorch on {device} ({backend})")
        return 1
    print(f"self-check passed: all {len(results)} ops match float64 PyTorch on {device} ({backend})")
    return 0


def check_dropout(x: torch.Tensor, p: float) -> bool:
    """Dropout with one seed: the fraction it drops is near p, and its value and gradient are the input's and the
    incoming gradient's, masked by what it kept and scaled by 1 / (1 - p) (the same seed keeps the same mask)."""
    seed = int(torch.randint(0, 2**31, ()).item())
    kept = (at.dropout(x, p, seed=seed) != 0).double()  # randn's inputs are never 0
    dropped = 1 - kept.mean().item()
    name = f"dropout p={p} on {' x '.join(map(str, x.shape))}"
    if not abs(dropped - p) < DROPPED_FRACTION_SLACK:
        print(f"{name:<62} MISMATCH: dropped fraction {dropped:.3f}, expected {p} +- {DROPPED_FRACTION_SLACK}")
        return False
    print(f"{name:<62} dropped fraction {dropped:.3f}   ok")
    return check(
        f"dropout p={p}, the same seed again",
        lambda t: at.dropout(t, p, seed=seed),
        lambda t: t * kept / (1 - p),
        [x],
        FP32_TOLERANCE,
    )


if __name__ == "__main__":
    sys.exit(main())
