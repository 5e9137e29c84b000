"""A static census of the kernels as an H100 would run them: every kernel x config x dtype compiled for sm_90
offline, and its SASS read.

    python -m bench.census                                  # every kernel, config and dtype (minutes)
    python -m bench.census --kernel conv --out census.md    # the kernels whose name contains "conv"
    python -m bench.census --first-step                     # the compiles the conv layers' first training step needs
    python -m bench.census --first-epoch                    # the compiles and tunings of each part of a run (seconds)
    python -m bench.census --memory                         # the memory-bound kernels' model alone (a minute)

Per compiled variant: registers per thread, spill bytes (stores/loads), shared memory, compile seconds, and the hot
loop, the innermost loop that holds the most tensor-core instructions (without any, the longest innermost loop):
its length in instructions, its tensor-core instructions (HGMMA on Hopper, HMMA), async copies into shared memory
(LDGSTS, and TMA's UTMALDG), 128-bit global loads, and the modeled issue bound. A last section models the memory-bound
kernels at AlexNet's shapes, bytes moved against instructions issued (bench/memory_model.py).

The modeled issue bound compares two cycle counts of one trip round the hot loop on one SM: the cycles the tensor
cores need for the loop's FLOPs (4096 bf16/fp16 FLOP or 2048 TF32 FLOP per clock per SM on an H100) against the
cycles its instructions take to issue (length x warps / 4 schedulers, one instruction per clock each). 1.0 means
issuing the loop's instructions need not slow the tensor cores; 0.1 means it keeps them at most 10% busy. It bounds
issue only: memory bandwidth, latency, occupancy and bank conflicts are not in it. Everything here is static:
nothing runs on a GPU.
"""

import argparse
import contextlib
import dataclasses
import datetime
import platform
import sys
import tempfile
from pathlib import Path

import triton

from bench.sass import LoopCensus, census_of_loop, disassemble, hot_loop, parse_sass

# ---------------------------------------------------------------------------------------------
# The census of compiled cases
# ---------------------------------------------------------------------------------------------


def precision(case: dict) -> str:
    """What tl.dot multiplies in: tf32 for fp32 with TF32 on, else the tensors' dtype."""
    return "tf32" if case["dtype"] == "fp32" and case["constexprs"].get("TF32") else case["dtype"]


@dataclasses.dataclass
class Row:
    kernel: str
    precision: str
    variant: str
    config: str
    num_warps: int
    error: str | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    shared: int | None = None
    seconds: float = 0.0
    loop: LoopCensus | None = None

    @property
    def bound(self) -> float | None:
        return self.loop.issue_bound(self.num_warps, self.precision) if self.loop else None

    @property
    def spills(self) -> bool:
        return bool(self.spill_stores or self.spill_loads)


def census_row(kernel: str, result: dict) -> Row:
    """One compile result of bench.kernel_specs.compile_specs, with its SASS read."""
    row = Row(kernel, precision(result), result["variant"], result["config"], result["options"]["num_warps"])
    row.seconds = result.get("seconds", 0.0)
    if "error" in result:
        row.error = result["error"].splitlines()[0][:200] if result["error"] else "error"
        return row
    row.registers, row.shared = result["registers"], result["shared"]
    row.spill_stores, row.spill_loads = result["spill_stores"] or 0, result["spill_loads"] or 0
    functions = parse_sass(disassemble(result["cubin"]))
    instructions = max(functions.values(), key=len) if functions else []
    body = hot_loop(instructions)
    row.loop = census_of_loop(body) if body else None
    return row


def take_census(specs, folder: Path, *, all_configs: bool = True) -> list[Row]:
    from bench.kernel_specs import compile_specs  # imports the kernels: not needed to parse SASS

    results = compile_specs(specs, folder, all_configs=all_configs, timeout=7200)
    return [census_row(name, result) for name, outcomes in results.items() for result in outcomes]


# ---------------------------------------------------------------------------------------------
# The compiles and tunings of a run, counted without a GPU
# ---------------------------------------------------------------------------------------------


def _jit_function(kernel):
    """The @triton.jit function under a kernel's autotuner."""
    fn = kernel
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    return fn


def _specializer():
    """(argument, its KernelParam) -> what Triton compiles the argument as: Triton's own rule where this release has it
    (an integer equal to 1 becomes a constant, others are i32 or i64, with a hint when a multiple of 16; a tensor by
    dtype and 16-byte alignment; nothing of either for a do_not_specialize parameter), else that rule written out."""
    try:
        from triton._C.libtriton import native_specialize_impl
    except ImportError:
        native_specialize_impl = None
    if native_specialize_impl is not None:
        try:
            from triton.backends.nvidia.compiler import CUDABackend as backend
        except ImportError:
            from triton.backends.compiler import BaseBackend as backend

        def native(arg, param):
            specialize, align = not param.do_not_specialize, not param.do_not_specialize_on_alignment
            return native_specialize_impl(backend, arg, param.is_const, specialize, align)

        return native

    import torch

    def written_out(arg, param):
        if isinstance(arg, torch.Tensor):
            aligned = arg.storage_offset() * arg.element_size() % 16 == 0
            return (str(arg.dtype), "D" if aligned and not param.do_not_specialize_on_alignment else "")
        if arg is None:
            return ("constexpr", None)
        if isinstance(arg, bool) or not isinstance(arg, int):
            return ("u1" if isinstance(arg, bool) else "fp32", None)
        width = "i32" if -(2**31) <= arg < 2**31 else "i64"
        if param.do_not_specialize:
            return (width, None)
        return ("constexpr", 1) if arg == 1 else (width, "D" if arg % 16 == 0 else "")

    return written_out


