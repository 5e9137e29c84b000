"""A step replayed as one CUDA graph (alexnet_triton/step_graph.py).

Here, without a GPU, GraphedStep runs with a stand-in for torch.cuda's graphs (graph_fakes.FakeGraphs): the warm-up,
the copy of each batch into the static buffers, a replay per step, a new capture when the learning rate changes,
the eager fallbacks and their warnings are tested through the numbers they give, against the same steps run
eagerly. That dropout draws a new mask at each replay rests on where its seed comes from, which is tested here too;
the replays themselves are checked on a GPU (the tests at the end, skipped here)."""

import pytest
import torch
import torch.nn.functional as F
from alexnet_triton.kernels import dropout as dropout_kernels
from graph_fakes import FakeGraphs

import alexnet_triton as at
from alexnet_triton import step_graph

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="replays a real CUDA graph: needs a CUDA GPU")


class Toy:
    """A small network with our dropout (its kernel: the interpreter's here), its fused SGD and a step shaped as the
    trainer's (train.sgd_step): returns (loss, logits), detached."""

    def __init__(self, seed: int, device="cpu"):
        torch.manual_seed(seed)
        layers = torch.nn.Linear(6, 16), torch.nn.ReLU(), at.nn.Dropout(0.5), torch.nn.Linear(16, 3)
        self.model = torch.nn.Sequential(*layers).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, fused=True)

    def step(self, inputs, labels):
        logits = self.model(inputs)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def graphed(self, graphs, warmup=2):
        return step_graph.GraphedStep(
            self.step, graphs, name="training step", warmup=warmup,
            prepare=lambda: self.optimizer.zero_grad(set_to_none=True),
            baked=lambda: step_graph.hyperparameters(self.optimizer),
        )  # fmt: skip


def batches(count: int, size: int = 5, device="cpu", seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=generator).to(device), torch.randint(0, 3, (size,), generator=generator)
             .to(device)) for _ in range(count)]  # fmt: skip


def run(toy: Toy, step, data, lr_at: dict[int, float] | None = None):
    """Each batch's (loss, logits), copied at once (a graph's outputs change at the next replay); lr_at: the learning
    rate set before the step of that index, as the trainer's schedule does between epochs."""
    results = []
    for index, (inputs, labels) in enumerate(data):
        for group in toy.optimizer.param_groups:
            group["lr"] = (lr_at or {}).get(index, group["lr"])
        results.append(tuple(value.clone() for value in step(inputs, labels)))
    return results


def assert_same_run(got, expected, got_toy: Toy, expected_toy: Toy):
    for (loss, logits), (want_loss, want_logits) in zip(got, expected, strict=True):
        assert torch.equal(loss, want_loss) and torch.equal(logits, want_logits)
    for parameter, want in zip(got_toy.model.parameters(), expected_toy.model.parameters(), strict=True):
        assert torch.equal(parameter, want)


def test_warm_up_then_one_capture_and_a_replay_per_step_equal_eager_steps():
    data, lr_at = batches(9), {6: 0.01}  # the learning rate falls before the 7th step
    eager = Toy(seed=3)
    expected = run(eager, eager.step, data, lr_at)

    toy = Toy(seed=3)
    fake = FakeGraphs(toy.model, toy.optimizer)
    graphed = toy.graphed(fake, warmup=2)
    got = run(toy, graphed, data, lr_at)
    assert_same_run(got, expected, toy, eager)
    assert fake.side_stream_runs == 2, "two eager warm-up steps, on the side stream"
    assert fake.captured_at == [[0.1], [0.01]], "captured after the warm-up, and again when the rate changed"
    assert graphed.captures == 2 and graphed.replays == fake.replays == 7, "every step after the warm-up replays"


def test_replays_return_the_same_static_outputs_each_step():
    toy = Toy(seed=0)
    graphed = toy.graphed(FakeGraphs(toy.model, toy.optimizer), warmup=1)
    data = batches(4)
    graphed(*data[0])  # warm-up: its own tensors
    first = graphed(*data[1])
    second = graphed(*data[2])
    assert all(a is b for a, b in zip(first, second, strict=True)), "a replay writes into the captured outputs"


