"""at.swap_fused_ops and at.unswap_fused_ops: torchvision models compute the same in every output and
gradient, parameters stay the same objects, ReLU calls in forward fuse through torch.fx, and what the
fused ops cannot compute is left as it was, with the reason."""

import logging
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import torchvision
from helpers import TOLERANCE, assert_close
from torch import fx, nn

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
    return {entry.name: entry.reason for entry in report.left}


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


class ReluInForward(nn.Module):
    """Convs whose ReLU is a call in forward, spelled five ways, and one whose output is read twice;
    registered in another order than forward uses them, which the traced model's state_dict must not
    follow. 16 channels: with fewer, default initialisation sometimes gives a layer with no positive
    output, and gradients of zero prove nothing."""

    def __init__(self):
        super().__init__()
        width = 16
        self.head = nn.Linear(width * 2 * 2, 3)
        self.skip = nn.Conv2d(width, width, 1)
        self.conv5 = nn.Conv2d(width, width, 1)
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, stride=2))  # the ReLU comes after the Sequential
        self.conv3 = nn.Conv2d(width, width, 1, bias=False)
        self.conv4 = nn.Conv2d(width, width, 1)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()

    def forward(self, x):
        x = F.relu(self.conv1(x))  # 9x9
        x = F.relu(self.block(x), inplace=True)  # 4x4
        x = torch.relu(self.conv3(x))
        x = self.pool(self.conv4(x).relu_())  # 2x2
        x = self.act(self.conv5(x))
        y = self.skip(x)
        return self.head((F.relu(y) + y).flatten(1))


def test_relu_calls_in_forward_fuse_through_fx(device):
    model = ReluInForward().to(device, DTYPE).eval()
    keys, names = list(model.state_dict()), [name for name, _ in model.named_parameters()]
    x = torch.randn(2, 3, 9, 9, device=device, dtype=DTYPE)
    grad = torch.randn(2, 3, device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)

    traced = at.swap_fused_ops(model)

    assert isinstance(traced, fx.GraphModule) and traced is not model
    report = traced.fused_ops_report
    assert report.traced
    assert reasons(report) == {"skip": "not followed by ReLU: in forward its output goes to relu, add"}
    fused_convs = ["conv1", "block.0", "conv3", "conv4", "conv5"]
    assert {entry.name for entry in report.swapped} == {*fused_convs, "pool"}
    swapped_from = {entry.name: entry.before for entry in report.swapped}
    assert swapped_from["block.0"] == "nn.Conv2d + relu in forward"
    assert swapped_from["conv4"] == "nn.Conv2d + .relu_() in forward"
    assert swapped_from["conv5"] == "nn.Conv2d + act (nn.ReLU) in forward"
    for name in fused_convs:
        conv = traced.get_submodule(name)
        assert type(conv) is at.nn.Conv2dReLU
        assert conv.weight is model.get_submodule(name).weight and conv.bias is model.get_submodule(name).bias
        assert type(model.get_submodule(name)) is nn.Conv2d, "the model passed in keeps its ReLU calls"
    relu_calls = [n for n in traced.graph.nodes if n.target in (F.relu, torch.relu, "relu_") or n.target == "act"]
    assert len(relu_calls) == 1 and relu_calls[0].args[0].target == "skip"
    assert list(traced.state_dict()) == keys, "same keys, in the same order"
    assert [name for name, _ in traced.named_parameters()] == names
    assert not any(m.training for m in traced.modules())
    assert_same_function(traced, x, grad, before)
    assert_same_function(model, x, grad, before)  # still right: only its pool changed class


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        if x.sum() > 0:  # a Python branch on a tensor's value: symbolic tracing cannot follow it
            x = -x
        return self.pool(F.relu(self.conv(x)))


class TrainingDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = F.relu(self.conv(x))
        return x * 2 if self.training else x


class UnusedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.spare = nn.Linear(2, 2)

    def forward(self, x):
        return F.relu(self.conv(x))


class OutputReadTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return F.relu(y) + y


class OtherActivation(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return F.gelu(self.conv(x))


class HookedReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU()
        self.act.register_forward_hook(lambda module, args, out: None)

    def forward(self, x):
        return self.act(self.conv(x))


class ExtraBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.conv.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x):
        return F.relu(self.conv(x)) * self.conv.scale


class HookedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.register_forward_hook(lambda module, args, out: None)

    def forward(self, x):
        return F.relu(self.conv(x))


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(F.relu(self.conv(x))))


@pytest.mark.parametrize(
    "model_class, reason",
    [
        (DataDependent, "does not trace with torch.fx (TraceError"),
        (TrainingDependent, "depends on training mode"),
        (UnusedLayer, "forward does not use spare.weight, spare.bias"),
        (OutputReadTwice, "not followed by ReLU: in forward its output goes to relu, add"),
        (OtherActivation, "not followed by ReLU: in forward its output goes to gelu"),
        (HookedReLU, "not followed by ReLU: in forward its output goes to act (nn.ReLU, with hooks)"),
        (ExtraBuffer, "buffers besides weight and bias"),
        (HookedModel, "would drop the hooks of (the model itself), which it traces through"),
        (CalledTwice, "forward calls it 2 times"),
    ],
)
def test_relu_calls_that_cannot_fuse_are_left_and_still_computed(model_class, reason, device):
    model = model_class().to(device, DTYPE).eval()
    x = torch.randn(1, 3, 8, 8, device=device, dtype=DTYPE)
    grad = torch.randn_like(model(x))
    before = outputs_and_gradients(model, x, grad)

    swapped = at.swap_fused_ops(model)

    assert swapped is model and not model.fused_ops_report.traced
    assert type(model.conv) is nn.Conv2d
    assert reason in reasons(model.fused_ops_report)["conv"]
    assert_same_function(model, x, grad, before)


def test_module_swaps_apply_to_a_model_that_does_not_trace(device):
    model = at.swap_fused_ops(DataDependent().to(device))
    assert type(model.pool) is at.nn.MaxPool2d
    assert [entry.name for entry in model.fused_ops_report.swapped] == ["pool"]


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


def test_local_response_norm_with_arguments_the_op_refuses_is_left():
    model = nn.Sequential(nn.LocalResponseNorm(2.5), nn.LocalResponseNorm(3, alpha="1e-4"))
    at.swap_fused_ops(model)
    assert [type(m) for m in model] == [nn.LocalResponseNorm, nn.LocalResponseNorm]
    assert reasons(model.fused_ops_report) == {
        "0": "size must be a positive int (channels in the window), got 2.5",
        "1": "alpha must be a number, got '1e-4'",
    }


def test_max_pool_with_return_indices_is_left():
    model = nn.Sequential(nn.MaxPool2d(2, return_indices=True), nn.MaxPool2d(3, 2, padding=1))
    at.swap_fused_ops(model)
    assert [type(m) for m in model] == [nn.MaxPool2d, at.nn.MaxPool2d]
    assert "does not return indices" in reasons(model.fused_ops_report)["0"]


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


def test_options_leave_their_kind_of_module(device):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.LocalResponseNorm(3), nn.MaxPool2d(2), nn.Dropout())
    at.swap_fused_ops(model.to(device), conv_relu=False, dropout=False)
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, at.nn.LocalResponseNorm, at.nn.MaxPool2d, nn.Dropout]
    assert reasons(model.fused_ops_report) == {"0": "conv_relu=False", "4": "dropout=False"}


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

    traced = at.swap_fused_ops(ReluInForward().to(device))
    code = traced.code
    assert at.swap_fused_ops(traced) is traced, "a GraphModule's own graph is searched, in place"
    assert traced.code == code and traced.fused_ops_report.swapped == []
    assert reasons(traced.fused_ops_report)["skip"] == "not followed by ReLU: in forward its output goes to relu, add"


