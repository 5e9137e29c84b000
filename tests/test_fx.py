"""torch.fx on models with the fused ops (issue 12, item 2): symbolic_trace, create_feature_extractor, FX
quantization's prepare and unswap of a traced model work as they do on the plain model, and the traced
module computes what the model computes. Every op: conv2d_relu, local_response_norm, max_pool2d, dropout and
the fused lrn_max_pool2d (which torchvision's models, having no LRN, never use: a small net of AlexNet's layer
pattern does).

The modules trace as one call_module node each, as torch.nn's own do, and the functions as one
call_function node each, so no argument check meets a Proxy.
"""

import copy
import warnings

import pytest
import torch
import torchvision
from torch import fx
from torchvision.models.feature_extraction import create_feature_extractor

import alexnet_triton as at

FUSED_MODULES = (at.nn.Conv2dReLU, at.nn.LocalResponseNorm, at.nn.MaxPool2d, at.nn.LRNMaxPool2d, at.nn.Dropout)


def swapped_alexnet(device) -> torch.nn.Module:
    """torchvision's AlexNet with the fused ops, small: 10 classes, 63x63 images (its smallest)."""
    return at.swap_fused_ops(torchvision.models.alexnet(num_classes=10)).to(device).eval()


def swapped_vgg11(device) -> torch.nn.Module:
    return at.swap_fused_ops(torchvision.models.vgg11(num_classes=10)).to(device).eval()


def lrn_net() -> torch.nn.Sequential:
    """AlexNet's layers 1 and 2 in small, as a plain torchvision-style model: conv, ReLU, the paper's LRN and the
    overlapping pool, twice; then a linear layer and dropout. 35x35 images: pool2 is 3x3."""
    lrn = {"size": 5, "alpha": 5e-4, "beta": 0.75, "k": 2.0}
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(), nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(**lrn), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 10), nn.Dropout(),
    )  # fmt: skip


def swapped_lrn_net(device) -> torch.nn.Module:
    return at.swap_fused_ops(lrn_net()).to(device).eval()


def fused_nodes(graph_module: fx.GraphModule) -> list[fx.Node]:
    return [
        node
        for node in graph_module.graph.nodes
        if node.op == "call_module" and isinstance(graph_module.get_submodule(node.target), FUSED_MODULES)
    ]


@pytest.mark.parametrize(
    "make, size", [(swapped_alexnet, 63), (swapped_vgg11, 32), (swapped_lrn_net, 35)], ids=["alexnet", "vgg11", "lrn"]
)
def test_symbolic_trace_of_a_swapped_torchvision_model(make, size, device):
    model = make(device)
    traced = fx.symbolic_trace(model)
    fused = {name for name, module in model.named_modules() if isinstance(module, FUSED_MODULES)}
    assert {node.target for node in fused_nodes(traced)} == fused, "each fused module is one call_module node"
    if make is swapped_lrn_net:
        assert {name for name in fused if isinstance(model.get_submodule(name), at.nn.LRNMaxPool2d)} == {"2", "6"}
    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))


def test_traced_dropout_follows_train_and_eval(device):
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), at.nn.Dropout(0.5)).to(device).eval()
    traced = fx.symbolic_trace(model)  # traced in eval mode
    x = torch.randn(16, 64, device=device)
    with torch.no_grad():
        assert torch.equal(traced(x), traced(x))
        traced.train()
        assert not torch.equal(traced(x), traced(x)), "in training mode each call draws new dropout masks"


def test_create_feature_extractor(device):
    model = swapped_vgg11(device)
    nodes = {"features.0": "conv1", "features.2": "pool1", "features.20": "pool5", "classifier.6": "logits"}
    extractor = create_feature_extractor(model, nodes)
    x = torch.randn(1, 3, 32, 32, device=device)
    with torch.no_grad():
        features = extractor(x)
        pool1 = model.features[:3](x)
        pool5 = model.features[3:](pool1)
        assert torch.equal(features["conv1"], model.features[0](x))
        assert torch.equal(features["pool1"], pool1)
        assert torch.equal(features["pool5"], pool5)
        assert torch.equal(features["logits"], model.classifier(torch.flatten(model.avgpool(pool5), 1)))


def test_create_feature_extractor_at_a_fused_lrn_and_pool(device):
    model = swapped_lrn_net(device)
    extractor = create_feature_extractor(model, {"2": "pool1", "6": "pool2", "10": "out"})
    x = torch.randn(2, 3, 35, 35, device=device)
    with torch.no_grad():
        features = extractor(x)
        pool1 = model[:4](x)
        assert pool1.shape == (2, 8, 7, 7)
        assert torch.equal(features["pool1"], pool1)
        assert torch.equal(features["pool2"], model[4:8](pool1))
        assert torch.equal(features["out"], model(x))