def test_a_batch_of_another_shape_runs_eagerly_and_the_graph_stays():
    data = batches(5)
    data.insert(4, batches(1, size=3, seed=9)[0])  # a short batch after the capture
    eager = Toy(seed=4)
    expected = run(eager, eager.step, data)
    toy = Toy(seed=4)
    fake = FakeGraphs(toy.model, toy.optimizer)
    graphed = toy.graphed(fake, warmup=2)
    assert_same_run(run(toy, graphed, data), expected, toy, eager)
    assert graphed.captures == 1 and graphed.replays == 3, "steps 3, 4 and 6 replay; the short batch does not"


def test_a_failed_capture_warns_once_and_every_later_step_runs_eagerly(capsys):
    data = batches(6)
    eager = Toy(seed=5)
    expected = run(eager, eager.step, data, {4: 0.05})
    toy = Toy(seed=5)
    failure = RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")
    graphed = toy.graphed(FakeGraphs(toy.model, toy.optimizer, fail=failure), warmup=2)
    assert_same_run(run(toy, graphed, data, {4: 0.05}), expected, toy, eager)
    assert graphed.failed and graphed.captures == 0 and graphed.replays == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: CUDA graph capture of the training step failed, so it runs without a graph from here on: "
        "RuntimeError: CUDA error: operation not permitted when stream is capturing"
    ]


def test_a_failed_capture_is_reported_by_the_error_raised_inside_it():
    """When the step does what a capture forbids, ending the capture raises its own error, whose context holds the
    one that says what went wrong; the warning names that one."""
    try:
        try:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        except RuntimeError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")  # noqa: B904
    except RuntimeError as ended:
        assert "previous error" in str(ended) and ended.__context__ is not None
        assert "not permitted" in str(step_graph._cause(ended))
    tuning = ValueError("no config fits")
    assert step_graph._cause(tuning) is tuning


def test_the_hyperparameters_a_graph_bakes_in():
    toy = Toy(seed=0)
    before = step_graph.hyperparameters(toy.optimizer)
    assert ("lr", 0.1) in before and ("momentum", 0.9) in before and ("weight_decay", 1e-3) in before
    toy.optimizer.param_groups[0]["lr"] *= 0.1
    assert step_graph.hyperparameters(toy.optimizer) != before
    rate = torch.tensor(0.1)  # a tensor the graph would read itself: only which tensor counts, never its value
    toy.optimizer.param_groups[0]["lr"] = rate
    with_tensor = step_graph.hyperparameters(toy.optimizer)
    rate.fill_(0.5)
    assert step_graph.hyperparameters(toy.optimizer) == with_tensor


@pytest.mark.parametrize(
    "amp, devices, world_size, reason",
    [
        ("none", None, 1, None),
        ("bf16", None, 1, None),
        ("fp16", None, 1, "--amp fp16"),
        ("none", "cuda:0,cuda:1", 1, "--devices puts the towers on two GPUs"),
        ("none", None, 2, "a data-parallel run"),
    ],
)
def test_runs_that_cannot_use_graphs_say_why_in_one_line(amp, devices, world_size, reason, capsys):
    got = step_graph.eager_reason(amp, devices, world_size)
    assert (got is None) if reason is None else got.startswith(reason)
    if reason is not None:
        assert step_graph.graphs_for(True, torch.device("cuda", 0), amp, devices, world_size) is None
        assert capsys.readouterr().err.splitlines() == [f"warning: CUDA graphs are off for this run: {got}"]
        step_graph.graphs_for(True, torch.device("cuda", 0), amp, devices, world_size, is_main=False)
        assert capsys.readouterr().err == "", "only the main process says it"
    assert step_graph.graphs_for(False, torch.device("cpu"), amp, devices, world_size) is None
    assert capsys.readouterr().err == "", "nothing said when graphs were not asked for"


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, not cpu"):
        step_graph.CudaGraphs(torch.device("cpu"))