class LaunchRecord:
    """Kernel launches recorded instead of run (it stands in for _common.launcher), and what each would compile and
    tune in a process that has seen the launches recorded before it.

    A launch at a tuning key the process has not seen yet tunes: the autotuner compiles every config its prune keeps,
    each once per Triton specialization of the arguments (see _specializer; the constexprs a launch passes are part of
    it). A launch at a key already tuned runs the config tuned for it, which only a GPU's timing names: it compiles
    one config when its specialization was compiled for none of the key's candidates yet, nothing otherwise. The key
    is the autotuner's own (autotune.CheckedAutotuner.key_of: sizes bucketed to powers of two, constexprs, dtypes).

    `added` counts, per kernel, the new compiles and new keys since it was last taken (take)."""

    def __init__(self):
        self.specialize = _specializer()
        self.compiles: set = set()  # (kernel, specialization, config)
        self.tuned: dict = {}  # (kernel, key) -> the configs tuned over
        self.added: dict[str, list[int]] = {}  # kernel -> [new compiles, new keys]
        self.autocast = None  # the dtype autocast casts a conv's floating inputs to; None: no autocast

    def launcher(self, kernel, expect=None):
        """Stands in for _common.launcher(kernel, expect)[grid](...): the expectation and the grid only matter to a
        launch that runs."""
        record = self

        class Launch:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: record.launch(kernel, args, kwargs)

        return Launch()

    def launch(self, kernel, args: tuple, kwargs: dict) -> None:
        name = kernel.base_fn.__name__
        named = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs}
        fn = _jit_function(kernel)
        specialization = tuple(
            ("constexpr", named[p.name]) if p.is_constexpr else self.specialize(named[p.name], p)
            for p in fn.params
            if p.name in named
        )
        if hasattr(kernel, "key_of"):
            key = (name, kernel.key_of(named))
        else:  # Triton's own autotuner
            key = (name, tuple(named.get(k) for k in kernel.keys))
        added = self.added.setdefault(name, [0, 0])
        if key not in self.tuned:
            self.tuned[key] = [str(config) for config in _candidates(kernel, args, kwargs)]
            added[1] += 1
            wanted = {(name, specialization, config) for config in self.tuned[key]}
        elif any((name, specialization, config) in self.compiles for config in self.tuned[key]):
            wanted = set()
        else:
            wanted = {(name, specialization, f"the config tuned at {key[1]}")}
        added[0] += len(wanted - self.compiles)
        self.compiles |= wanted

    def take(self) -> dict[str, tuple[int, int]]:
        """kernel -> (new compiles, new keys) since the last take, for the kernels that launched."""
        taken = {name: (n[0], n[1]) for name, n in self.added.items()}
        self.added = {}
        return taken

    def state(self) -> tuple:
        return set(self.compiles), {key: list(configs) for key, configs in self.tuned.items()}

    def restore(self, state: tuple) -> None:
        self.compiles, self.tuned = set(state[0]), {key: list(configs) for key, configs in state[1].items()}
        self.added = {}


def _candidates(kernel, args, kwargs) -> list:
    """The configs the kernel's autotuner keeps for a launch: its own prune (autotune.CheckedAutotuner), else Triton's
    early_config_prune."""
    named = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs}
    if getattr(kernel, "prune", None) is not None:
        return kernel.prune(kernel.configs, named)
    kernel.nargs = named
    return kernel.prune_configs(kwargs)


