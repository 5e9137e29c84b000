"""A step replayed as one CUDA graph: the trainer's SGD step (forward, loss, backward and the fused SGD update) and
evaluation's forward pass, each over static input buffers.

A step of the paper's network launches some 75 kernels, and Python spends microseconds on each; a CUDA graph
records the launches once and replays them with one call (DESIGN.md, "Host cost"). PyTorch's whole-network
recipe (docs: "CUDA Graphs", whole-network capture), as GraphedStep follows it:

- warm-up: the first `warmup` calls run the step eagerly, on a side stream, over the static buffers. They are real
  steps of the run (their losses and updates count), and they tune and compile every kernel the step launches: the
  autotuner refuses to tune during capture (kernels/autotune.py), and the fused SGD makes its momentum buffers at
  its first step.
- capture: `prepare` (the trainer's: the gradients set to None, so that backward allocates them in the graph's
  memory), then the step recorded into a torch.cuda.CUDAGraph on that side stream, its outputs (loss, logits;
  evaluation's probabilities) the graph's static outputs. Capture runs nothing: the step that captures then
  replays, as every later one does.
- replay: every later call copies its inputs into the static buffers and replays; it returns the static outputs,
  which the next replay overwrites (read them, or copy them, before the next call).

What a graph bakes in is fixed at capture: tensor addresses (the parameters, the optimizer's momentum buffers, the
static buffers) and the host numbers the launches took. `baked()` returns the host numbers that may change between
steps (the trainer's: each param group's hyperparameters, the learning rate among them, which the paper's schedule
divides by 10), and a call whose `baked()` differs from the capture's captures again (the kernels are warm by then;
the old graph's memory is given back first). Replacing a tensor the graph reads (optimizer.load_state_dict, as a
resume does) needs a new GraphedStep; the trainer builds its graphs after any resume.

Dropout draws a new mask at each replay: at.dropout draws its seed with torch.randint on the input's device, and
PyTorch's CUDA generator is graph-safe (a captured draw reads the Philox seed and offset from device memory, and
each replay advances the generator's offset by what the graph draws), so replays draw what eager steps would.

A call whose inputs differ in shape, strides, dtype or device from the static buffers runs eagerly (the trainer's
loaders never give one: training drops the epoch's partial batch, evaluation pads its last one). A capture that
fails (the exception's reason in one line on stderr, once) turns the graph off for the rest of the run: that step
and every later one run eagerly.

CudaGraphs is all of it that touches torch.cuda; tests give GraphedStep a stand-in to run the logic on a CPU.
"""

import contextlib
import sys
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

# Eager steps before the training step's capture. The first tunes and compiles every kernel (at the run's batch
# size) and makes the fused SGD's momentum buffers; the next run as every later step does. PyTorch's own
# whole-network example warms up 3 times; the cost is nil next to an epoch.
TRAINING_WARMUP = 3
# Evaluation's forward pass keeps no state between passes: one eager pass tunes its kernels at the evaluation
# batch size.
EVALUATION_WARMUP = 1


def warn(message: str) -> None:
    """One line on stderr, above a progress bar if one is drawn."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def eager_reason(amp: str, devices: str | None, world_size: int) -> str | None:
    """Why a run asked for CUDA graphs runs its steps eagerly, in a line (None: nothing stops the graphs)."""
    if devices:
        return "--devices puts the towers on two GPUs; a graph here is captured on one device"
    if world_size > 1:
        return "a data-parallel run (DistributedDataParallel's gradient all-reduce is not captured here)"
    if amp == "fp16":
        return "--amp fp16 (capturing the gradient scaler is not supported here; bf16 needs no scaler)"
    return None


def graphs_for(wanted: bool, device: torch.device, amp: str, devices: str | None, world_size: int,
               is_main: bool = True) -> "CudaGraphs | None":  # fmt: skip
    """CudaGraphs on device when graphs are wanted (--cuda-graphs) and this run can use them, else None; a run that
    wanted them and cannot says why in a line (from its main process only)."""
    if not wanted:
        return None
    reason = eager_reason(amp, devices, world_size)
    if reason is not None:
        if is_main:
            warn(f"CUDA graphs are off for this run: {reason}")
        return None
    return CudaGraphs(device)


def hyperparameters(optimizer: torch.optim.Optimizer) -> tuple:
    """What an optimizer step bakes into a graph that may change between steps: each param group's settings (the
    learning rate among them). A tensor setting is read by the graph itself, so only its identity counts."""
    return tuple(
        (key, id(value) if isinstance(value, torch.Tensor) else value)
        for group in optimizer.param_groups
        for key, value in group.items()
        if key != "params"
    )


class CudaGraphs:
    """torch.cuda's part: a side stream on device, the warm-up and capture run on, and CUDA graphs captured there
    into one memory pool.

    Capture is "thread_local": a DataLoader's pin-memory thread allocates pinned memory during the capture (a CUDA
    call that the default "global" mode makes fail the capture, and the loader with it).

    One pool for every graph (the training step's and evaluation's): a graph's pool stays reserved while it lives,
    so two pools would need both at once. Sharing is safe because graphs never replay at once, and what one graph's
    later reader needs (the parameters' gradients, each graph's outputs, read before the next replay) stays allocated,
    so another capture cannot take it."""

    def __init__(self, device: torch.device):
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()

    @contextlib.contextmanager
    def side_stream(self):
        """Run the body on the side stream, after what the current stream has queued, and the current stream's later
        work after the body."""
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            main.wait_stream(self.stream)

    def capture(self, step: Callable[[], Sequence[torch.Tensor]]):
        """(graph, outputs): step's launches recorded into a new CUDA graph (nothing runs), and its outputs."""
        graph = torch.cuda.CUDAGraph()
        main = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
                outputs = step()
        except BaseException:
            if torch.cuda.current_stream(self.device) == self.stream:
                self._abandon(main)
            raise
        return graph, outputs

    def _abandon(self, main: torch.cuda.Stream) -> None:
        """After a capture whose end failed (the step did something a capture forbids: a sync, a host read), which
        torch.cuda.graph leaves half-done: its stream still current and the allocator still sending this thread's
        allocations to the pool, which no later empty_cache or out-of-memory retry tolerates. Both are undone here,
        and the pool's blocks handed back (the graph never ended, so nothing else would)."""
        torch.cuda.set_stream(main)
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        for name in ("_cuda_endAllocateToPool", "_cuda_releasePool"):  # private: absent in some releases
            undo = getattr(torch._C, name, None)
            if undo is None:
                continue
            try:
                undo(index, self.pool)
            except RuntimeError:  # already undone by this release of torch
                pass
        self.pool = torch.cuda.graph_pool_handle()  # the old one is spent


