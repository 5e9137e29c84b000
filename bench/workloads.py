"""What the benchmarks time: each op at AlexNet's own layer shapes, written three ways (ours, eager PyTorch,
and torch.compile of that eager code), with the work it does counted from the shapes.

Shapes are per tower, as `at.AlexNet` runs them (conv3 reads both towers' maps, every other conv one tower's),
derived from its table of layers, `alexnet_triton.model.LAYERS`.
"""

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import alexnet_triton as at
from alexnet_triton.model import DROPOUT_P, OVERLAPPING_POOL, PAPER_LRN, LayerShape, layer_shapes
from alexnet_triton.twin import GroupedAlexNet
from bench.implementations import IMPLEMENTATIONS

DIRECTIONS = ("forward", "forward+backward")
CLASSES = 1000  # of the whole network


@dataclass(frozen=True)
class OpCase:
    """One op at one shape: how to make its inputs and the functions that compute it."""

    name: str  # "conv2", "lrn1", ...
    op: str  # "conv2d_relu", "local_response_norm", "max_pool2d", "dropout"
    shapes: tuple[tuple[int, ...], ...]  # of the op's tensor arguments; the first is the input
    needs_grad: tuple[bool, ...]  # which arguments get a gradient (conv1's image does not)
    ours: Callable[..., torch.Tensor]
    eager: Callable[..., torch.Tensor]


def conv_case(shape: LayerShape, batch: int) -> OpCase:
    """One of AlexNet's conv layers, per tower, at a batch size."""
    layer, stride, padding = shape.layer, shape.layer.stride, shape.layer.padding
    image = (batch, shape.in_channels, shape.input_size, shape.input_size)
    weight = (shape.out_channels, shape.in_channels, shape.kernel, shape.kernel)
    return OpCase(
        layer.name,
        "conv2d_relu",
        shapes=(image, weight, (shape.out_channels,)),
        # The image needs no gradient: conv1's backward computes weight and bias gradients only.
        needs_grad=(layer.reads != "image", True, True),
        ours=lambda x, w, b: at.conv2d_relu(x, w, b, stride, padding),
        eager=lambda x, w, b: F.relu(F.conv2d(x, w, b, stride, padding)),
    )


def alexnet_cases(batch: int, image_size: int) -> dict[str, OpCase]:
    """Every op of one AlexNet tower, by layer, at the given batch and input size."""
    shapes = layer_shapes(image_size)
    # fc6 and fc7, matrix products, are timed with the network.
    cases = [conv_case(shape, batch) for shape in shapes if not shape.layer.fully_connected]

    def output_of(shape: LayerShape) -> tuple[int, ...]:
        """A layer's output, before its pool: what its LRN and its pool read."""
        return (batch, shape.out_channels, shape.output_size, shape.output_size)

    pool_kernel, pool_stride = OVERLAPPING_POOL
    lrn = ("local_response_norm", lambda x: at.local_response_norm(x, **PAPER_LRN),
           lambda x: F.local_response_norm(x, **PAPER_LRN))  # fmt: skip
    pool = ("max_pool2d", lambda x: at.max_pool2d(x, pool_kernel, pool_stride),
            lambda x: F.max_pool2d(x, pool_kernel, pool_stride))  # fmt: skip
    dropout = ("dropout", lambda x: at.dropout(x, DROPOUT_P, True), lambda x: F.dropout(x, DROPOUT_P, True))
    # fc6's output (a whole-map convolution's, hence 1x1) is what AlexNet drops; fc7's has the same shape.
    first_dropout = next(shape for shape in shapes if shape.layer.dropout)
    one_input = [
        *((f"lrn{shape.layer.number}", lrn, output_of(shape)) for shape in shapes if shape.layer.lrn),
        *((f"pool{shape.layer.number}", pool, output_of(shape)) for shape in shapes if shape.layer.pool),
        (f"dropout{first_dropout.layer.number}", dropout, output_of(first_dropout)),
        # A map the size of conv1's output shows the op's bandwidth.
        ("dropout-large", dropout, output_of(shapes[0])),
    ]
    for name, (op, ours, eager), shape in one_input:
        cases.append(OpCase(name, op, shapes=(shape,), needs_grad=(True,), ours=ours, eager=eager))
    return {case.name: case for case in cases}


