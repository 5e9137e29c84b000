"""LRN then the overlapping max-pool at AlexNet's layers 1 and 2 (per tower), forward and forward+backward, four
ways: the fused op (ours), our two separate ops (separate), and eager PyTorch and torch.compile of the composite.

Each result's extra_info holds the traffic of the fused op and of the separate ops, counted from the shapes
(`traffic`), and their ratio; `bytes` (what the roofline and GB/s use) is the fused op's, the least any
implementation moves, so `roofline_fraction` is the fraction of the measured copy bandwidth.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import alexnet_triton as at
from alexnet_triton.model import OVERLAPPING_POOL, PAPER_LRN, layer_shapes
from bench.timing import peak_memory, roofline, rotating, rotation, run_benchmark, saved_for_backward
from bench.workloads import DIRECTIONS

# Ours fused, ours separate, and the composite as PyTorch runs it and as torch.compile fuses it.
LRN_POOL_IMPLEMENTATIONS = ("ours", "separate", "eager", "compile")
KERNEL, STRIDE = OVERLAPPING_POOL
POSITION_BYTES = 1  # the pool's saved window positions, in both ours


def fused(x: torch.Tensor) -> torch.Tensor:
    return at.lrn_max_pool2d(x, PAPER_LRN["size"], KERNEL, STRIDE, alpha=PAPER_LRN["alpha"], beta=PAPER_LRN["beta"],
                             k=PAPER_LRN["k"])  # fmt: skip


def separate(x: torch.Tensor) -> torch.Tensor:
    return at.max_pool2d(at.local_response_norm(x, **PAPER_LRN), KERNEL, STRIDE)


def composite(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(F.local_response_norm(x, **PAPER_LRN), KERNEL, STRIDE)


def lrn_pool_shapes(batch: int, image_size: int) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Layer name -> (input, output) shape of the layers whose LRN the overlapping pool follows, per tower."""
    return {
        f"lrn_pool{shape.layer.number}": (
            (batch, shape.out_channels, shape.output_size, shape.output_size),
            (batch, shape.out_channels, shape.pooled_size, shape.pooled_size),
        )
        for shape in layer_shapes(image_size)
        if shape.layer.lrn and shape.layer.pool
    }


def traffic(input_shape, output_shape, element_size: int) -> dict[str, int | float]:
    """Bytes each way moves, counted from the shapes, each tensor read or written once per kernel.

    Fused forward: read the input, write the output and the positions. Separate forward: LRN reads the input
    and writes its map; the pool reads the map and writes the output and the positions. Fused backward: read
    the output's gradient, the positions and the input, write the input's gradient. Separate backward: the
    pool's backward reads the output's gradient and the positions and writes the map's gradient; LRN's backward
    reads that and the input and writes the input's gradient."""
    full = math.prod(input_shape) * element_size
    pooled = math.prod(output_shape) * element_size
    positions = math.prod(output_shape) * POSITION_BYTES
    counts = {
        "fused_forward": full + pooled + positions,
        "separate_forward": 2 * full + full + pooled + positions,
        "fused_backward": pooled + positions + 2 * full,
        "separate_backward": pooled + positions + full + 3 * full,
    }
    counts["forward_ratio"] = counts["fused_forward"] / counts["separate_forward"]
    counts["backward_ratio"] = counts["fused_backward"] / counts["separate_backward"]
    return counts


def implementation(impl: str):
    if impl == "ours":
        return fused
    if impl == "separate":
        return separate
    if impl == "eager":
        return composite
    if impl == "compile":
        torch._dynamo.reset()
        return torch.compile(composite, fullgraph=True, dynamic=False)
    raise ValueError(f"implementation must be one of {LRN_POOL_IMPLEMENTATIONS}, got {impl!r}")


CASE_NAMES = tuple(lrn_pool_shapes(batch=1, image_size=227))


@pytest.mark.parametrize("impl", LRN_POOL_IMPLEMENTATIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_lrn_max_pool(benchmark, settings, peaks, skip_unrunnable, case_name, direction, impl, dtype_name, dtype,
                      memory_format):  # fmt: skip
    input_shape, output_shape = lrn_pool_shapes(settings.batch, settings.image_size)[case_name]
    backward = direction == "forward+backward"
    counts = traffic(input_shape, output_shape, torch.empty((), dtype=dtype).element_size())
    bytes_moved = counts["fused_forward"] + (counts["fused_backward"] if backward else 0)
    function = implementation(impl)

    def one_set():
        x = torch.randn(input_shape, device=settings.device, dtype=dtype)
        if memory_format == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            grad_out = torch.randn_like(composite(x))  # in the output's memory format
        return x.requires_grad_(), grad_out

    def call(x, grad_out):
        if not backward:
            with torch.no_grad():
                return function(x)
        return torch.autograd.grad(function(x), [x], grad_out)

    sets = [one_set() for _ in range(rotation(settings.device, bytes_moved))]
    benchmark.group = f"{case_name} {direction} {dtype_name} {memory_format}"
    benchmark.extra_info.update(
        kind="lrn_pool",
        op="lrn_max_pool2d",
        layer=case_name,
        shapes=[list(input_shape), list(output_shape)],
        direction=direction,
        dtype=dtype_name,
        memory_format=memory_format,
        implementation=impl,
        flops=0,
        bytes=bytes_moved,
        traffic=counts,
        rotation=len(sets),
    )
    medians = run_benchmark(benchmark, settings, rotating(call, sets))
    if medians is None:
        return  # --benchmark-disable: the call ran once as a smoke test; nothing was timed

    x, _ = sets[0]
    benchmark.extra_info.update(
        roofline(medians, 0, bytes_moved, peaks, dtype_name),
        peak_memory_bytes=peak_memory(settings.device, lambda: call(*sets[0]), compiled=impl == "compile"),
        saved_bytes=saved_for_backward(lambda: function(x), [x]) if backward else None,
    )