def test_alexnet_triton_network_is_already_fused():
    model = at.AlexNet(10, image_size=67)
    at.swap_fused_ops(model)
    assert model.fused_ops_report.swapped == [] and len(model.fused_ops_report.left) > 0
    at.unswap_fused_ops(model)
    left = reasons(model.fused_ops_report)
    assert left["towers.0.conv1"] == "not followed by an nn.Identity in a Sequential, to turn back into its ReLU"
    assert type(model.towers[0].pool1) is nn.MaxPool2d


def test_unswap_restores_plain_modules_with_the_same_parameters(device):
    model = small_cnn(device).eval()
    structure, parameters = repr(model), list(model.parameters())
    x = torch.randn(2, 3, 9, 9, device=device, dtype=DTYPE)
    grad = torch.randn(2, 2, device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)
    at.swap_fused_ops(model)
    assert type(model[0]) is at.nn.Conv2dReLU and type(model[2]) is at.nn.LocalResponseNorm
    assert_same_function(model, x, grad, before)

    assert at.unswap_fused_ops(model) is model

    assert repr(model) == structure, "ReLU(inplace=True) comes back as it was"
    assert all(type(m).__module__.startswith("torch.nn") for m in model.modules())
    assert all(p is q for p, q in zip(model.parameters(), parameters, strict=True))
    assert len(model.fused_ops_report.swapped) == 5 and model.fused_ops_report.left == []
    assert_same_function(model, x, grad, before)


def test_unswap_turns_a_fused_conv_and_an_identity_into_conv_and_relu(device):
    model = nn.Sequential(at.nn.Conv2dReLU(3, 4, 3), nn.Identity()).to(device, DTYPE)
    x = torch.randn(1, 3, 5, 5, device=device, dtype=DTYPE)
    grad = torch.randn(1, 4, 3, 3, device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)

    at.unswap_fused_ops(model)

    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU] and not model[1].inplace
    assert_same_function(model, x, grad, before)


def test_unswap_of_a_traced_model_splits_each_fused_conv_back(device):
    model = ReluInForward().to(device, DTYPE).eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 9, 9, device=device, dtype=DTYPE)
    grad = torch.randn(2, 3, device=device, dtype=DTYPE)
    before = outputs_and_gradients(model, x, grad)
    traced = at.swap_fused_ops(model)

    assert at.unswap_fused_ops(traced) is traced

    assert all(type(m).__module__ != "alexnet_triton.nn" for m in traced.modules())
    assert type(traced.conv1) is nn.Conv2d and traced.conv1.weight is model.conv1.weight
    assert sum(node.target is torch.relu for node in traced.graph.nodes) == 5
    assert list(traced.state_dict()) == keys
    assert_same_function(traced, x, grad, before)


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


def test_report_is_kept_logged_and_printed(device, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="alexnet_triton.swap"):
        model = at.swap_fused_ops(small_cnn(device), dropout=False, verbose=True)
    text = str(model.fused_ops_report)
    assert capsys.readouterr().out == text + "\n"
    assert [record.getMessage() for record in caplog.records] == [text]
    assert text.splitlines() == [
        "swap_fused_ops: 4 swapped, 1 left as they were",
        "swapped:",
        "  0  nn.Conv2d + nn.ReLU (1)  ->  at.nn.Conv2dReLU + nn.Identity",
        "  2  nn.LocalResponseNorm     ->  at.nn.LocalResponseNorm",
        "  3  nn.MaxPool2d             ->  at.nn.MaxPool2d",
        "  4  nn.Conv2d + nn.ReLU (5)  ->  at.nn.Conv2dReLU + nn.Identity",
        "left as they were:",
        "  7  nn.Dropout  dropout=False",
    ]


def test_bad_model_names_the_argument():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        at.swap_fused_ops("alexnet")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got Tensor"):
        at.unswap_fused_ops(torch.ones(1))
