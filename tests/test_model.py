"""at.AlexNet: the paper's shapes and parameter count, towers against the grouped plain-PyTorch twin,
placement, the exchange, and the ablation switches."""

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from alexnet_triton.kernels import _common, conv_grad
from alexnet_triton.kernels.conv import covers_input
from helpers import TOLERANCE, assert_close, away_from_kink, reference_backend_env, requires_cuda
from torch import nn

import alexnet_triton as at
from alexnet_triton.model import LAYERS, OVERLAPPING_POOL, PAPER_LRN, STAGES, feature_map_sizes, layer_shapes
from alexnet_triton.twin import GroupedAlexNet

SMALL = 67  # the least image size whose maps survive to fc6 (pool5 is 1x1); keeps the interpreter quick


def small_net(**kwargs) -> at.AlexNet:
    return at.AlexNet(10, image_size=SMALL, **kwargs)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_parameter_count_and_map_sizes():
    model = at.AlexNet()
    assert parameter_count(model) == 60_965_224
    assert feature_map_sizes(227) == (27, 13, 6)
    tower = model.towers[0]
    assert tower.conv1.weight.shape == (48, 3, 11, 11)
    assert tower.conv3.weight.shape == (192, 256, 3, 3), "conv3 reads both towers"
    assert tower.conv4.weight.shape == (192, 192, 3, 3), "conv4 reads its own tower"
    assert tower.fc6.weight.shape == (2048, 256, 6, 6)
    assert tower.fc8.weight.shape == (500, 4096)


def test_layer_table_gives_figure_2():
    # Per tower at 227x227: (in channels, out channels, kernel, input side, output side, side after the pool).
    figure_2 = {
        "conv1": (3, 48, 11, 227, 55, 27),
        "conv2": (48, 128, 5, 27, 27, 13),
        "conv3": (256, 192, 3, 13, 13, 13),
        "conv4": (192, 192, 3, 13, 13, 13),
        "conv5": (192, 128, 3, 13, 13, 6),
        "fc6": (256, 2048, 6, 6, 1, 1),
        "fc7": (4096, 2048, 1, 1, 1, 1),
        "fc8": (4096, None, 1, 1, 1, 1),
    }
    shapes = {
        s.layer.name: (s.in_channels, s.out_channels, s.kernel, s.input_size, s.output_size, s.pooled_size)
        for s in layer_shapes(227)
    }
    assert shapes == figure_2
    assert [[layer.name for layer in stage] for stage in STAGES] == [
        ["conv1", "conv2"],
        ["conv3", "conv4", "conv5"],
        ["fc6"],
        ["fc7"],
        ["fc8"],
    ], "a stage ends before each exchange (layers 3, 6, 7 and 8)"


def test_state_dict_keys_and_shapes():
    # Checkpoints are loaded by these keys: they may never change.
    expected = {}
    for tower, classes in ((0, 500), (1, 500)):
        expected |= {
            f"towers.{tower}.conv1.weight": (48, 3, 11, 11),
            f"towers.{tower}.conv1.bias": (48,),
            f"towers.{tower}.conv2.weight": (128, 48, 5, 5),
            f"towers.{tower}.conv2.bias": (128,),
            f"towers.{tower}.conv3.weight": (192, 256, 3, 3),
            f"towers.{tower}.conv3.bias": (192,),
            f"towers.{tower}.conv4.weight": (192, 192, 3, 3),
            f"towers.{tower}.conv4.bias": (192,),
            f"towers.{tower}.conv5.weight": (128, 192, 3, 3),
            f"towers.{tower}.conv5.bias": (128,),
            f"towers.{tower}.fc6.weight": (2048, 256, 6, 6),
            f"towers.{tower}.fc6.bias": (2048,),
            f"towers.{tower}.fc7.weight": (2048, 4096, 1, 1),
            f"towers.{tower}.fc7.bias": (2048,),
            f"towers.{tower}.fc8.weight": (classes, 4096),
            f"towers.{tower}.fc8.bias": (classes,),
        }
    with torch.device("meta"):
        state = at.AlexNet().state_dict()
    assert [(key, tuple(value.shape)) for key, value in state.items()] == list(expected.items())


def test_paper_initialization():
    model = at.AlexNet(100)
    for tower in model.towers:
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
            layer = getattr(tower, name)
            assert abs(layer.weight.std().item() - 0.01) < 0.002, name
            expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
            assert torch.all(layer.bias == expected_bias), name


