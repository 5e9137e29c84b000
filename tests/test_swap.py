"""at.swap_fused_ops and at.unswap_fused_ops end to end (alexnet_triton/swap/__init__.py): torchvision models
compute the same in every output and gradient, parameters stay the same objects, optimizers and weights carry
over, a second swap changes nothing, and unswapping gives plain torch.nn modules back."""

from collections import Counter

import pytest
import torch
import torchvision
from helpers import assert_close
from swap_helpers import DTYPE, TOL, assert_same_function, outputs_and_gradients, reasons, small_cnn
from torch import nn

import alexnet_triton as at


@pytest.mark.parametrize(
    "build, size, convs, pools, dropouts",
    [
        # The least sizes whose feature maps survive every pool: alexnet ends at 1x1 before its
        # adaptive pool; vgg11 halves 32 five times.
        pytest.param(lambda: torchvision.models.alexnet(weights=None), 63, 5, 3, 2, id="alexnet"),
        pytest.param(lambda: torchvision.models.vgg11(weights=None, num_classes=10), 32, 8, 5, 2, id="vgg11"),
    ],
)
def test_torchvision_models_compute_the_same_after_the_swap(build, size, convs, pools, dropouts, device):
    model = build().to(device, DTYPE).eval()
    keys, parameters = list(model.state_dict()), dict(model.named_parameters())
    x = torch.randn(1, 3, size, size, device=device, dtype=DTYPE)
    grad = torch.randn(1, model(x).shape[1], device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)

    swapped = at.swap_fused_ops(model)

    assert swapped is model, "module pairs in Sequentials swap in place, without tracing"
    kinds = Counter(type(m) for m in model.modules())
    assert kinds[at.nn.Conv2dReLU] == kinds[nn.Identity] == convs
    assert kinds[at.nn.MaxPool2d] == pools and kinds[at.nn.Dropout] == dropouts
    assert kinds[nn.Conv2d] == kinds[nn.MaxPool2d] == kinds[nn.Dropout] == 0
    report = model.fused_ops_report
    assert len(report.swapped) == convs + pools + dropouts and report.left == [] and not report.traced
    assert list(model.state_dict()) == keys
    assert all(p is parameters[name] for name, p in model.named_parameters())
    assert not model.training
    assert_same_function(model, x, grad, before)


def test_options_leave_their_kind_of_module(device):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.LocalResponseNorm(3), nn.MaxPool2d(2), nn.Dropout())
    at.swap_fused_ops(model.to(device), conv_relu=False, dropout=False)
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, at.nn.LRNMaxPool2d, nn.Identity, nn.Dropout]
    assert reasons(model.fused_ops_report) == {"0": "conv_relu=False", "4": "dropout=False"}


def test_optimizer_built_before_the_swap_updates_the_swapped_model(device):
    model = small_cnn(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    weight = model[0].weight.detach().clone()
    at.swap_fused_ops(model).eval()
    assert type(model[0]) is at.nn.Conv2dReLU

    model(torch.randn(2, 3, 9, 9, device=device, dtype=DTYPE)).square().sum().backward()
    optimizer.step()

    assert model[0].weight.grad.norm() > 0 and not torch.equal(model[0].weight.detach(), weight)
    torch.testing.assert_close(model[0].weight.detach(), weight - 0.1 * model[0].weight.grad)


def test_pretrained_weights_load_before_or_after_the_swap(device):
    x = torch.randn(2, 3, 9, 9, device=device, dtype=DTYPE)
    plain = small_cnn(device).eval()
    swapped = at.swap_fused_ops(small_cnn(device)).eval()  # other random weights
    swapped.load_state_dict(plain.state_dict(), strict=True)
    assert_close(swapped(x), plain(x), TOL, "swapped model with the plain model's weights")

    fresh = small_cnn(device).eval()
    fresh.load_state_dict(swapped.state_dict(), strict=True)
    assert_close(fresh(x), swapped(x), TOL, "plain model with the swapped model's weights")


def test_a_second_swap_changes_nothing(device):
    model = at.swap_fused_ops(small_cnn(device))
    structure = repr(model)
    assert at.swap_fused_ops(model) is model
    assert repr(model) == structure and model.fused_ops_report.swapped == []
    assert {entry.reason for entry in model.fused_ops_report.left} == {"already an alexnet_triton module"}


def test_alexnet_triton_network_is_already_fused():
    model = at.AlexNet(10, image_size=67)
    at.swap_fused_ops(model)
    assert model.fused_ops_report.swapped == [] and len(model.fused_ops_report.left) > 0
    at.unswap_fused_ops(model)
    left = reasons(model.fused_ops_report)
    assert left["towers.0.conv1"] == "not followed by an nn.Identity in a Sequential, to turn back into its ReLU"
    assert left["towers.0.norm1"] == "not followed by an nn.Identity in a Sequential, to turn back into its MaxPool2d"
    assert type(model.towers[0].pool5) is nn.MaxPool2d


def test_unswap_restores_plain_modules_with_the_same_parameters(device):
    model = small_cnn(device).eval()
    structure, parameters = repr(model), list(model.parameters())
    x = torch.randn(2, 3, 9, 9, device=device, dtype=DTYPE)
    grad = torch.randn(2, 2, device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)
    at.swap_fused_ops(model)
    assert type(model[0]) is at.nn.Conv2dReLU and type(model[2]) is at.nn.LRNMaxPool2d
    assert_same_function(model, x, grad, before)

    assert at.unswap_fused_ops(model) is model

    assert repr(model) == structure, "ReLU(inplace=True) comes back as it was"
    assert all(type(m).__module__.startswith("torch.nn") for m in model.modules())
    assert all(p is q for p, q in zip(model.parameters(), parameters, strict=True))
    assert len(model.fused_ops_report.swapped) == 4 and model.fused_ops_report.left == []
    assert_same_function(model, x, grad, before)


class SubclassedFusedPool(at.nn.MaxPool2d):
    """A subclass of a fused module may compute something else in forward, so it is never turned back."""


def test_unswap_leaves_subclasses_of_fused_modules():
    model = nn.Sequential(SubclassedFusedPool(2), at.nn.MaxPool2d(2))
    at.unswap_fused_ops(model)
    assert [type(m) for m in model] == [SubclassedFusedPool, nn.MaxPool2d]
    assert reasons(model.fused_ops_report) == {"0": "a subclass of at.nn.MaxPool2d: its forward may differ"}


def test_swapped_dropout_drops_p_and_scales_the_rest_in_training(device):
    model = at.swap_fused_ops(nn.Sequential(nn.Dropout(0.3)).to(device))
    assert type(model[0]) is at.nn.Dropout and model.training
    n = 20_000
    out = model(torch.ones(n, device=device))
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - 0.3) < 5 * (0.3 * 0.7 / n) ** 0.5
    kept = out[out != 0]
    assert torch.equal(kept, torch.full_like(kept, 1 / 0.7))
    assert torch.equal(model.eval()(out), out), "the identity in eval mode"


def test_bad_model_names_the_argument():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        at.swap_fused_ops("alexnet")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got Tensor"):
        at.unswap_fused_ops(torch.ones(1))
