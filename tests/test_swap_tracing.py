"""ReLU calls in forward (alexnet_triton/swap/tracing.py): fused with the conv before them in a torch.fx trace
that keeps the model's parameters, keys and their order; models that do not trace faithfully keep their ReLU
calls, with the reason; a traced model splits back."""

import pytest
import torch
import torch.nn.functional as F
from swap_helpers import DTYPE, assert_same_function, outputs_and_gradients, reasons
from torch import fx, nn

import alexnet_triton as at


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


def test_a_second_swap_of_a_traced_model_searches_its_own_graph(device):
    traced = at.swap_fused_ops(ReluInForward().to(device))
    code = traced.code
    assert at.swap_fused_ops(traced) is traced, "a GraphModule's own graph is searched, in place"
    assert traced.code == code and traced.fused_ops_report.swapped == []
    assert reasons(traced.fused_ops_report)["skip"] == "not followed by ReLU: in forward its output goes to relu, add"


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
