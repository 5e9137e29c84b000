"""Self-check: ``python -m alexnet_triton`` runs each fused op once on this machine, forward and
backward at one of AlexNet's shapes (batch 2), against float64 PyTorch, and says which backend ran."""

import os
import time

import torch
import torch.nn.functional as F

import alexnet_triton as at
from alexnet_triton.model import DROPOUT_P, OVERLAPPING_POOL, PAPER_LRN, layer_shapes


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def check(name: str, op, reference, inputs: list[torch.Tensor], grad_mask=None) -> None:
    """Print op's time and its relative error against reference in float64, value and gradients."""
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref = reference(*inputs64)
    grad = torch.randn_like(ref)
    if grad_mask is not None:
        grad = grad * grad_mask(*inputs64)
    ref_grads = torch.autograd.grad(ref, inputs64, grad)

    inputs = [t.detach().requires_grad_() for t in inputs]
    start = time.perf_counter()
    out = op(*inputs)
    grads = torch.autograd.grad(out, inputs, grad.to(out.dtype))
    if out.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    errors = [_relative_error(a, r) for a, r in zip((out, *grads), (ref, *ref_grads), strict=True)]
    labels = ["out"] + [f"d{i}" for i in range(len(grads))]
    print(f"{name:<50} {seconds:6.2f} s   " + "  ".join(f"{k} {e:.1e}" for k, e in zip(labels, errors, strict=True)))


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = at.backend(device)
    print(f"alexnet_triton {at.__version__}  torch {torch.__version__}  device {device}  backend {backend}")
    if backend == "torch" and os.environ.get("TRITON_INTERPRET") != "1":
        print("(no GPU: the plain-PyTorch reference runs; TRITON_INTERPRET=1 runs the Triton kernels on the CPU)")
    print("relative error against float64 PyTorch (out = value, d0.. = gradient of each input):")

    def randn(*shape):
        return torch.randn(*shape, device=device)

    # AlexNet's layers with both towers in one tensor, as its grouped twin holds them; conv2 and LRN at smaller
    # maps than the network's (27x27 and 55x55), which keeps the interpreter quick.
    conv1, conv2, *_, fc6, _, _ = layer_shapes()
    c1, c2, k, pad = 2 * conv1.out_channels, 2 * conv2.out_channels, conv2.kernel, conv2.layer.padding
    side = conv2.pooled_size
    conv_inputs = [randn(2, c1, side, side), randn(c2, c1 // 2, k, k) / (c1 // 2 * k * k) ** 0.5, randn(c2)]
    check(
        f"conv2d_relu {c1}->{c2} {k}x{k} pad {pad} groups 2, {side}x{side}",
        lambda x, w, b: at.conv2d_relu(x, w, b, padding=pad, groups=2),
        lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=pad, groups=2)),
        conv_inputs,
        # Where the pre-activation is within fp32 rounding of 0, ReLU's derivative is a coin toss.
        grad_mask=lambda x, w, b: (F.conv2d(x, w, b, padding=pad, groups=2).abs() > 1e-3).double(),
    )
    side = conv1.pooled_size
    check(
        f"local_response_norm (paper: n=5 k=2), {c1} x {side}x{side}",
        lambda x: at.local_response_norm(x, **PAPER_LRN),
        lambda x: F.local_response_norm(x, **PAPER_LRN),
        [randn(2, c1, side, side)],
    )
    pool_kernel, pool_stride = OVERLAPPING_POOL
    side = conv1.output_size
    check(
        f"max_pool2d {pool_kernel}x{pool_kernel} stride {pool_stride}, {c1} x {side}x{side}",
        lambda x: at.max_pool2d(x, pool_kernel, pool_stride),
        lambda x: F.max_pool2d(x, pool_kernel, pool_stride),
        [randn(2, c1, side, side)],
    )
    seed = int(torch.randint(0, 2**31, ()).item())
    features = 2 * fc6.out_channels
    dropped = at.dropout(randn(2, features), DROPOUT_P, seed=seed)
    label = f"dropout p={DROPOUT_P} on 2 x {features}"
    print(f"{label:<50} dropped fraction {(dropped == 0).float().mean().item():.3f}")


if __name__ == "__main__":
    main()
