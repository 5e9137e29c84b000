"""torch.compile of whole networks on a CPU (issue 22): the paper's AlexNet, a swapped torchvision AlexNet and compiled
autograd through our ops, forward and backward, with every public op one node of the graphs, against eager runs of
the same model; and the GPU's way through torch.library (triton_op, wrap_triton) traced with its launches stubbed.

Two ways, because torch cannot compile an interpreted Triton kernel. torch.library.triton_op makes an op's own body
its fake (meta) kernel, and wrap_triton hands Triton's interpreter kernels back unwrapped (torch 2.14 does so on
purpose: they lack the JIT metadata its tracing needs), so under TRITON_INTERPRET=1 torch.compile runs the kernels
on FakeTensors and stops ("Cannot access data pointer of Tensor"), for any triton_op, ours or torch's own example.

- Here, under the interpreter (tests/conftest.py sets it), with two test-only settings (`interpreted_compile`): a
  launch given FakeTensors does nothing, which is what wrap_triton's launch does under fake tensors on a GPU, so
  each op's fake kernel is its own body (checks, allocations, grids) less the launch; and AOTAutograd keeps our ops
  as ops (torch._functorch.config.decompose_custom_triton_ops off, as torch.export keeps them) instead of inlining
  their kernels, which takes wrap_triton's traced launches. Compiled with AOTAutograd, the aot_eager backend with
  its graphs kept: no Inductor, which would spend 10-20 s compiling C++ for each graph's ATen glue on a CPU, and
  could not take a kernel's launch on a CPU tensor anyway (next item). The compiled graphs then run our kernels in
  the interpreter and must give eager's outputs and gradients, launching the same kernels as many times.
- In a fresh process without the interpreter: bench.host.compiled_path_on_cpu sends CPU tensors down the GPU path,
  whose Triton launches stop at the compiled kernel's launch and are recorded. torch.compile traces wrap_triton
  there as on a GPU: AOTAutograd inlines each op's kernels into the graphs (triton_kernel_wrapper_functional, what
  Inductor compiles on a GPU), and every kernel a graph holds is launched once when it runs. The stubs compute
  nothing, so no value is compared. Inductor itself is not run: for CPU tensors it compiles user Triton kernels
  for the CPU and stops ("triton not built with the 'cpu' backend").
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision
from alexnet_triton.kernels import _common
from helpers import TOLERANCE, assert_close, reference_backend_env
from torch import nn
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._subclasses.fake_tensor import FakeTensor

import alexnet_triton as at

SMALL = 67  # at.AlexNet's least image size (its maps survive to fc6); keeps the interpreter quick
TORCHVISION_SMALL = 63  # torchvision's AlexNet's least: its features end at 1x1 before the adaptive pool
# fp32 in eager and compiled alike. Both run the same kernels on the same arguments (the launches are compared too);
# what AOTAutograd may run otherwise is ATen glue (cat, flatten, linear as addmm), at most a reordered fp32 rounding.
TOL = TOLERANCE[torch.float32]

# Each fused module's op, and the op its backward calls (dropout's gradient is dropout with the same seed).
OP_OF = {
    at.nn.Conv2dReLU: "conv2d_relu",
    at.nn.LocalResponseNorm: "local_response_norm",
    at.nn.MaxPool2d: "max_pool2d",
    at.nn.LRNMaxPool2d: "lrn_max_pool2d",
    at.nn.Dropout: "dropout",
}
BACKWARD_OF = {op: op if op == "dropout" else f"{op}_backward" for op in OP_OF.values()}
# torch's own conv, pool and dropout in AOTAutograd's graphs: what the reference path (reference.py) would put there.
TORCH_CONV_AND_POOL = ("aten.convolution", "aten.max_pool2d_with_indices", "aten.native_dropout", "aten.bernoulli")


def forward_ops(model: nn.Module) -> Counter:
    """One op per fused module (each is called once in forward); the paper's network runs its two conv1 modules as one
    convolution (AlexNet.conv1_together)."""
    ops = Counter(OP_OF[type(m)] for m in model.modules() if type(m) in OP_OF)
    if isinstance(model, at.AlexNet) and len(model.towers) == 2:
        ops[OP_OF[at.nn.Conv2dReLU]] -= 1
    return ops


def backward_ops(model: nn.Module) -> Counter:
    return Counter(BACKWARD_OF[op] for op in forward_ops(model).elements())


def every_op_model() -> nn.Sequential:
    """Every public op, for 13x13 inputs. 12 channels: default initialisation then leaves no layer without a
    positive output (no gradient to compare)."""
    return nn.Sequential(
        at.nn.Conv2dReLU(3, 12, 3, padding=1),  # 13x13
        at.nn.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=2.0),
        at.nn.MaxPool2d(2),  # 6x6
        at.nn.Conv2dReLU(12, 12, 3),  # 4x4
        at.nn.LRNMaxPool2d(3, 3, 2, alpha=1e-2, k=2.0),  # 1x1
        at.nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(12, 3),
    )


# ---- what the graphs hold ----------------------------------------------------------------------------------------


def calls(gm: torch.fx.GraphModule) -> Counter:
    """The graph's call_function nodes: "alexnet_triton::<op>" for our ops (any overload), "kernel:<name>" for a
    Triton kernel wrap_triton put in the graph, str(target) for anything else."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    found = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        if name.startswith("alexnet_triton."):
            found["alexnet_triton::" + name.split(".")[1]] += 1
        elif name.startswith("triton_kernel_wrapper"):
            found["kernel:" + _common._kernel_name(kernel_side_table.get_kernel(node.kwargs["kernel_idx"]))] += 1
        else:
            found[name] += 1
    return found