@contextlib.contextmanager
def launches_recorded(record: LaunchRecord, *, sms: int = 132):
    """Within it, every kernel launch is recorded in `record` instead of run, and the ops take meta tensors (no
    memory, no GPU) to their kernels' launchers as they take CUDA tensors: functional.backend says "triton" for them,
    a conv casts its floating inputs to record.autocast as autocast_inputs does under autocast (PyTorch has no
    autocast for meta tensors), and the launchers split reductions for a GPU of `sms` SMs. Needs the compiled
    kernels (no TRITON_INTERPRET): their autotuners prune as on a GPU."""
    import torch
    from alexnet_triton.kernels import _common, conv_tuning

    from alexnet_triton.functional import dispatch

    if _common.INTERPRET:
        raise RuntimeError("counting compiles needs the kernels as compiled (TRITON_INTERPRET unset)")

    def backend(device) -> str:
        device = device.device if isinstance(device, torch.Tensor) else torch.device(device)
        return "triton" if device.type == "meta" else dispatch_backend(device)

    def autocast_inputs(device, *tensors):
        if device.type != "meta" or record.autocast is None:
            return dispatch_autocast_inputs(device, *tensors)
        return tuple(t.to(record.autocast) if t is not None and t.is_floating_point() else t for t in tensors)

    dispatch_backend, dispatch_autocast_inputs = dispatch.backend, dispatch.autocast_inputs
    patches = [(_common, "launcher", record.launcher), (conv_tuning, "sm_count", lambda device: sms)]
    for name, module in list(sys.modules.items()):  # each op's module imported them by name
        if name.split(".")[0] == "alexnet_triton":
            if getattr(module, "backend", None) is dispatch_backend:
                patches.append((module, "backend", backend))
            if getattr(module, "autocast_inputs", None) is dispatch_autocast_inputs:
                patches.append((module, "autocast_inputs", autocast_inputs))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield record
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def first_step_compiles(*, batch: int = 128, dtype: str = "bf16", sms: int = 132) -> dict[str, int]:
    """Kernel -> how many distinct compiles the conv layers of AlexNet's first training step launch (per tower, conv1
    for both towers at once, channels_last, the input image needing no gradient): the conv launchers run on meta
    tensors of the towers' shapes with the launches recorded instead of run (LaunchRecord: per Triton specialization
    and per config the autotuner keeps after pruning). sms: the GPU's SM count, which decides the reduction splits.
    first_epoch runs the whole network, every kernel. Needs the compiled kernels (no TRITON_INTERPRET)."""
    import torch
    from alexnet_triton.kernels import conv, conv_grad

    from alexnet_triton.model import layer_shapes

    record = LaunchRecord()
    with launches_recorded(record, sms=sms):
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        last = torch.channels_last
        for shape in layer_shapes():
            if not shape.layer.relu:  # fc8: a plain linear layer
                continue
            c_in, c_out, k, size = shape.in_channels, shape.out_channels, shape.kernel, shape.input_size
            if shape.layer.reads == "image":  # both towers' conv1 as one convolution (AlexNet.conv1_together)
                c_out *= 2
            x = torch.empty(batch, c_in, size, size, dtype=torch_dtype, device="meta").to(memory_format=last)
            w = torch.empty(c_out, c_in, k, k, dtype=torch_dtype, device="meta").to(memory_format=last)
            stride, padding = (shape.layer.stride,) * 2, (shape.layer.padding,) * 2
            out = conv.conv_relu_forward(x, w, torch.empty(c_out, dtype=torch_dtype, device="meta"), stride, padding, 1)
            masked, _ = conv_grad.relu_grad(torch.empty_like(out), out, True)
            if shape.layer.reads != "image":  # the image needs no gradient
                conv_grad.conv_relu_input_grad(masked, w, list(x.shape), last, stride, padding, 1)
            conv_grad.conv_relu_weight_grad(masked, x, list(w.shape), last, stride, padding, 1)
    return {name: compiles for name, (compiles, _) in record.take().items()}