def test_towers_equal_the_grouped_twin_forward_and_every_gradient(device):
    model = small_net().to(device).eval()  # eval: dropout is the identity in both
    twin = GroupedAlexNet.from_towers(model).double().eval()
    images = torch.randn(2, 3, SMALL, SMALL, device=device)
    assert_close(model(images), twin(images.double()), TOLERANCE[torch.float32], "fp32 logits")

    # Gradients in float64 end to end: eight layers of fp32 rounding (and ReLUs whose input rounds to
    # the other side of 0) would blur the comparison, while a wrong exchange, placement or a
    # normalization that crosses towers is 1e-5 or more. 1e-6: LRN's alpha, beta and k reach a
    # compiled GPU kernel as fp32 (about 1e-8 off).
    model = model.double()
    logits, logits_ref = model(images.double()), twin(images.double())
    assert logits.shape == (2, 10)
    grad = torch.randn_like(logits_ref)
    logits.backward(grad)
    logits_ref.backward(grad)
    for name, got, expected in twin_gradients(model, twin):
        assert_close(got, expected, 1e-6, f"{name} gradient")


def test_full_size_network_equals_twin_through_the_reference_backend():
    # 227x227 is too slow for the interpreter; the same comparison through reference.py (fresh process).
    script = """
import torch, alexnet_triton as at
from alexnet_triton.twin import GroupedAlexNet
assert at.backend("cpu") == "torch"
torch.manual_seed(0)
model = at.AlexNet().eval()
twin = GroupedAlexNet.from_towers(model).double().eval()
images = torch.randn(2, 3, 227, 227)
logits, ref = model(images), twin(images.double())
assert logits.shape == (2, 1000)
err = ((logits.double() - ref).norm() / ref.norm()).item()
assert err < 1e-5, err
"""
    env = reference_backend_env()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def twin_gradients(model: at.AlexNet, twin: GroupedAlexNet):
    """(name, towers' gradient as the twin's layer holds it, the twin's gradient) for every weight and bias."""
    twin_layers = [m for m in [*twin.features, *twin.classifier] if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer, twin_layer in zip(LAYERS, twin_layers, strict=True):
        halves = [getattr(tower, layer.name) for tower in model.towers]
        grad_weight = torch.cat([h.weight.grad for h in halves]).reshape(twin_layer.weight.shape)
        yield f"{layer.name} weight", grad_weight, twin_layer.weight.grad
        yield f"{layer.name} bias", torch.cat([h.bias.grad for h in halves]), twin_layer.bias.grad


def test_the_papers_227_network_equals_the_twin_forward_and_every_gradient(monkeypatch):
    # At 227 fc6 is a 6x6 kernel over pool5's 6x6 map (at SMALL, a 1x1 over 1x1): its weight's (c, h, w) order
    # against the twin's flattened nn.Linear, and every layer's shapes as the paper has them, in backward too. Too
    # slow for the interpreter: the ops run through reference.py (as a CPU without TRITON_INTERPRET runs them), in
    # float64 end to end, so that what differs is the wiring (towers, exchanges, flattening), not rounding.
    monkeypatch.setattr(_common, "INTERPRET", False)
    model = at.AlexNet().eval()  # eval: dropout is the identity in both
    twin = GroupedAlexNet.from_towers(model).double().eval()
    model.double()
    assert at.backend(next(model.parameters())) == "torch"
    assert [shape.kernel for shape in layer_shapes()][5] == 6 and model.towers[0].fc6.weight.shape == (2048, 256, 6, 6)
    images = torch.randn(2, 3, 227, 227, dtype=torch.float64)
    logits, logits_ref = model(images), twin(images)
    assert logits.shape == (2, 1000)
    assert_close(logits, logits_ref, TOLERANCE[torch.float64], "logits")
    grad = torch.randn_like(logits_ref)
    logits.backward(grad)
    logits_ref.backward(grad)
    for name, got, expected in twin_gradients(model, twin):
        assert_close(got, expected, TOLERANCE[torch.float64], f"{name} gradient")


def fc6_like(memory_format) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three images of 32 channels on a 6x6 map, and 40 kernels of 6x6 covering it (fc6 at 227 in small)."""
    x = torch.randn(3, 32, 6, 6).contiguous(memory_format=memory_format)
    weight = (torch.randn(40, 32, 6, 6) / (32 * 6 * 6) ** 0.5).contiguous(memory_format=memory_format)
    return x, weight, torch.randn(40)


LAYOUTS = {"nchw": torch.contiguous_format, "channels-last": torch.channels_last}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_fc6_like_conv_covering_its_input_forward_and_every_gradient(layout, device):
    # The kernels run a convolution whose kernel covers its input as a 1x1 convolution of the flattened input
    # (kernels/conv.py and conv_grad.py, covers_input): forward, input gradient and weight gradient each take that
    # path, with a batch of 3 whose outputs are 1x1 each. fp32 against float64 PyTorch.
    assert covers_input((6, 6), (6, 6), (0, 0), 1)
    x, weight, bias = (t.to(device) for t in fc6_like(LAYOUTS[layout]))
    inputs = [t.requires_grad_() for t in (x, weight, bias)]
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    out, ref = at.conv2d_relu(*inputs), F.relu(F.conv2d(*inputs64))
    assert out.shape == (3, 40, 1, 1)
    tol = TOLERANCE[torch.float32]
    assert_close(out, ref, tol, "output")
    assert 0 < (ref > 0).sum() < ref.numel(), "some outputs pass ReLU, some do not"
    grad = away_from_kink(torch.randn_like(ref), F.conv2d(*inputs64).detach(), tol)
    grads = torch.autograd.grad(out, inputs, grad.float())
    ref_grads = torch.autograd.grad(ref, inputs64, grad)
    for name, got, expected in zip(("input", "weight", "bias"), grads, ref_grads, strict=True):
        assert_close(got, expected, tol, f"{name} gradient")


@pytest.mark.parametrize("grad_strides", ["channels-last", "nchw"])
def test_the_weight_gradient_of_a_1x1_output_reads_each_image_of_the_batch(grad_strides, device):
    # With 1x1 outputs, an NCHW gradient [3, 40, 1, 1] (strides 40, 1, 1, 1) counts as channels_last too, so the
    # launcher keeps it as it is: image p's gradient sits at p * 40 whatever stride(3) says (1 here, 40 in the
    # channels_last allocation). Reading the batch at stride(3) took the wrong values for images 2 and 3.
    x, weight, _ = (t.to(device) for t in fc6_like(torch.contiguous_format))
    masked = torch.randn(3, 40, 1, 1, device=device)
    if grad_strides == "channels-last":  # as relu_grad allocates it (.contiguous would keep the NCHW strides)
        masked = torch.empty_like(masked, memory_format=torch.channels_last).copy_(masked)
    assert masked.stride() == ((40, 1, 40, 40) if grad_strides == "channels-last" else (40, 1, 1, 1))
    got = conv_grad.conv_relu_weight_grad(masked, x, list(weight.shape), torch.contiguous_format, (1, 1), (0, 0), 1)
    expected = torch.nn.grad.conv2d_weight(x.double(), weight.shape, masked.double())
    assert_close(got, expected, TOLERANCE[torch.float32], "weight gradient")


def test_two_cpu_towers_compute_what_one_device_does():
    # The placement code (explicit devices, the exchanges' copies) against devices=None, on the CPU whatever the
    # machine: through the interpreter here, through reference.py on a CUDA machine; both sides run the same ops.
    torch.manual_seed(1)
    one = small_net().eval()
    two = small_net(devices=("cpu", "cpu")).eval()
    two.load_state_dict(one.state_dict())
    images = torch.randn(1, 3, SMALL, SMALL)
    torch.testing.assert_close(two(images), one(images), rtol=0, atol=0)


def test_towers_are_separate_before_the_exchange(device):
    model = small_net().to(device).train()
    images = torch.randn(2, 3, SMALL, SMALL, device=device)
    features = model.towers[1].run(STAGES[0], images)  # tower 1 before layer 3's exchange
    features.square().sum().backward()
    own, other = model.towers[1], model.towers[0]
    assert own.conv1.weight.grad.abs().sum() > 0 and own.conv2.weight.grad.abs().sum() > 0
    assert other.conv1.weight.grad is None and other.conv2.weight.grad is None


def test_both_towers_conv1_is_one_convolution_on_one_device(device):
    # conv1_together: one convolution of both towers' kernels, each tower's channels a view of it, equal to each tower's
    # own conv1 (the same kernels per output channel), with each tower's gradients; None when the towers are apart.
    model = small_net().to(device).train()
    images = torch.randn(2, 3, SMALL, SMALL, device=device)
    together = model.conv1_together(images)
    assert [t.shape[1] for t in together] == [48, 48]
    assert together[0].untyped_storage().data_ptr() == together[1].untyped_storage().data_ptr()  # one launch's output
    for tower, out in zip(model.towers, together, strict=True):
        torch.testing.assert_close(out, tower.conv1(images), rtol=1e-5, atol=1e-5)
    grads = [torch.randn_like(t) for t in together]
    torch.autograd.backward(together, grads)
    got = [tower.conv1.weight.grad.clone() for tower in model.towers]
    model.zero_grad()
    for tower, grad in zip(model.towers, grads, strict=True):
        tower.conv1(images).backward(grad)
        assert tower.conv1.weight.grad is not None
    for tower, weight_grad in zip(model.towers, got, strict=True):
        torch.testing.assert_close(weight_grad, tower.conv1.weight.grad, rtol=1e-4, atol=1e-4)
    handle = model.towers[0].conv1.register_forward_pre_hook(lambda module, inputs: None)
    assert model.conv1_together(images) is None  # a hooked conv1 runs as its module, hooks and all
    handle.remove()
    model.towers[1].to("meta")  # the towers on two devices: each runs its own conv1
    assert model.conv1_together(images) is None


def test_state_dict_is_the_same_for_every_placement():
    keys = small_net().state_dict().keys()
    assert small_net(devices=("cpu", "cpu")).state_dict().keys() == keys
    assert "towers.0.conv1.weight" in keys and "towers.1.fc8.bias" in keys


@pytest.mark.parametrize(
    "switch, check",
    [
        ({"lrn": False}, lambda m: not any(isinstance(x, nn.LocalResponseNorm) for x in m.modules())),
        (
            {"overlapping_pool": False},
            lambda m: all(p.kernel_size == 2 and p.stride == 2 for p in m.modules() if isinstance(p, nn.MaxPool2d)),
        ),
        ({"dropout": False}, lambda m: not any(isinstance(x, nn.Dropout) for x in m.modules())),
        # Section 3.2: the one-GPU net keeps conv5 (and the fc layers) at full size.
        ({"towers": 1}, lambda m: len(m.towers) == 1 and m.towers[0].conv5.out_channels == 256),
    ],
    ids=["no-lrn", "non-overlapping-pool", "no-dropout", "one-tower"],
)
def test_each_ablation_changes_exactly_what_it_names(switch, check):
    base, ablated = at.AlexNet(), at.AlexNet(**switch)
    assert check(ablated)
    kinds = (nn.LocalResponseNorm, nn.MaxPool2d, nn.Dropout, nn.Conv2d, nn.Linear)

    def census(model):
        return {kind.__name__: sum(isinstance(m, kind) for m in model.modules()) for kind in kinds}

    before, after = census(base), census(ablated)
    changed = {k for k in before if before[k] != after[k]}
    expected = {"lrn": {"LocalResponseNorm"}, "dropout": {"Dropout"}}.get(next(iter(switch)), set())
    if "towers" in switch:
        expected = {"MaxPool2d", "LocalResponseNorm", "Dropout", "Conv2d", "Linear"}  # one tower's worth
    assert changed == expected
    if "overlapping_pool" in switch:  # same output sizes (section 3.4), so the same parameters
        assert parameter_count(ablated) == parameter_count(base)


@pytest.mark.parametrize(
    "switch, norm, pool",
    [
        ({}, at.nn.LRNMaxPool2d, nn.Identity),
        ({"lrn": False}, nn.Identity, at.nn.MaxPool2d),
        ({"overlapping_pool": False}, at.nn.LocalResponseNorm, at.nn.MaxPool2d),
    ],
    ids=["paper", "no-lrn", "non-overlapping-pool"],
)
def test_layers_1_and_2_fuse_lrn_and_the_overlapping_pool(switch, norm, pool):
    model = at.AlexNet(**switch)
    for tower in model.towers:
        for number in (1, 2):
            assert type(getattr(tower, f"norm{number}")) is norm and type(getattr(tower, f"pool{number}")) is pool
        assert type(tower.pool5) is at.nn.MaxPool2d
    if not switch:
        assert (tower.norm1.kernel_size, tower.norm1.stride) == OVERLAPPING_POOL
        assert {name: getattr(tower.norm1, name) for name in PAPER_LRN} == PAPER_LRN


def test_fused_lrn_and_pool_compute_what_the_separate_modules_do(device):
    # float64, training mode (dropout on, drawing the same masks from the same seed): every output and gradient.
    fused = small_net().to(device).double()
    separate = copy.deepcopy(fused)
    for tower in separate.towers:
        for number in (1, 2):
            setattr(tower, f"norm{number}", at.nn.LocalResponseNorm(**PAPER_LRN))
            setattr(tower, f"pool{number}", at.nn.MaxPool2d(*OVERLAPPING_POOL))
    assert list(separate.state_dict()) == list(fused.state_dict())
    images = torch.randn(1, 3, SMALL, SMALL, device=device, dtype=torch.float64)
    grad = torch.randn(1, 10, device=device, dtype=torch.float64)
    logits = []
    for model in (fused, separate):
        torch.manual_seed(4)
        logits.append(model(images))
        logits[-1].backward(grad)
    assert_close(*logits, TOLERANCE[torch.float64], "logits")
    for (name, p), q in zip(fused.named_parameters(), separate.parameters(), strict=True):
        assert_close(p.grad, q.grad, TOLERANCE[torch.float64], f"gradient of {name}")


def test_one_tower_net_runs_and_has_about_the_same_parameters(device):
    model = at.AlexNet(towers=1)
    # Section 3.2: conv5 and the fc layers keep their full size, so the counts stay close.
    assert abs(parameter_count(model) - 60_965_224) / 60_965_224 < 0.05
    small = at.AlexNet(10, image_size=SMALL, towers=1).to(device).eval()
    logits = small(torch.randn(1, 3, SMALL, SMALL, device=device))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_odd_class_count_splits_between_towers():
    model = at.AlexNet(7, image_size=SMALL)
    assert [t.fc8.out_features for t in model.towers] == [4, 3]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"devices": ("cuda:0", "cuda:7")}, "does not exist"),
        ({"devices": ("cpu",)}, "one device per tower"),
        ({"devices": ("cpu", "gpu9")}, "is not a device"),
        ({"towers": 3}, "towers must be 1 or 2"),
        ({"image_size": 40}, "too small"),
        ({"num_classes": 1}, "num_classes must be an int >= 2"),
    ],
)
def test_bad_configuration_is_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        at.AlexNet(**({"num_classes": 10, "image_size": SMALL} | kwargs))


def test_wrong_image_size_is_refused():
    with pytest.raises(ValueError, match="built for image_size=67"):
        small_net()(torch.randn(1, 3, 99, 99))


@requires_cuda
def test_torch_compile_and_streams_match_eager():
    torch.manual_seed(2)
    model = at.AlexNet(10, image_size=SMALL).cuda().eval()
    images = torch.randn(4, 3, SMALL, SMALL, device="cuda")
    eager = model(images)
    torch.testing.assert_close(torch.compile(model)(images), eager, rtol=2e-3, atol=2e-3)
    model.tower_streams = True
    torch.testing.assert_close(model(images), eager, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpu_placement_equals_one_gpu():
    torch.manual_seed(3)
    one = at.AlexNet(10, image_size=SMALL).cuda().eval()
    two = at.AlexNet(10, image_size=SMALL, devices=("cuda:0", "cuda:1")).eval()
    two.load_state_dict(one.state_dict())
    images = torch.randn(4, 3, SMALL, SMALL, device="cuda:0")
    torch.testing.assert_close(two(images), one(images))
    assert two.towers[1].conv1.weight.device == torch.device("cuda:1")


DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist, torch.multiprocessing as mp
import alexnet_triton as at


def run(rank, world, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial weights in every process
    model = at.AlexNet(10, image_size=67, dropout=False)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    images = torch.randn(4, 3, 67, 67, generator=torch.Generator().manual_seed(100 + rank))
    ddp(images).square().mean().backward()
    torch.save({n: p.grad for n, p in model.named_parameters()}, f"{results}.{rank}")
    dist.destroy_process_group()


if __name__ == "__main__":
    init_file, results = sys.argv[1], sys.argv[2]
    mp.spawn(run, args=(2, init_file, results), nprocs=2)
    # One process on both batches must get the average of the two processes' gradients.
    torch.manual_seed(0)
    model = at.AlexNet(10, image_size=67, dropout=False)
    batches = [torch.randn(4, 3, 67, 67, generator=torch.Generator().manual_seed(100 + r)) for r in range(2)]
    sum(model(b).square().mean() for b in batches).div(2).backward()
    grads = [torch.load(f"{results}.{r}") for r in range(2)]
    for name, p in model.named_parameters():
        assert torch.equal(grads[0][name], grads[1][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(grads[0][name], p.grad, rtol=1e-4, atol=1e-7, msg=f"{name}")
    print("ok")
"""


def test_data_parallel_across_two_processes(tmp_path):
    # DistributedDataParallel over gloo on the CPU, one tower pair per process. The reference backend
    # keeps it quick; what is tested is the model's structure under DDP, not the kernels.
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = reference_backend_env()
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "init"), str(tmp_path / "grads")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