def ours(found: Counter) -> Counter:
    return Counter({name.partition("::")[2]: n for name, n in found.items() if name.startswith("alexnet_triton::")})


def kernels(found: Counter) -> Counter:
    return Counter({name.partition(":")[2]: n for name, n in found.items() if name.startswith("kernel:")})


class Graphs:
    """A torch.compile backend: AOTAutograd, its graphs run as they are (aot_eager), every graph kept. `dynamo`: what
    dynamo captured; `forward`, `backward`: AOTAutograd's (an inference graph counts as a forward)."""

    def __init__(self):
        self.dynamo: list[Counter] = []
        self.forward: list[Counter] = []
        self.backward: list[Counter] = []

    def _keep(self, graphs: list[Counter]):
        def compiler(gm, example_inputs):
            graphs.append(calls(gm))
            return make_boxed_func(gm.forward)

        return compiler

    def __call__(self, gm, example_inputs):
        self.dynamo.append(calls(gm))
        return aot_autograd(fw_compiler=self._keep(self.forward), bw_compiler=self._keep(self.backward))(
            gm, example_inputs
        )

    def aot(self) -> list[Counter]:
        return self.forward + self.backward


# ---- under the interpreter ---------------------------------------------------------------------------------------


@pytest.fixture
def interpreted_compile(monkeypatch):
    """torch.compile over the interpreter's kernels (see the module docstring): a launch given FakeTensors does
    nothing, and AOTAutograd keeps our ops whole. Yields the launches that ran, by kernel name."""
    if at.backend("cpu") != "triton-interpreter":
        pytest.skip(
            "compiles the interpreter's kernels, and TRITON_INTERPRET is unset: CPU tensors run reference.py (a GPU "
            "runs test_conv.py's and test_model.py's compile tests)"
        )
    launched = Counter()
    launcher = _common.launcher.__getitem__

    def launch_or_trace(self, grid):
        launch, name = launcher(self, grid), _common._kernel_name(self.kernel)

        def call(*args, **kwargs):
            if any(isinstance(a, FakeTensor) for a in args):
                return None  # tracing: the outputs were allocated (fake) by the op's body, as wrap_triton leaves them
            launched[name] += 1
            return launch(*args, **kwargs)

        return call

    monkeypatch.setattr(_common.launcher, "__getitem__", launch_or_trace)
    torch._dynamo.reset()
    with torch._functorch.config.patch(decompose_custom_triton_ops=False):
        yield launched
    torch._dynamo.reset()