def test_dropout_draws_its_seed_on_the_device_where_a_graph_replays_it(monkeypatch, device):
    """at.dropout with seed=None draws its Philox seed with torch.randint on the input's device and hands the kernel
    that tensor, never a host number: on CUDA that draw is graph-safe (captured, it reads the generator's seed and
    offset from device memory, and each replay advances the offset), so every replay draws a new mask. The backward
    regenerates the mask from the same seed tensor. (The kernels run here in Triton's interpreter.)"""
    draws, seeds = [], []
    randint, launch = torch.randint, dropout_kernels.dropout

    def recording_randint(*args, **kwargs):
        draws.append((args, kwargs, randint(*args, **kwargs)))
        return draws[-1][2]

    def recording_launch(input, seed, *args, **kwargs):
        seeds.append(seed)
        return launch(input, seed, *args, **kwargs)

    monkeypatch.setattr(torch, "randint", recording_randint)
    monkeypatch.setattr(dropout_kernels, "dropout", recording_launch)
    x = torch.randn(4, 33, device=device, requires_grad=True)
    y = at.dropout(x, 0.5)
    y.backward(torch.ones_like(y))
    assert len(draws) == 1, "one draw per call"
    args, kwargs, drawn = draws[0]
    assert kwargs["device"] == x.device and drawn.device == x.device and drawn.dtype == torch.int64
    assert len(seeds) == 2 and seeds[0] is drawn and seeds[1] is drawn, "forward and backward take the drawn tensor"
    assert torch.equal(x.grad, (y != 0).float() * 2), "the backward's mask is the forward's"
    at.dropout(x, 0.5)
    assert len(draws) == 2 and not torch.equal(draws[0][2], draws[1][2]), "each call draws anew"


# ------------------------------------------------------------------------------------------------------------------
# On a GPU: real CUDA graphs
# ------------------------------------------------------------------------------------------------------------------


def cuda_graphs() -> step_graph.CudaGraphs:
    return step_graph.CudaGraphs(torch.device("cuda", torch.cuda.current_device()))


@needs_cuda
def test_on_a_gpu_graph_replays_train_as_eager_steps_do():
    device = torch.device("cuda", torch.cuda.current_device())
    data, lr_at = batches(8, device=device), {5: 0.01}
    results = []
    for graphed in (False, True):
        torch.cuda.manual_seed(7)
        toy = Toy(seed=3, device=device)
        step = toy.graphed(cuda_graphs(), warmup=2) if graphed else toy.step
        results.append((run(toy, step, data, lr_at), [p.detach().clone() for p in toy.model.parameters()]))
    (eager, eager_weights), (got, got_weights) = results
    assert step.captures == 2 and step.replays == 6 and not step.failed
    for (loss, logits), (want_loss, want_logits) in zip(got, eager, strict=True):
        torch.testing.assert_close(loss, want_loss)  # the same dropout draws: a replay advances the generator alike
        torch.testing.assert_close(logits, want_logits)
    for weight, want in zip(got_weights, eager_weights, strict=True):
        torch.testing.assert_close(weight, want)


@needs_cuda
def test_on_a_gpu_each_replay_draws_a_new_dropout_mask():
    device = torch.device("cuda", torch.cuda.current_device())
    ones = torch.ones(64, 1024, device=device)
    graphed = step_graph.GraphedStep(lambda x: (at.dropout(x, 0.5),), cuda_graphs(), name="dropout", warmup=1)
    graphed(ones)  # warm-up: tunes and compiles the kernel
    masks = [graphed(ones)[0] != 0 for _ in range(3)]
    masks = [mask.clone() for mask in masks]
    assert graphed.captures == 1 and graphed.replays == 3
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2]), "a new mask each replay"
    for mask in masks:
        assert abs(mask.float().mean().item() - 0.5) < 0.02


@needs_cuda
def test_on_a_gpu_a_capture_that_fails_warns_and_the_step_runs_eagerly(capsys):
    device = torch.device("cuda", torch.cuda.current_device())

    def syncs(x):  # reading a value during capture is not allowed
        return (x * float(x.sum()),)

    graphed = step_graph.GraphedStep(syncs, cuda_graphs(), name="syncing step", warmup=1)
    x = torch.randn(8, device=device)
    for _ in range(3):
        torch.testing.assert_close(graphed(x)[0], x * x.sum())
    assert graphed.failed and graphed.captures == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: CUDA graph capture of the syncing step failed"), err
    # The device and its generator still work, eagerly: a new mask each call (a generator left in capture mode
    # would not advance).
    first, second = (at.dropout(torch.ones(4096, device=device), 0.5) != 0 for _ in range(2))
    assert 0.4 < first.float().mean().item() < 0.6 and not torch.equal(first, second)
    # The half-ended capture was undone: this thread is back on its own stream, and the allocator, no longer
    # sending allocations to the abandoned pool, can free its cache (it asserts while a capture is underway).
    assert torch.cuda.current_stream(device) == torch.cuda.default_stream(device)
    torch.cuda.empty_cache()