class GraphedStep:
    """step(*inputs) -> a tuple of tensors, run eagerly for `warmup` calls, then captured once and replayed (this
    module's docstring). graphs: CudaGraphs for the device (or a stand-in). name: what the step is, for the warning.
    prepare: called before each capture. baked: the host values the capture bakes in; a change captures anew."""

    def __init__(self, step: Callable, graphs, *, name: str, warmup: int,
                 prepare: Callable[[], None] = lambda: None, baked: Callable[[], object] = lambda: None):  # fmt: skip
        self.step, self.graphs, self.name, self.warmup = step, graphs, name, warmup
        self.prepare, self.baked = prepare, baked
        self.inputs: list[torch.Tensor] | None = None  # the static input buffers
        self.outputs = None  # the graph's static outputs
        self.graph, self.baked_at_capture = None, None
        self.warm = 0  # eager calls made over the static buffers
        self.failed = False  # a capture failed: eager from then on
        self.captures = self.replays = 0

    def __call__(self, *inputs: torch.Tensor):
        if self.failed or not self._fits(inputs):
            return self.step(*inputs)
        for buffer, value in zip(self.inputs, inputs, strict=True):
            buffer.copy_(value)
        if self.warm < self.warmup:
            self.warm += 1
            with self.graphs.side_stream():
                return self.step(*self.inputs)
        baked = self.baked()
        if self.graph is None or baked != self.baked_at_capture:
            failure = None
            try:
                self._capture(baked)
            except Exception as error:  # noqa: BLE001 (whatever fails the capture, the step runs on eagerly)
                failure = _cause(error)
            if failure is not None:  # outside the except block: its traceback would keep the failed graph alive
                self.release()
                self.failed = True
                reason = str(failure).strip().splitlines()
                warn(f"CUDA graph capture of the {self.name} failed, so it runs without a graph from here on: "
                     f"{type(failure).__name__}: {reason[0] if reason else ''}")  # fmt: skip
                return self.step(*inputs)
        self.graph.replay()
        self.replays += 1
        return self.outputs

    def _fits(self, inputs: Sequence[torch.Tensor]) -> bool:
        """Whether inputs match the static buffers (made from the first call's inputs)."""
        if self.inputs is None:
            self.inputs = [torch.empty_like(value) for value in inputs]  # the same strides (channels_last too)
            return True
        return len(inputs) == len(self.inputs) and all(
            value.shape == buffer.shape and value.stride() == buffer.stride() and value.dtype == buffer.dtype
            and value.device == buffer.device
            for value, buffer in zip(inputs, self.inputs, strict=True)
        )  # fmt: skip

    def _capture(self, baked) -> None:
        self.release()  # the old graph's memory goes back before the new one takes its own
        self.prepare()
        self.graph, self.outputs = self.graphs.capture(lambda: self.step(*self.inputs))
        self.baked_at_capture = baked
        self.captures += 1

    def release(self) -> None:
        """Drop the graph and its outputs (the next call captures again, if it replays)."""
        self.graph = self.outputs = self.baked_at_capture = None


def _cause(error: BaseException) -> BaseException:
    """The error that made a capture fail: when ending the capture raised ("operation failed due to a previous error
    during capture"), the one raised inside it, which that error's context holds."""
    context = error.__context__
    return context if isinstance(context, Exception) and "capture" in str(error).lower() else error