def run(model: nn.Module, x: torch.Tensor, grad: torch.Tensor, seed: int, step=None):
    """step(x, grad) (by default backward of <model(x), grad>, returning model(x)) and the gradient of model's every
    parameter by name and of x if it takes one (reset after); the same seed draws the same dropout masks."""
    torch.manual_seed(seed)
    out = forward_backward(model, x, grad) if step is None else step(x, grad)
    grads = {name: p.grad for name, p in model.named_parameters()} | ({"input": x.grad} if x.requires_grad else {})
    model.zero_grad(set_to_none=True)
    x.grad = None
    return out.detach(), grads


def forward_backward(forward, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    out = forward(x)
    out.backward(grad)
    return out


def assert_same_run(got, expected) -> None:
    (out, grads), (out_ref, grads_ref) = got, expected
    assert_close(out, out_ref, TOL, "compiled output")
    assert grads.keys() == grads_ref.keys()
    for name, grad in grads.items():
        assert_close(grad, grads_ref[name], TOL, f"compiled gradient of {name}")


def compiled_matches_eager(model: nn.Module, size: int, classes: int, launched: Counter, seed: int) -> Graphs:
    """torch.compile(model, fullgraph=True) against eager on a batch of 2: outputs, every parameter's gradient and
    the kernels launched. Returns the graphs. The images take no gradient, as in training: conv1's input gradient
    (an 11x11 stride-4 gather) alone costs the interpreter 18 s; the small model's tests take the input's."""
    x, grad = torch.randn(2, 3, size, size), torch.randn(2, classes)
    eager = run(model, x, grad, seed)
    eager_launches = launched.copy()
    launched.clear()
    graphs = Graphs()
    compiled_model = torch.compile(model, fullgraph=True, backend=graphs)
    compiled = run(model, x, grad, seed, lambda x, grad: forward_backward(compiled_model, x, grad))
    assert_same_run(compiled, eager)
    assert launched == eager_launches, "the compiled graphs launch the kernels eager does, as many times"
    assert len(graphs.dynamo) == len(graphs.forward) == len(graphs.backward) == 1, "fullgraph: one graph each way"
    return graphs


def assert_our_ops_are_single_nodes(model: nn.Module, graphs: Graphs) -> None:
    (dynamo,), (forward,), (backward,) = graphs.dynamo, graphs.forward, graphs.backward
    assert ours(dynamo) == forward_ops(model), dynamo
    assert ours(forward) == forward_ops(model), forward
    assert ours(backward) == backward_ops(model), backward
    for found in graphs.aot():
        assert not any(name.startswith(TORCH_CONV_AND_POOL) for name in found), found


def test_compiled_alexnet_matches_eager_with_each_op_one_node(interpreted_compile, fresh_seed):
    torch.manual_seed(fresh_seed)
    model = at.AlexNet(10, image_size=SMALL)  # training mode: dropout in fc6 and fc7
    graphs = compiled_matches_eager(model, SMALL, 10, interpreted_compile, fresh_seed)
    assert_our_ops_are_single_nodes(model, graphs)
    assert set(forward_ops(model)) == {"conv2d_relu", "lrn_max_pool2d", "max_pool2d", "dropout"}


def test_compiled_swapped_torchvision_alexnet_matches_eager(interpreted_compile, fresh_seed):
    torch.manual_seed(fresh_seed)
    model = at.swap_fused_ops(torchvision.models.alexnet(weights=None))  # training mode: its two dropouts
    graphs = compiled_matches_eager(model, TORCHVISION_SMALL, 1000, interpreted_compile, fresh_seed)
    assert_our_ops_are_single_nodes(model, graphs)
    assert forward_ops(model) == {"conv2d_relu": 5, "max_pool2d": 3, "dropout": 2}


@pytest.mark.parametrize("forward", ["eager", "compiled"])
def test_compiled_autograd_gives_eager_gradients(forward, interpreted_compile, fresh_seed):
    """Compiled autograd traces the backward graph at backward time. After an eager forward it meets our ops'
    autograd.Function nodes (the straight way, functional/dispatch.py), whose backward must then call the traced
    op; after a compiled forward (compiled_autograd=True, the documented switch), the custom ops' autograd nodes."""
    torch.manual_seed(fresh_seed)
    model = every_op_model()
    x = torch.randn(2, 3, 13, 13, requires_grad=True)
    grad = torch.randn(2, 3)
    launched = interpreted_compile
    eager = run(model, x, grad, fresh_seed)
    eager_launches = launched.copy()
    launched.clear()
    graphs = Graphs()
    if forward == "eager":
        with torch._dynamo.compiled_autograd._enable(torch.compile(backend=graphs, fullgraph=True)):
            compiled = run(model, x, grad, fresh_seed)
    else:  # the switch applies to a backward that a compiled function calls (a graph break: not fullgraph)
        with torch._dynamo.config.patch(compiled_autograd=True):
            step = torch.compile(lambda x, grad: forward_backward(model, x, grad), backend=graphs)
            compiled = run(model, x, grad, fresh_seed, step)
    assert_same_run(compiled, eager)
    assert launched == eager_launches
    # Compiled autograd's graph: the one whose dynamo capture holds AccumulateGrad nodes.
    (autograd_graph,) = [found for found in graphs.dynamo if any("AccumulateGrad" in name for name in found)]
    assert ours(autograd_graph) == backward_ops(model), autograd_graph
    if forward == "compiled":
        forward_graphs = [ours(found) for found in graphs.dynamo if found is not autograd_graph]
        assert [found for found in forward_graphs if found] == [forward_ops(model)], graphs.dynamo
    assert set(forward_ops(model)) == set(OP_OF.values())


# ---- the GPU's way, launches stubbed, in a process without the interpreter ---------------------------------------


def stubbed_gpu_path_compiles() -> dict:
    """Run in a process without TRITON_INTERPRET (test_the_gpu_path_compiles_with_wrap_triton): per model, the
    kernels an eager and a compiled forward+backward launched on the GPU path (bench.host.compiled_path_on_cpu), what
    each graph held, and the ops the model's modules call."""
    from bench import host

    results = {}
    for name, model, size in (
        ("AlexNet", at.AlexNet(10, image_size=SMALL), SMALL),
        ("every op", every_op_model(), 13),
    ):
        x = torch.randn(2, 3, size, size, requires_grad=True)
        graphs = Graphs()
        with host.compiled_path_on_cpu():
            host.TRITON.clear()
            model(x).sum().backward()
            eager = Counter(kernel for _, kernel in host.TRITON.launches)
            host.TRITON.clear()
            torch._dynamo.reset()
            torch.compile(model, fullgraph=True, backend=graphs)(x).sum().backward()
            compiled = Counter(kernel for _, kernel in host.TRITON.launches)
        results[name] = {
            "eager": eager,
            "compiled": compiled,
            "dynamo": graphs.dynamo,
            "forward": graphs.forward,
            "backward": graphs.backward,
            "ops": forward_ops(model),
        }
    return results


GRAPHS = ("dynamo", "forward", "backward")


def test_the_gpu_path_compiles_with_wrap_triton():
    root = Path(__file__).resolve().parents[1]
    script = "import json, test_compile; print(json.dumps(test_compile.stubbed_gpu_path_compiles()))"
    env = reference_backend_env(PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.splitlines()[-1])
    covered = set()
    for name, result in results.items():
        ops = Counter(result["ops"])
        covered |= set(ops)
        assert [len(result[k]) for k in GRAPHS] == [1, 1, 1], f"{name}: fullgraph, one graph each way"
        (dynamo,), (forward,), (backward,) = ([Counter(found) for found in result[k]] for k in GRAPHS)
        assert ours(dynamo) == ops, (name, dynamo)
        # AOTAutograd inlined each op's kernels (as Inductor gets them on a GPU): no op is left, only kernels.
        assert not ours(forward) and not ours(backward), (name, forward, backward)
        in_graphs = kernels(forward) + kernels(backward)
        assert in_graphs, name
        assert Counter(result["compiled"]) == in_graphs, f"{name}: each kernel in a graph launched once"
        assert Counter(result["eager"]) == in_graphs, f"{name}: the compiled graphs launch what eager does"
        for found in (forward, backward):
            assert not any(key.startswith(TORCH_CONV_AND_POOL) for key in found), (name, found)
    assert covered == set(OP_OF.values()), "every public op compiled"