def implementation(case: OpCase, impl: str) -> Callable[..., torch.Tensor]:
    """The function to time. torch.compile gets a fresh graph (dynamo caches by code object, and the eager
    lambdas of one op share theirs) and must capture the whole function, so it never falls back to eager."""
    if impl == "ours":
        return case.ours
    if impl == "eager":
        return case.eager
    if impl == "compile":
        torch._dynamo.reset()
        return torch.compile(case.eager, fullgraph=True, dynamic=False)
    raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")


def make_arguments(case: OpCase, device, dtype, channels_last: bool) -> list[torch.Tensor]:
    """Fresh random arguments for one call; gradients where the case needs them."""
    arguments = []
    for shape, needs_grad in zip(case.shapes, case.needs_grad, strict=True):
        tensor = torch.randn(shape, device=device, dtype=dtype)
        if channels_last and len(shape) == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        arguments.append(tensor.requires_grad_(needs_grad))
    return arguments


def output_shape(case: OpCase) -> tuple[int, ...]:
    """Found by running the eager function on meta tensors."""
    arguments = [torch.empty(shape, device="meta") for shape in case.shapes]
    return tuple(case.eager(*arguments).shape)


def flop_count(case: OpCase, direction: str) -> int:
    """Floating-point operations of one call, as PyTorch's FlopCounterMode counts them (matrix products and
    convolutions; elementwise work counts as zero, which is right for a roofline of these ops). The cases'
    convolutions are ungrouped, whose backward it counts right (see flops_per_image)."""
    arguments = [
        torch.empty(shape, device="meta").requires_grad_(needs_grad)
        for shape, needs_grad in zip(case.shapes, case.needs_grad, strict=True)
    ]
    with FlopCounterMode(display=False) as counter:
        out = case.eager(*arguments)
        if direction == "forward+backward":
            inputs = [a for a in arguments if a.requires_grad]
            torch.autograd.grad(out, inputs, torch.empty_like(out))
    return counter.get_total_flops()


def byte_count(case: OpCase, direction: str, element_size: int) -> int:
    """The traffic no implementation can avoid: the forward reads each argument once and writes its
    output once; the backward reads the incoming gradient once and writes each gradient once. What an
    implementation saves between the two differs by implementation and is not counted, so this is a
    lower bound."""
    arguments = sum(math.prod(shape) for shape in case.shapes)
    output = math.prod(output_shape(case))
    elements = arguments + output
    if direction == "forward+backward":
        gradients = sum(math.prod(s) for s, needs in zip(case.shapes, case.needs_grad, strict=True) if needs)
        elements += output + gradients
    return elements * element_size


def network_flops(model: torch.nn.Module, image_size: int) -> tuple[int, int]:
    """FLOPs of one image through a model built on the meta device (nothing is computed): for inference,
    and for a training step.

    The forward is counted by FlopCounterMode. The backward is derived from it: each layer's backward is
    two products the size of its forward (the input and the weight gradient), except the first conv's,
    whose input is the image. (FlopCounterMode counts a grouped convolution's weight gradient `groups`
    times over, so it cannot count the backward.)"""
    images = torch.empty(1, 3, image_size, image_size, device="meta")
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with FlopCounterMode(display=False) as counter:
        first_conv(images)
        image_layer = counter.get_total_flops()
        model(images)
    forward = counter.get_total_flops() - image_layer
    return forward, 3 * forward - image_layer


def flops_per_image(mode: str, image_size: int) -> int:
    """FLOPs of one image through AlexNet (its plain-torch twin, the same arithmetic), by mode."""
    if mode not in ("inference", "training"):
        raise ValueError(f"mode must be 'inference' or 'training', got {mode!r}")
    with torch.device("meta"):
        model = GroupedAlexNet(CLASSES, image_size=image_size)
    inference, training = network_flops(model, image_size)
    return inference if mode == "inference" else training


def mixed_precision(device: torch.device, dtype: torch.dtype):
    """Autocast to a half type, as a user trains in one; fp32 runs as it is."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def image_batches(count: int, batch: int, image_size: int, device, channels_last: bool) -> list[tuple]:
    """`count` batches of random images, in the memory format asked for, and their labels."""

    def one():
        images = torch.randn(batch, 3, image_size, image_size, device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, torch.randint(CLASSES, (batch,), device=device)

    return [one() for _ in range(count)]


def training_step(model, optimizer, autocast, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Forward, cross-entropy, backward and an optimizer step, as a training loop runs them."""
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
