"""The whole network: inference, and a training step (forward, loss, backward, SGD with momentum and weight
decay). Ours is `at.AlexNet`; eager is its plain-torch twin (the same network with groups=2, holding the
same weights); compile is torch.compile of that twin. bf16 runs under autocast, as training in bf16 does."""

import pytest
import torch

import alexnet_triton as at
from alexnet_triton.twin import GroupedAlexNet
from bench.implementations import IMPLEMENTATIONS
from bench.timing import peak_memory, roofline, rotating, rotation, run_benchmark
from bench.workloads import CLASSES, flops_per_image, image_batches, mixed_precision, training_step

MODES = ("inference", "training")


def build(impl: str, settings, channels_last: bool) -> torch.nn.Module:
    ours = at.AlexNet(CLASSES, image_size=settings.image_size, init="kaiming").to(settings.device)
    model = ours if impl == "ours" else GroupedAlexNet.from_towers(ours)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if impl == "compile":
        torch._dynamo.reset()
        model = torch.compile(model, fullgraph=True, dynamic=False)
    return model


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("mode", MODES)
def test_alexnet(benchmark, settings, peaks, skip_unrunnable, mode, impl, dtype_name, dtype, memory_format):
    channels_last = memory_format == "channels_last"
    model = build(impl, settings, channels_last).train(mode == "training")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    autocast = mixed_precision(settings.device, dtype)

    def step(images, labels):
        if mode == "training":
            return training_step(model, optimizer, autocast, images, labels)
        with torch.no_grad(), autocast:
            return model(images)

    image_bytes = settings.batch * 3 * settings.image_size**2 * 4
    count = rotation(settings.device, image_bytes)
    batches = image_batches(count, settings.batch, settings.image_size, settings.device, channels_last)
    flops = flops_per_image(mode, settings.image_size) * settings.batch
    benchmark.group = f"alexnet {mode} {dtype_name} {memory_format}"
    benchmark.extra_info.update(
        kind="network",
        layer="alexnet",
        op="alexnet",
        direction=mode,
        dtype=dtype_name,
        memory_format=memory_format,
        implementation=impl,
        batch=settings.batch,
        image_size=settings.image_size,
        flops=flops,
        bytes=0,  # bounded by arithmetic; the roofline is the matrix-product rate
        rotation=len(batches),
    )
    medians = run_benchmark(benchmark, settings, rotating(step, batches))
    if medians is None:
        return  # --benchmark-disable: the step ran once as a smoke test; nothing was timed

    images_per_s = settings.batch / medians["median_s"]
    # The physical limit: every image's FLOPs at the device's measured bf16 matrix-product rate.
    bound = peaks["bfloat16_flop_per_s"] / (flops / settings.batch)
    benchmark.extra_info.update(
        roofline(medians, flops, 0, peaks, dtype_name),
        images_per_s=images_per_s,
        images_per_s_bound=bound,
        fraction_of_bound=images_per_s / bound,
        peak_memory_bytes=peak_memory(settings.device, lambda: step(*batches[0]), compiled=impl == "compile"),
        saved_bytes=None,
    )
