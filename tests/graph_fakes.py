"""A stand-in for step_graph.CudaGraphs on a CPU, so that the capture and replay logic runs in the tests here.

A real capture records the step's launches and runs none of them; a real replay runs them again on the same memory,
with the host numbers they were captured with. FakeGraphs does what can be seen of that from outside:

- capture runs the step once (a CPU cannot defer it), then puts back everything the step changed (the parameters,
  the optimizer's state, the random generator), so that the capture has no effect on the run, as a real one has
  none; and it fills the float outputs with NaN (a real capture's outputs hold nothing until a replay).
- replay runs the step again, over the static input buffers (what the captured launches read), with each param
  group's learning rate as it was at capture (what the graph baked in), and writes the results into the captured
  outputs (the graph's static memory).

So a graph not replayed after its capture, inputs not copied into the static buffers, outputs read after the next
replay, or a graph not captured again when the learning rate changes all give numbers that differ from an eager run.
"""

import contextlib

import torch


class FakeGraph:
    def __init__(self, fake: "FakeGraphs", step, outputs, learning_rates):
        self.fake, self.step, self.outputs, self.learning_rates = fake, step, outputs, learning_rates

    def replay(self) -> None:
        groups = self.fake.optimizer.param_groups if self.fake.optimizer is not None else []
        now = [group["lr"] for group in groups]
        for group, rate in zip(groups, self.learning_rates, strict=True):
            group["lr"] = rate
        try:
            values = self.step()
        finally:
            for group, rate in zip(groups, now, strict=True):
                group["lr"] = rate
        for output, value in zip(self.outputs, values, strict=True):
            output.copy_(value)
        self.fake.replays += 1


class FakeGraphs:
    """model and optimizer: what the captured steps change (set them before the first capture; None for a step
    that changes nothing). fail: an exception every capture raises instead."""

    def __init__(self, model=None, optimizer=None, fail: Exception | None = None):
        self.model, self.optimizer, self.fail = model, optimizer, fail
        self.captured_at: list[list[float]] = []  # each capture's learning rates
        self.side_stream_runs = self.replays = 0

    @contextlib.contextmanager
    def side_stream(self):
        self.side_stream_runs += 1
        yield

    def capture(self, step):
        if self.fail is not None:
            raise self.fail
        tensors = self._state_tensors()
        saved = [tensor.detach().clone() for tensor in tensors]
        rng = torch.get_rng_state()
        outputs = step()
        with torch.no_grad():
            for tensor, value in zip(tensors, saved, strict=True):
                tensor.copy_(value)
        torch.set_rng_state(rng)
        for output in outputs:
            if output.is_floating_point():
                output.fill_(float("nan"))
        rates = [group["lr"] for group in self.optimizer.param_groups] if self.optimizer is not None else []
        self.captured_at.append(rates)
        return FakeGraph(self, step, outputs, rates), outputs

    def _state_tensors(self) -> list[torch.Tensor]:
        tensors = list(self.model.parameters()) if self.model is not None else []
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                tensors += [value for value in state.values() if isinstance(value, torch.Tensor)]
        return tensors
