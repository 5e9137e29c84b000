"""What the swap tests share: a model's outputs and gradients recorded and compared in float64, the
report's reasons by module name, and a small CNN with every kind of module the swap replaces."""

import torch
from helpers import TOLERANCE, assert_close
from torch import nn

import alexnet_triton as at

# float64 end to end: a ReLU input or a pool's runner-up within fp32 rounding of the winner would route
# a gradient differently in two correct implementations; in float64 that does not happen.
DTYPE = torch.float64
TOL = TOLERANCE[DTYPE]


def outputs_and_gradients(model: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """model(x) and the gradient of <model(x), grad> for every parameter, by name; the .grad fields are reset."""
    out = model(x)
    out.backward(grad)
    grads = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads


def assert_same_function(model: nn.Module, x: torch.Tensor, grad: torch.Tensor, before) -> None:
    """model computes the output and parameter gradients recorded in before for the same x and grad."""
    out_ref, grads_ref = before
    out, grads = outputs_and_gradients(model, x, grad)
    assert_close(out, out_ref, TOL, "output")
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        if grads_ref[name] is None:  # a parameter forward does not use
            assert g is None, name
        else:
            assert_close(g, grads_ref[name], TOL, f"gradient of {name}")


def reasons(report: at.SwapReport) -> dict[str, str]:
    """The modules left as they were, by qualified name, with the reason."""
    return {entry.name: entry.reason for entry in report.left}


def small_cnn(device) -> nn.Sequential:
    """For 9x9 inputs. Wide enough that default initialisation does not leave a layer with no positive output
    (no gradient to compare) in 40,000 draws."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(8, 16, 3, bias=False),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(16 * 2 * 2, 2),
    ).to(device, DTYPE)
