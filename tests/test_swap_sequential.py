"""Neighbours in an nn.Sequential (alexnet_triton/swap/sequential.py): a conv and the ReLU run right after it
become Conv2dReLU + Identity and back, an LRN and the max-pool after it LRNMaxPool2d + Identity; pairs the fused
op would not compute exactly, shared or hooked modules, and Sequentials with their own forward are left as they
were, with the reason."""

import pytest
import torch
from swap_helpers import DTYPE, assert_same_function, outputs_and_gradients, reasons
from torch import nn

import alexnet_triton as at
from alexnet_triton.swap import Swapped


class Branches(nn.Sequential):
    """A Sequential whose forward does not run its children one after the other."""

    def forward(self, x):
        return torch.cat([branch(x) for branch in self], dim=1)


def test_children_of_a_sequential_with_its_own_forward_are_no_pair(device):
    model = nn.Sequential(Branches(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())).to(device, DTYPE)
    x = torch.randn(1, 3, 5, 5, device=device, dtype=DTYPE)
    grad = torch.randn(1, 7, 5, 5, device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)

    assert at.swap_fused_ops(model) is model
    assert [type(m) for m in model[0]] == [nn.Conv2d, nn.ReLU]
    assert reasons(model.fused_ops_report) == {"0.0": "not followed by ReLU: in forward its output goes to cat"}
    assert_same_function(model, x, grad, before)


class SubclassedPool(nn.MaxPool2d):
    """A subclass may compute something else in forward, so it is never swapped."""


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own conv, before and after
def test_configurations_the_fused_ops_do_not_compute_are_left_as_they_were(device):
    model = nn.Sequential(  # 16 channels: no layer without a positive output (and gradient) in 20,000 draws
        nn.Conv2d(3, 16, 3, dilation=2),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Dropout(0.2, inplace=True),
        nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(16, 16, 2, padding="same"),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 16, 1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        SubclassedPool(2),
    )
    model = model.to(device, DTYPE).eval()
    structure = repr(model)
    x = torch.randn(1, 3, 13, 13, device=device, dtype=DTYPE)
    grad = torch.randn_like(model(x))
    before = outputs_and_gradients(model, x, grad)

    swapped = at.swap_fused_ops(model)

    assert swapped is model and repr(model) == structure
    assert all(type(m).__module__.startswith("torch.nn") for m in model[:-1])
    report = model.fused_ops_report
    assert report.swapped == [] and not report.traced
    assert reasons(report) == {
        "0": "Conv2dReLU supports dilation=1 only, got dilation=(2, 2)",
        "2": "MaxPool2d supports ceil_mode=False only",
        "3": "Dropout(inplace=True) is not supported: the fused op writes a new tensor",
        "4": "Conv2dReLU supports padding_mode='zeros' only, got 'reflect'",
        "6": "Conv2dReLU supports padding='same' with odd kernels only (an even one pads unevenly), "
        "got kernel_size=(2, 2)",
        "8": "not followed by ReLU (next: nn.BatchNorm2d)",
        "11": "a subclass of nn.MaxPool2d: its forward may differ",
    }
    assert_same_function(model, x, grad, before)


def test_hooks_are_kept_and_shared_or_hooked_pairs_are_left(device):
    shared_relu = nn.ReLU()
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 1),
        shared_relu,
        nn.Conv2d(4, 4, 1),
        shared_relu,
    ).to(device)
    calls = []
    model[0].register_forward_hook(lambda module, args, out: calls.append("conv"))
    model[2].register_forward_hook(lambda module, args, out: calls.append("pool"))

    at.swap_fused_ops(model)

    assert [type(m) for m in model[:4]] == [nn.Conv2d, nn.ReLU, at.nn.MaxPool2d, nn.Conv2d]
    assert reasons(model.fused_ops_report) == {
        "0": "has hooks, which would see other tensors once fused",
        "3": "the ReLU after it is used at 2 places in the model",
        "5": "the ReLU after it is used at 2 places in the model",
    }
    model(torch.randn(1, 3, 8, 8, device=device))
    assert calls == ["conv", "pool"], "the swapped pool keeps its hook"


def test_unswap_turns_a_fused_conv_and_an_identity_into_conv_and_relu(device):
    model = nn.Sequential(at.nn.Conv2dReLU(3, 4, 3), nn.Identity()).to(device, DTYPE)
    x = torch.randn(1, 3, 5, 5, device=device, dtype=DTYPE)
    grad = torch.randn(1, 4, 3, 3, device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)

    at.unswap_fused_ops(model)

    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU] and not model[1].inplace
    assert_same_function(model, x, grad, before)


