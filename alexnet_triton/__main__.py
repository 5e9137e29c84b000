"""Self-check: ``python -m alexnet_triton`` runs each fused op once on this machine, forward and
backward at one of AlexNet's shapes (batch 2), against float64 PyTorch, and says which backend ran."""

import os
import time

import torch
import torch.nn.functional as F

import alexnet_triton as at


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

    conv_inputs = [randn(2, 96, 13, 13), randn(256, 48, 5, 5) / (48 * 25) ** 0.5, randn(256)]
    check(
        "conv2d_relu 96->256 5x5 pad 2 groups 2, 13x13",
        lambda x, w, b: at.conv2d_relu(x, w, b, padding=2, groups=2),
        lambda x, w, b: F.relu(F.conv2d(x, w, b, padding=2, groups=2)),
        conv_inputs,
        # Where the pre-activation is within fp32 rounding of 0, ReLU's derivative is a coin toss.
        grad_mask=lambda x, w, b: (F.conv2d(x, w, b, padding=2, groups=2).abs() > 1e-3).double(),
    )
    check(
        "local_response_norm (paper: n=5 k=2), 96 x 27x27",
        lambda x: at.local_response_norm(x, 5, 5e-4, 0.75, 2.0),
        lambda x: F.local_response_norm(x, 5, 5e-4, 0.75, 2.0),
        [randn(2, 96, 27, 27)],
    )
    check(
        "max_pool2d 3x3 stride 2, 96 x 55x55",
        lambda x: at.max_pool2d(x, 3, 2),
        lambda x: F.max_pool2d(x, 3, 2),
        [randn(2, 96, 55, 55)],
    )
    seed = int(torch.randint(0, 2**31, ()).item())
    dropped = at.dropout(randn(2, 4096), 0.5, seed=seed)
    print(f"{'dropout p=0.5 on 2 x 4096':<50} dropped fraction {(dropped == 0).float().mean().item():.3f}")


if __name__ == "__main__":
    main()
