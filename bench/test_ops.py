"""Each op at each AlexNet layer shape, forward and forward+backward: ours, eager PyTorch, torch.compile."""

import pytest
import torch

from bench.implementations import IMPLEMENTATIONS
from bench.timing import peak_memory, roofline, rotating, rotation, run_benchmark, saved_for_backward
from bench.workloads import (
    DIRECTIONS,
    alexnet_cases,
    byte_count,
    flop_count,
    implementation,
    make_arguments,
)

CASE_NAMES = tuple(alexnet_cases(batch=1, image_size=227))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("case_name", CASE_NAMES)
def test_op(benchmark, settings, peaks, skip_unrunnable, case_name, direction, impl, dtype_name, dtype, memory_format):
    case = alexnet_cases(settings.batch, settings.image_size)[case_name]
    backward = direction == "forward+backward"
    bytes_moved = byte_count(case, direction, torch.empty((), dtype=dtype).element_size())
    function = implementation(case, impl)

    def one_set():
        arguments = make_arguments(case, settings.device, dtype, memory_format == "channels_last")
        with torch.no_grad():
            grad_out = torch.randn_like(case.eager(*arguments))  # in the output's memory format
        return arguments, grad_out

    def call(arguments, grad_out):
        if not backward:
            with torch.no_grad():
                return function(*arguments)
        out = function(*arguments)
        return torch.autograd.grad(out, [a for a in arguments if a.requires_grad], grad_out)

    sets = [one_set() for _ in range(rotation(settings.device, bytes_moved))]
    benchmark.group = f"{case_name} {direction} {dtype_name} {memory_format}"
    benchmark.extra_info.update(
        kind="op",
        op=case.op,
        layer=case_name,
        shapes=[list(shape) for shape in case.shapes],
        direction=direction,
        dtype=dtype_name,
        memory_format=memory_format,
        implementation=impl,
        flops=flop_count(case, direction),
        bytes=bytes_moved,
        rotation=len(sets),
    )
    medians = run_benchmark(benchmark, settings, rotating(call, sets))
    if medians is None:
        return  # --benchmark-disable: the call ran once as a smoke test; nothing was timed

    arguments, _ = sets[0]
    benchmark.extra_info.update(
        roofline(medians, benchmark.extra_info["flops"], bytes_moved, peaks, dtype_name),
        peak_memory_bytes=peak_memory(settings.device, lambda: call(*sets[0]), compiled=impl == "compile"),
        saved_bytes=saved_for_backward(lambda: function(*arguments), arguments) if backward else None,
    )