@dataclasses.dataclass(frozen=True)
class RunShape:
    """What decides the sizes a training run's kernels see: its images, batch and crop, and where crops are made."""

    name: str
    train_images: int
    val_images: int
    batch: int
    image_size: int
    crops_on_gpu: bool  # a prepared store on CUDA: augment's crop kernel makes the crops (input_pipeline.GpuPipeline)

    @property
    def steps(self) -> int:
        """Training steps per epoch: whole batches, the partial last one dropped."""
        from alexnet_triton import data

        return data.steps_per_epoch(self.train_images, self.batch)

    @property
    def dropped(self) -> int:
        """The images of the partial last training batch, which the loader drops (0: none)."""
        return self.train_images - self.steps * self.batch

    @property
    def eval_batch(self) -> int:
        """The one evaluation batch size (train.py): at most EVALUATION_BATCH_FACTOR training batches, evened out."""
        from alexnet_triton import data
        from alexnet_triton.train import EVALUATION_BATCH_FACTOR

        return data.even_batch_size(self.val_images, EVALUATION_BATCH_FACTOR * self.batch)

    @property
    def eval_batches(self) -> int:
        return -(-self.val_images // self.eval_batch)

    @property
    def last_eval(self) -> int:
        """The real images of the last evaluation batch, padded up to eval_batch."""
        return self.val_images - (self.eval_batches - 1) * self.eval_batch


# ImageNet's 1,281,167 training and 50,000 validation images on one process, from a prepared store (crops made on the
# GPU); the built-in shapes dataset with the trainer's defaults for it (67x67 crops, batch 64, made in the loader).
IMAGENET = RunShape("ImageNet, a prepared store (crops on the GPU)", 1_281_167, 50_000, 128, 227, crops_on_gpu=True)
BUILTIN = RunShape("the built-in shapes dataset (crops in the loader)", 4_000, 1_000, 64, 67, crops_on_gpu=False)


@dataclasses.dataclass
class Phase:
    """A part of a run and what it adds to what the process has compiled and tuned before it."""

    name: str
    added: dict[str, tuple[int, int]]  # kernel -> (new compiles, new tuning keys)
    # "first": the first training step or evaluation batch; "epoch": the rest of the epochs; "end": after the last
    # epoch; "contrast": what the run avoids, counted against the epochs alone
    part: str

    @property
    def compiles(self) -> int:
        return sum(c for c, _ in self.added.values())

    @property
    def keys(self) -> int:
        return sum(k for _, k in self.added.values())


def first_epoch(run: RunShape = IMAGENET, *, amp: str = "bf16", sms: int = 132) -> list[Phase]:
    """The compiles and autotuner keys each part of a run adds, counted without a GPU: the real network (both towers
    on one device, channels_last, the paper's LRN fused with the overlapping pool at layers 1 and 2, max-pool at 5,
    dropout at fc6 and fc7; fc8 and the loss are ATen) and the trainer's input pipeline run on meta tensors, every
    kernel launch recorded (LaunchRecord, launches_recorded) in the order a run makes them:

    - training step 1 at the training batch (crops, forward, loss, backward), then step 2 (every later step has its
      shape: the loader drops the partial last batch);
    - evaluation batch 1 at the evaluation batch size (eval mode, no gradients), batch 2, and the last one, whose real
      images are cropped and then padded up to the evaluation batch (evaluation.evaluate);
    - epoch 2's first step and evaluation batch (after evaluation the network trains again);
    - figure 4 after the last epoch (run_files.figure4: predictions and fc7 features at the evaluation batch, as the
      trainer runs it: under the run's autocast, channels_last);
    - for contrast, each counted against the first epoch alone: the partial last training batch as a step, had the
      loader not dropped it, and the last evaluation batch at its real size, had it not been padded.

    amp: "bf16" or "fp16" (autocast), or "none" (fp32, TF32 as torch.backends.cudnn.allow_tf32 says). sms: the GPU's SM
    count (132: an H100 SXM), which decides the reduction splits. Seconds on a CPU; needs the compiled kernels (no
    TRITON_INTERPRET)."""
    import torch
    import torch.nn.functional as F

    from alexnet_triton import data, input_pipeline
    from alexnet_triton.model import AlexNet

    meta = torch.device("meta")
    side = data.resize_size(run.image_size)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    stats = {"mean": torch.zeros(3), "scale": torch.ones(3)}
    if run.crops_on_gpu:  # input_pipeline.GpuPipeline without its store: the loader's batches are made here
        pipeline = object.__new__(input_pipeline.GpuPipeline)
        pipeline.image_size, pipeline.stats, pipeline.ten_crop, pipeline.side = run.image_size, stats, False, side
        pipeline._stats_on = {}
    else:
        pipeline = input_pipeline.CpuPipeline(None, None, run.image_size, stats, seed=0)

    def loader_batch(count: int, training: bool) -> tuple:
        """A batch of `count` images as the loader yields it (collated, contiguous)."""
        labels = torch.zeros(count, dtype=torch.int64, device=meta)
        if not run.crops_on_gpu:  # augmented crops, normalized, float32
            return torch.empty(count, 3, run.image_size, run.image_size, device=meta), labels
        images = torch.empty(count, side, side, 3, dtype=torch.uint8, device=meta)
        if not training:
            return images, labels
        draws = torch.zeros(count, 3, dtype=torch.int32, device=meta)  # top, left, flip
        return images, draws, torch.zeros(count, 3, device=meta), labels

    with torch.device(meta):
        model = AlexNet(1000, image_size=run.image_size)
    model.to(memory_format=torch.channels_last)  # training_state: channels_last on a GPU

    def training_step(count: int) -> None:  # train.training_step
        images, labels = pipeline.training_batch(loader_batch(count, True), meta, True)
        model.train()
        model.zero_grad(set_to_none=True)
        record.autocast = autocast
        logits = model(images)
        record.autocast = None
        F.cross_entropy(logits.float(), labels).backward()

    @torch.no_grad()
    def evaluation_batch(count: int, padded_to: int | None) -> None:  # evaluation.evaluate
        images, _ = pipeline.evaluation_batch(loader_batch(count, False), meta, True)
        if padded_to is not None:
            images = data.pad_rows(images, padded_to)
        model.eval()
        record.autocast = autocast
        model(images).float().softmax(-1)
        record.autocast = None

    @torch.no_grad()
    def figure4(count: int) -> None:  # figures.network_outputs, under the run's autocast and in its layout
        images = data.pad_rows(torch.empty(count, 3, run.image_size, run.image_size, device=meta), count)
        images = images.contiguous(memory_format=torch.channels_last)
        model.eval()
        record.autocast = autocast
        model(images).float().softmax(-1)
        model.features(images).float()
        record.autocast = None

    B, E = run.batch, run.eval_batch
    phases = []
    record = LaunchRecord()
    with launches_recorded(record, sms=sms):

        def phase(name: str, part: str, *steps) -> None:
            for step in steps:
                step()
            phases.append(Phase(name, record.take(), part))

        phase(f"training step 1 ({B} images)", "first", lambda: training_step(B))
        phase(f"training steps 2-{run.steps:,} ({B} images)", "epoch", lambda: training_step(B))
        phase(f"evaluation batch 1 ({E} images)", "first", lambda: evaluation_batch(E, E))
        later = [lambda: evaluation_batch(E, E)] if run.eval_batches > 2 else []
        if run.eval_batches > 1:  # the last: its real images cropped, then padded up to E
            later.append(lambda: evaluation_batch(run.last_eval, E))
        padded = f"; the last {run.last_eval} padded to {E}" if run.last_eval < E else ""
        phase(f"evaluation batches 2-{run.eval_batches} ({E} images{padded})", "epoch", *later)
        phase("epochs 2 on (a training step, an evaluation batch)", "epoch", lambda: training_step(B),
              lambda: evaluation_batch(E, E))  # fmt: skip
        epoch = record.state()
        phase(f"figure 4 after the last epoch ({E} images a pass, as evaluation)", "end", lambda: figure4(E))
        record.restore(epoch)
        name = "a partial last training batch, were it not dropped"
        if run.dropped:
            phase(f"{name} ({run.dropped} images)", "contrast", lambda: training_step(run.dropped))
        else:
            phase(f"{name} (none: {B} divides the {run.train_images:,} images)", "contrast")
        record.restore(epoch)
        name = "the last evaluation batch, were it not padded"
        if run.last_eval < E:
            phase(f"{name} ({run.last_eval} images)", "contrast", lambda: evaluation_batch(run.last_eval, None))
        else:
            phase(f"{name} (none: {E} divides the {run.val_images:,} images)", "contrast")
    return phases


def verdict(phases: list[Phase]) -> bool:
    """Whether the epochs compile and tune only in the first training step and the first evaluation batch."""
    return all(p.compiles == p.keys == 0 for p in phases if p.part == "epoch")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def first_epoch_report(run: RunShape, phases: list[Phase], *, amp: str = "bf16", sms: int = 132) -> list[str]:
    """The phase x kernel table of first_epoch, its totals and the verdict, as markdown lines."""
    lines = [
        f"{run.name}: {run.train_images:,} training images, batch {run.batch} ({run.steps:,} steps an epoch"
        f"{f', {run.dropped} images dropped' if run.dropped else ''}), {run.val_images:,} held-out images in "
        f"{run.eval_batches} evaluation batches of {run.eval_batch}, {run.image_size}x{run.image_size} crops, "
        f"{'--amp ' + amp if amp != 'none' else '--amp none (fp32)'}, channels_last, kernels and splits as on a GPU of "
        f"{sms} SMs.",
        "",
        "| phase | kernel | new compiles | new tuning keys |",
        "| --- | --- | ---: | ---: |",
    ]
    for p in phases:
        rows = [(kernel, c, k) for kernel, (c, k) in p.added.items() if c or k]
        for kernel, c, k in rows:
            lines.append(f"| {p.name} | {kernel} | {c} | {k} |")
        lines.append(
            f"| {p.name} | **all** | **{p.compiles}** | **{p.keys}** |" if rows else f"| {p.name} | - | 0 | 0 |"
        )
    first = [p for p in phases if p.part == "first"]
    epochs = [p for p in phases if p.part in ("first", "epoch")]
    compiles, keys = sum(p.compiles for p in epochs), sum(p.keys for p in epochs)
    lines += [
        "",
        f"The epochs: {compiles} compiles and {keys} tuning keys in all; "
        + ", ".join(f"{p.compiles} compiles and {p.keys} keys in {p.name.split(' (')[0]}" for p in first)
        + ".",
    ]
    for p in phases:
        if p.part == "end":
            lines.append(f"Then {p.name}: {_count(p.compiles, 'compile')} and {_count(p.keys, 'tuning key')} more.")
        if p.part == "contrast":
            lines.append(f"Avoided, {p.name}: {_count(p.compiles, 'compile')} and {_count(p.keys, 'tuning key')} more.")
    answer = "yes" if verdict(phases) else "no"
    lines += ["", f"compiles only in the first training step and the first evaluation batch: {answer}"]
    return lines


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _number(value, fmt="{}") -> str:
    return "-" if value is None else fmt.format(value)


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| kernel | precision | variant | config | registers | spill bytes st/ld | shared | compile s "
        "| hot loop | tensor-core | async copies | 128-bit loads | issue bound |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        what = f"| {row.kernel} | {row.precision} | {row.variant} | {row.config} |"
        if row.error:
            lines.append(f"{what} error: {row.error} | | | {row.seconds:.1f} | | | | | |")
            continue
        loop = row.loop
        lines.append(
            f"{what} {row.registers} | {row.spill_stores}/{row.spill_loads} | {row.shared} | {row.seconds:.1f} "
            f"| {_number(loop and loop.length)} | {_number(loop and loop.tensor_core)} "
            f"| {_number(loop and loop.async_copies)} | {_number(loop and loop.wide_loads)} "
            f"| {_number(row.bound, '{:.2f}')} |"
        )
    return lines


def best_rows(rows: list[Row]) -> dict[tuple[str, str, str], Row]:
    """(kernel, variant, precision) -> its config without spills and with the highest issue bound (ties: the
    shortest loop)."""
    best: dict[tuple[str, str, str], Row] = {}
    for row in rows:
        if row.error or row.spills or row.bound is None:
            continue
        key = (row.kernel, row.variant, row.precision)
        held = best.get(key)
        if held is None or (row.bound, -row.loop.length) > (held.bound, -held.loop.length):
            best[key] = row
    return best


def summary(rows: list[Row]) -> list[str]:
    lines = [
        "| kernel | variant | precision | best issue bound (no spills) | its config | hot loop | async copies "
        "| best bound (any) | configs | configs that spill | compile s (all configs) |",
        "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    best = best_rows(rows)
    groups: dict[tuple[str, str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.kernel, row.variant, row.precision), []).append(row)
    for key, group in groups.items():
        chosen = best.get(key)
        spilling = sum(row.spills for row in group)
        seconds = sum(row.seconds for row in group)
        any_bound = max((row.bound for row in group if row.bound is not None), default=None)
        what = f"| {key[0]} | {key[1]} | {key[2]} |"
        tail = f"| {_number(any_bound, '{:.2f}')} | {len(group)} | {spilling} | {seconds:.0f} |"
        if chosen is None:
            lines.append(f"{what} - | - | - | - {tail}")
            continue
        lines.append(
            f"{what} {chosen.bound:.2f} | {chosen.config} | {chosen.loop.length} | {chosen.loop.async_copies} {tail}"
        )
    return lines


# The kernels with tl.dot: none of their configs may spill, nor run more than MAX_CONV_WARPS warps (their
# div/mod-indexed loops miscompiled at 8: triton-lang/triton#1254, pytorch/pytorch#173068; see conv_tuning.py).
CONV_KERNELS = ("conv._conv_fwd_kernel", "conv_grad._conv_wgrad_kernel", "conv_grad._conv_dgrad_gather_kernel")
MAX_CONV_WARPS = 4
# The issue's goals for the convolution (issues 13 and 20), by role: the kernel, the variant's flags, and the lowest
# modeled bound its best non-spilling config must reach per precision, with async copies in its hot loop.
GOALS = [
    ("forward", "conv._conv_fwd_kernel", "HAS_BIAS=True RELU=True PACKED=False"),
    ("input gradient (stride 1)", "conv._conv_fwd_kernel", "HAS_BIAS=False RELU=False PACKED=False"),
    ("weight gradient", "conv_grad._conv_wgrad_kernel", "PACKED=False"),
]
GOAL_BOUND = {"bf16": 0.8, "fp16": 0.8, "tf32": 0.6}


def goals(rows: list[Row]) -> list[str]:
    """One line per role and precision: met or not, with the best non-spilling config's numbers; and whether any
    conv config spills or runs more than MAX_CONV_WARPS warps."""
    lines = []
    for role, kernel, flags in GOALS:
        for precision, wanted in GOAL_BOUND.items():
            if not any(row.kernel == kernel and row.precision == precision for row in rows):
                continue
            best = _best(rows, kernel, precision, set(flags.split()), async_copies=True)
            if best is None:
                lines.append(f"- {role}, {precision}: NOT MET (no config without spills and with async copies)")
                continue
            lines.append(_goal_line(role, precision, best, wanted, ""))
    conv = [row for row in rows if row.kernel in CONV_KERNELS and not row.error]
    if conv:
        spilling = [row for row in conv if row.spills]
        lines.append(f"- no conv config spills: {'met' if not spilling else f'NOT MET ({len(spilling)} spill)'}")
        wide = sorted({row.config for row in conv if row.num_warps > MAX_CONV_WARPS})
        verdict = "met" if not wide else f"NOT MET ({', '.join(wide)})"
        lines.append(f"- no conv config runs more than {MAX_CONV_WARPS} warps: {verdict}")
    return lines


# ---------------------------------------------------------------------------------------------
# conv1 as a training step launches it
# ---------------------------------------------------------------------------------------------


class NamedLaunches(LaunchRecord):
    """A LaunchRecord that also keeps each launch: (kernel name, its arguments by name)."""

    def __init__(self):
        super().__init__()
        self.launched: list[tuple[str, dict]] = []

    def launch(self, kernel, args: tuple, kwargs: dict) -> None:
        super().launch(kernel, args, kwargs)
        named = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs}
        # The configs its autotuner keeps for the launch, labelled as the census labels its rows.
        named["candidates"] = [
            " ".join(f"{key}={value}" for key, value in config.kwargs.items())
            + f" warps={config.num_warps} stages={config.num_stages}"
            for config in _candidates(kernel, args, kwargs)
        ]
        self.launched.append((kernel.base_fn.__name__, named))


def conv1_launches(dtype: str, *, batch: int = 128, sms: int = 132) -> dict[str, dict]:
    """conv1's launches in a training step (both towers on one device: one convolution of their 96 kernels, AlexNet.
    conv1_together; channels_last, meta tensors; the image needs no gradient): kernel name -> its arguments by name
    and the configs its autotuner keeps ("candidates"). fp32 follows PyTorch's TF32 flags, as a run does."""
    import torch
    from alexnet_triton.kernels import conv, conv_grad

    from alexnet_triton.model import layer_shapes

    shape = layer_shapes()[0]
    layer, last = shape.layer, torch.channels_last
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    meta = {"dtype": torch_dtype, "device": "meta"}
    record = NamedLaunches()
    with launches_recorded(record, sms=sms):
        x = torch.empty(batch, shape.in_channels, shape.input_size, shape.input_size, **meta).to(memory_format=last)
        channels = 2 * shape.out_channels
        w = torch.empty(channels, shape.in_channels, shape.kernel, shape.kernel, **meta).to(memory_format=last)
        stride, padding = (layer.stride,) * 2, (layer.padding,) * 2
        out = conv.conv_relu_forward(x, w, torch.empty(channels, **meta), stride, padding, 1)
        masked, _ = conv_grad.relu_grad(torch.empty_like(out), out, True)
        conv_grad.conv_relu_weight_grad(masked, x, list(w.shape), last, stride, padding, 1)
    return dict(record.launched)


# conv1's roles: the kernel, the constexprs that name its variant in the census.
CONV1_ROLES = [
    ("conv1 forward", "conv._conv_fwd_kernel", ("HAS_BIAS", "RELU", "PACKED", "SPLITS", "TF32")),
    ("conv1 weight gradient", "conv_grad._conv_wgrad_kernel", ("PACKED", "INSIDE", "TF32")),
]


def _variant_flags(named: dict, flags: tuple[str, ...]) -> set[str]:
    """The census's variant label words for a launch: SPLITS as 1 (a constant) or >1 (a runtime value)."""
    words = set()
    for flag in flags:
        if flag == "SPLITS":
            words.add("SPLITS=1" if named[flag] == 1 else "SPLITS>1")
        else:
            words.add(f"{flag}={named[flag]}")
    return words


def _compiled_as_launched(spec, named: dict, variant_meta: dict) -> list[str]:
    """Where the census's compile of this variant would differ from the launch: an argument it hints as a multiple of
    16 that the launch's is not, or a stride it fixes at 1 that the launch's is not."""
    hinted = spec.divisible(variant_meta) if callable(spec.divisible) else spec.divisible
    problems = [f"{name}={named[name]} not a multiple of 16" for name in hinted if named[name] % 16]
    fixed = {name: value for meta in spec.meta("bf16") for name, value in meta.items() if name.startswith("stride_")}
    problems += [f"{name}={named[name]}, compiled as {value}" for name, value in fixed.items() if named[name] != value]
    return problems


def conv1_goals(rows: list[Row]) -> list[str]:
    """conv1's forward and weight gradient: the census variant its training-step launches compile to (recorded on meta
    tensors), and that variant's best bound against the goal per precision."""
    from bench.kernel_specs import SPEC_BY_NAME

    lines = []
    for dtype in ("bf16", "fp16", "fp32"):
        launched = conv1_launches(dtype)
        for role, kernel, flags in CONV1_ROLES:
            named = launched[kernel.split(".")[1]]
            precision = "tf32" if dtype == "fp32" and named["TF32"] else dtype
            wanted = GOAL_BOUND.get(precision)
            if wanted is None or not any(row.kernel == kernel for row in rows):
                continue
            words = _variant_flags(named, flags)
            shape = f"{named['C_out_g']} x {named['C_in_g']} channels"
            variant_meta = {flag: named[flag] for flag in ("PACKED", "INSIDE") if flag in named}
            mismatch = _compiled_as_launched(SPEC_BY_NAME[kernel], named, variant_meta)
            best = _best(rows, kernel, precision, words, configs=named["candidates"])
            if best is None or mismatch:
                why = "; ".join(mismatch) or "no compiled variant without spills"
                lines.append(f"- {role}, {precision}: NOT MET ({' '.join(sorted(words))}: {why})")
                continue
            launch = f" as launched at batch 128 ({' '.join(sorted(words))}, {shape})"
            lines.append(_goal_line(role, precision, best, wanted, launch))
    return lines


def _best(
    rows: list[Row], kernel: str, precision: str, words: set[str], *, async_copies: bool = False, configs=None
) -> Row | None:
    """The highest-bound compiled row of a kernel at a precision whose variant label holds `words`, without errors or
    spills (and, if asked, with async copies in its hot loop, or with one of `configs`); None if there is none."""
    usable = [
        row
        for row in rows
        if row.kernel == kernel and row.precision == precision and words <= set(row.variant.split())
        and not row.error and not row.spills and row.bound is not None
        and (row.loop.async_copies > 0 or not async_copies) and (configs is None or row.config in configs)
    ]  # fmt: skip
    return max(usable, key=lambda row: row.bound, default=None)


def _goal_line(role: str, precision: str, best: Row, wanted: float, launch: str) -> str:
    """A goal's line for its best row (launch: how conv1's was launched, or nothing)."""
    verdict = "met" if best.bound >= wanted else "NOT MET"
    return (
        f"- {role}, {precision}: {verdict}: bound {best.bound:.2f} (goal {wanted}){launch} with {best.config}, "
        f"{best.loop.length}-instruction hot loop, {best.loop.async_copies} async copies, no spills"
    )


def software() -> str:
    """The versions that decide the compiled code: Triton, its ptxas, and the Python and PyTorch it ran under."""
    import torch

    try:
        ptxas = f"ptxas {triton.knobs.nvidia.ptxas.version}"
    except Exception:  # no NVIDIA backend: nothing was compiled for sm_90 either
        ptxas = "no ptxas"
    return f"Triton {triton.__version__} ({ptxas}), PyTorch {torch.__version__}, Python {platform.python_version()}"


def report(rows: list[Row], *, title: str, memory: list | None = None, conv1: list[str] = ()) -> str:
    """The census as markdown; memory: the memory-bound kernels' model (bench.memory_model), a section of its own;
    conv1: conv1_goals' lines."""
    from bench import memory_model

    total = sum(row.seconds for row in rows)
    spilling = [row for row in rows if row.spills]
    head = [
        f"# {title}",
        "",
        f"Static: compiled offline for sm_90 (an H100) with {software()} on "
        f"{datetime.date.today().isoformat()}, SASS read with cuobjdump; nothing ran on a GPU. "
        "The issue bound models issue only (hot-loop instructions x warps / 4 schedulers against the tensor-core "
        "cycles of the loop's FLOPs), not memory, latency or occupancy. See `bench/census.py`.",
        "",
        f"{len(rows)} compiled variants, {sum(1 for row in rows if row.error)} errors, {len(spilling)} with spills; "
        f"{total:.0f} s of compilation in all (one core each).",
        "",
        "## The issue's goals",
        "",
        *goals(rows),
        *conv1,
        *([memory_model.goal(memory)] if memory else []),
        "",
        "## Best config per kernel, variant and precision",
        "",
        *summary(rows),
        "",
        "## Every variant",
        "",
        *table(rows),
        "",
        *(memory_model.report_lines(memory) if memory else []),
    ]
    return "\n".join(head)


def memory_report(memory: list, *, title: str) -> str:
    """The memory-bound kernels' model alone (--memory), as markdown."""
    from bench import memory_model

    head = [
        f"# {title}",
        "",
        f"Static: compiled offline for sm_90 (an H100) with {software()} on {datetime.date.today().isoformat()}, SASS "
        "read with cuobjdump; nothing ran on a GPU. See `bench/memory_model.py`.",
        "",
    ]
    return "\n".join(head + memory_model.report_lines(memory))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", default="", help="only the kernels whose name contains this")
    parser.add_argument("--default-configs", action="store_true", help="only each kernel's default configs")
    parser.add_argument("--out", type=Path, help="write the markdown report here (else print it)")
    parser.add_argument("--title", default="Static census of the kernels for sm_90")
    parser.add_argument(
        "--first-step",
        action="store_true",
        help="only count the compiles the conv layers' first bf16 training step needs",
    )
    parser.add_argument(
        "--first-epoch",
        action="store_true",
        help="only count the compiles and tuning keys each part of a run adds (ImageNet and the built-in dataset)",
    )
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="with --first-epoch")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="only the memory-bound kernels' model at AlexNet's shapes (bench/memory_model.py; with --kernel: those "
        "whose name contains it); the full census includes it",
    )
    args = parser.parse_args(argv)
    if args.first_step:
        counts = first_step_compiles()
        print(f"{sum(counts.values())} compiles: " + ", ".join(f"{name} {n}" for name, n in counts.items()))
        return
    if args.first_epoch:
        for run in (IMAGENET, BUILTIN):
            print("\n".join(first_epoch_report(run, first_epoch(run, amp=args.amp), amp=args.amp)), end="\n\n")
        return

    from bench import memory_model
    from bench.kernel_specs import SPECS
    from bench.offline_compile import missing_nvidia_backend

    reason = missing_nvidia_backend()
    if reason is not None:
        sys.exit(f"cannot compile for sm_90 here: {reason}")
    specs = [spec for spec in SPECS if args.kernel in spec.name and (spec.moves is not None or not args.memory)]
    if not specs:
        sys.exit(f"no {'memory-bound ' if args.memory else ''}kernel's name contains {args.kernel!r}")
    with tempfile.TemporaryDirectory() as folder:
        rows = [] if args.memory else take_census(specs, Path(folder) / "census", all_configs=not args.default_configs)
        # The memory model compiles every config its autotuner would try (they are cheap), --default-configs or not.
        memory = memory_model.memory_census(Path(folder) / "memory", kernel=args.kernel)
    memory_model.loudly(memory)
    if args.memory:
        text = memory_report(memory, title=args.title)
    else:
        text = report(rows, title=args.title, memory=memory, conv1=conv1_goals(rows))
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