def test_unswap_leaves_a_pair_whose_identity_has_hooks():
    model = at.swap_fused_ops(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    model[1].register_forward_hook(lambda module, args, out: None)

    at.unswap_fused_ops(model)

    assert [type(m) for m in model] == [at.nn.Conv2dReLU, nn.Identity]
    assert reasons(model.fused_ops_report) == {
        "0": "the Identity after it has hooks, which would see other tensors once fused"
    }


def lrn_pool_cnn(device, pool: nn.MaxPool2d) -> nn.Sequential:
    """For 9x9 inputs: conv, ReLU, LRN and the pool given, then a linear layer."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=2.0),
        pool,
        nn.Flatten(),
    )
    with torch.no_grad():
        features = model(torch.zeros(1, 3, 9, 9)).shape[1]
    return model.append(nn.Linear(features, 2)).to(device, DTYPE)


def test_lrn_then_max_pool_becomes_one_fused_module_and_back(device):
    model = lrn_pool_cnn(device, nn.MaxPool2d(3, 2, padding=1))
    structure = repr(model)
    x = torch.randn(2, 3, 9, 9, device=device, dtype=DTYPE)
    grad = torch.randn(2, 2, device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)

    assert at.swap_fused_ops(model) is model

    assert [type(m) for m in model[:4]] == [at.nn.Conv2dReLU, nn.Identity, at.nn.LRNMaxPool2d, nn.Identity]
    fused = model[2]
    assert (fused.size, fused.alpha, fused.beta, fused.k) == (3, 1e-2, 0.75, 2.0)
    assert (fused.kernel_size, fused.stride, fused.padding) == (3, 2, 1), "the pool's arguments, moved over"
    report = model.fused_ops_report
    assert report.swapped[1] == Swapped(
        "2", "nn.LocalResponseNorm + nn.MaxPool2d (3)", "at.nn.LRNMaxPool2d + nn.Identity"
    )
    assert report.left == []
    assert_same_function(model, x, grad, before)

    assert at.unswap_fused_ops(model) is model

    assert repr(model) == structure
    assert [type(m) for m in model[2:4]] == [nn.LocalResponseNorm, nn.MaxPool2d]
    assert not hasattr(model[2], "kernel_size"), "the LRN gives the pool's arguments back"
    assert model.fused_ops_report.swapped[1] == Swapped(
        "2", "at.nn.LRNMaxPool2d + nn.Identity (3)", "nn.LocalResponseNorm + nn.MaxPool2d"
    )
    assert_same_function(model, x, grad, before)


def test_an_lrn_whose_pool_is_not_fused_is_swapped_alone(device):
    # A pool the fused op does not compute, a pool with a hook, and the options: each LRN still becomes ours.
    ceil_mode = lrn_pool_cnn(device, nn.MaxPool2d(3, 2, ceil_mode=True))
    at.swap_fused_ops(ceil_mode)
    assert [type(m) for m in ceil_mode[2:4]] == [at.nn.LocalResponseNorm, nn.MaxPool2d]
    assert reasons(ceil_mode.fused_ops_report) == {"3": "MaxPool2d supports ceil_mode=False only"}

    hooked = lrn_pool_cnn(device, nn.MaxPool2d(3, 2))
    hooked[3].register_forward_hook(lambda module, args, out: None)
    at.swap_fused_ops(hooked)
    assert [type(m) for m in hooked[2:4]] == [at.nn.LocalResponseNorm, at.nn.MaxPool2d]

    no_pools = at.swap_fused_ops(lrn_pool_cnn(device, nn.MaxPool2d(3, 2)), max_pool=False)
    assert [type(m) for m in no_pools[2:4]] == [at.nn.LocalResponseNorm, nn.MaxPool2d]
    assert reasons(no_pools.fused_ops_report) == {"3": "max_pool=False"}

    no_lrn = at.swap_fused_ops(lrn_pool_cnn(device, nn.MaxPool2d(3, 2)), lrn=False)
    assert [type(m) for m in no_lrn[2:4]] == [nn.LocalResponseNorm, at.nn.MaxPool2d]
    assert reasons(no_lrn.fused_ops_report) == {"2": "lrn=False"}


def test_unswap_gives_a_fused_lrn_and_pool_built_by_hand_its_max_pool(device):
    # A conv first, so that the gradients compared reach a parameter.
    fused = at.nn.LRNMaxPool2d(3, (3, 2), 2, padding=1, alpha=1e-2, k=2.0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), fused, nn.Identity()).to(device, DTYPE)
    x = torch.randn(1, 3, 9, 9, device=device, dtype=DTYPE)
    grad = torch.randn_like(model(x))
    before = outputs_and_gradients(model, x, grad)

    at.unswap_fused_ops(model)

    assert [type(m) for m in model[1:]] == [nn.LocalResponseNorm, nn.MaxPool2d]
    assert repr(model[2]) == repr(nn.MaxPool2d((3, 2), 2, padding=1))
    assert_same_function(model, x, grad, before)
