"""Self-check: ``python -m alexnet_triton`` runs each fused op once on this machine, forward and
backward, against float64 PyTorch, and says which backend ran."""

import os
import time

import torch
import torch.nn.functional as F

import alexnet_triton as at


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).norm() / ref.norm()).item()


def check_conv2d_relu(device: torch.device) -> None:
    # AlexNet's conv2 (both towers, groups=2) on a 13x13 map, batch 2.
    x = torch.randn(2, 96, 13, 13, device=device, requires_grad=True)
    w = (torch.randn(256, 48, 5, 5, device=device) / (48 * 25) ** 0.5).requires_grad_()
    b = torch.randn(256, device=device, requires_grad=True)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    pre = F.conv2d(x64, w64, b64, padding=2, groups=2)
    ref = F.relu(pre)
    # Where the pre-activation is within fp32 rounding of 0, ReLU's derivative is a coin toss; leave those out.
    grad = torch.randn_like(ref) * (pre.detach().abs() > 1e-3 * pre.detach().std())
    ref_grads = torch.autograd.grad(ref, (x64, w64, b64), grad)

    start = time.perf_counter()
    out = at.conv2d_relu(x, w, b, padding=2, groups=2)
    grads = torch.autograd.grad(out, (x, w, b), grad.float())
    seconds = time.perf_counter() - start
    errors = [_relative_error(a, r) for a, r in zip((out, *grads), (ref, *ref_grads), strict=True)]
    print(
        f"conv2d_relu  96->256 5x5 groups=2  {seconds:6.2f} s  relative error vs float64: "
        + "  ".join(f"{name} {e:.1e}" for name, e in zip(("out", "dx", "dw", "db"), errors, strict=True))
    )


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = at.backend(device)
    print(f"alexnet_triton {at.__version__}  torch {torch.__version__}  device {device}  backend {backend}")
    if backend == "torch" and os.environ.get("TRITON_INTERPRET") != "1":
        print("(no GPU: the plain-PyTorch reference runs; TRITON_INTERPRET=1 runs the Triton kernels on the CPU)")
    check_conv2d_relu(device)


if __name__ == "__main__":
    main()