@pytest.mark.parametrize("make, size", [(swapped_alexnet, 63), (swapped_lrn_net, 35)], ids=["alexnet", "lrn"])
def test_fx_quantization_prepares_a_swapped_model(make, size, device):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    model = make(device)
    x = torch.randn(1, 3, size, size, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        prepared = prepare_fx(model, get_default_qconfig_mapping(), (x,))
    with torch.no_grad():
        assert torch.equal(prepared(x), model(x)), "observers watch values and change none"


def test_unswap_of_a_traced_model(device):
    plain = torchvision.models.alexnet(num_classes=10).to(device).eval()
    swapped = at.swap_fused_ops(torchvision.models.alexnet(num_classes=10)).to(device).eval()
    swapped.load_state_dict(plain.state_dict())
    unswapped = at.unswap_fused_ops(fx.symbolic_trace(swapped))
    assert not any(isinstance(module, FUSED_MODULES) for module in unswapped.modules())
    x = torch.randn(2, 3, 63, 63, device=device)
    with torch.no_grad():
        torch.testing.assert_close(unswapped(x), plain(x))


def test_unswap_of_a_traced_model_with_a_fused_lrn_and_pool(device):
    # A trace keeps no Sequential to hold the pool again: the LRNMaxPool2d stays, said so in the report, and the
    # model still computes what the plain one does.
    plain = lrn_net().to(device).eval()
    swapped = at.swap_fused_ops(copy.deepcopy(plain)).eval()
    unswapped = at.unswap_fused_ops(fx.symbolic_trace(swapped))
    left = {entry.name: entry.reason for entry in unswapped.fused_ops_report.left}
    assert set(left) == {"2", "6"} and all("not followed by an nn.Identity in a Sequential" in r for r in left.values())
    assert [type(m) for m in unswapped.modules() if isinstance(m, FUSED_MODULES)] == [at.nn.LRNMaxPool2d] * 2
    x = torch.randn(2, 3, 35, 35, device=device)
    with torch.no_grad():
        torch.testing.assert_close(unswapped(x), plain(x))
    # In an untraced model's Sequential (not one whose modules a trace shares), the pair goes back to the two
    # plain modules.
    back = at.unswap_fused_ops(at.swap_fused_ops(copy.deepcopy(plain)).eval())
    assert not any(isinstance(module, FUSED_MODULES) for module in back.modules())
    assert type(back[2]) is torch.nn.LocalResponseNorm and type(back[3]) is torch.nn.MaxPool2d
    with torch.no_grad():
        torch.testing.assert_close(back(x), plain(x))


class UsesTheFunctions(torch.nn.Module):
    """A forward that calls the functional ops by their public names."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(6, 3, 3, 3) / 5)
        self.bias = torch.nn.Parameter(torch.randn(6))

    def forward(self, x):
        x = at.conv2d_relu(x, self.weight, self.bias, padding=1)
        x = at.local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)
        x = at.functional.max_pool2d(x, 3, 2)
        x = at.lrn_max_pool2d(x, 3, 2, 1, alpha=1e-2, k=1.0)  # LRN over 3 channels, then 2x2 stride 1
        return at.dropout(x, 0.5, self.training)


def test_functions_trace_as_one_call_each(device):
    model = UsesTheFunctions().to(device).eval()
    traced = fx.symbolic_trace(model)
    calls = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert calls == [at.conv2d_relu, at.local_response_norm, at.max_pool2d, at.lrn_max_pool2d, at.dropout]
    x = torch.randn(2, 3, 9, 9, device=device)
    with torch.no_grad():
        out = traced(x)
        assert out.shape == (2, 6, 3, 3)
        assert torch.equal(out, model(x))


def test_symbolic_trace_of_the_papers_alexnet(device):
    model = at.AlexNet(num_classes=10, image_size=67).to(device).eval()
    traced = fx.symbolic_trace(model)
    fused = {name for name, module in model.named_modules() if isinstance(module, FUSED_MODULES)}
    conv1s = {"towers.0.conv1", "towers.1.conv1"}  # one convolution of both (AlexNet.conv1_together), traced as a call
    assert {node.target for node in fused_nodes(traced)} == fused - conv1s, "each fused module is one call_module node"
    calls = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert calls.count(at.conv2d_relu) == 1, calls
    lrn_pools = {name for name in fused if isinstance(model.get_submodule(name), at.nn.LRNMaxPool2d)}
    assert lrn_pools == {f"towers.{tower}.norm{layer}" for tower in (0, 1) for layer in (1, 2)}
    x = torch.randn(1, 3, 67, 67, device=device)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    with pytest.raises(ValueError, match="built for image_size=67"):  # the trace keeps the model's check
        traced(torch.randn(1, 3, 60, 60, device=device))
