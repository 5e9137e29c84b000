"""torchvision's AlexNet and VGG-16 as they are, and after `at.swap_fused_ops`: a training step each (forward,
loss, backward, SGD), batch 64 at 224x224 on a GPU, bf16 under autocast as well as fp32."""

import functools

import pytest
import torch
import torchvision

import alexnet_triton as at
from bench.implementations import IMPLEMENTATIONS
from bench.timing import peak_memory, roofline, rotating, rotation, run_benchmark
from bench.workloads import image_batches, mixed_precision, network_flops, training_step

# model: (builder, image size on a GPU, the least image size its feature maps survive, used on a CPU)
MODELS = {"alexnet": (torchvision.models.alexnet, 224, 63), "vgg16": (torchvision.models.vgg16, 224, 32)}
GPU_BATCH = 64
# Swapped (ours) and the model as it is (eager); a compiled model is not compared here.
SWAP_IMPLEMENTATIONS = tuple(impl for impl in IMPLEMENTATIONS if impl != "compile")


@pytest.mark.parametrize("impl", SWAP_IMPLEMENTATIONS)
@pytest.mark.parametrize("model_name", MODELS)
def test_swapped_training_step(benchmark, settings, peaks, skip_unrunnable, model_name, impl, dtype_name, dtype,
                               memory_format):  # fmt: skip
    build, gpu_size, cpu_size = MODELS[model_name]
    image_size = gpu_size if settings.on_gpu else cpu_size
    batch = GPU_BATCH if settings.on_gpu else settings.batch
    channels_last = memory_format == "channels_last"
    model = build(weights=None).to(settings.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if impl == "ours":
        model = at.swap_fused_ops(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    step = functools.partial(training_step, model, optimizer, mixed_precision(settings.device, dtype))
    count = rotation(settings.device, batch * 3 * image_size**2 * 4)
    batches = image_batches(count, batch, image_size, settings.device, channels_last)
    with torch.device("meta"):
        _, flops_per_image = network_flops(build(weights=None), image_size)
    flops = flops_per_image * batch
    benchmark.group = f"{model_name} swapped training {dtype_name} {memory_format}"
    benchmark.extra_info.update(
        kind="swap",
        op="swap_fused_ops",
        layer=model_name,
        direction="training",
        dtype=dtype_name,
        memory_format=memory_format,
        implementation=impl,
        batch=batch,
        image_size=image_size,
        swapped=len(model.fused_ops_report.swapped) if impl == "ours" else 0,
        flops=flops,
        bytes=0,
        rotation=len(batches),
    )
    medians = run_benchmark(benchmark, settings, rotating(step, batches))
    if medians is None:
        return  # --benchmark-disable: the step ran once as a smoke test; nothing was timed

    benchmark.extra_info.update(
        roofline(medians, flops, 0, peaks, dtype_name),
        images_per_s=batch / medians["median_s"],
        peak_memory_bytes=peak_memory(settings.device, lambda: step(*batches[0])),
        saved_bytes=None,
    )
