"""kernels/arrivals.py on its own: the tuning check's view of the counters a candidate leaves. (The protocol itself,
each tile's counter read 0..SPLITS-1 once per launch and left at 0, is tested through the kernels in test_conv.py.)"""

import pytest
import torch
from alexnet_triton.kernels import arrivals


def test_a_candidate_that_leaves_counters_counted_is_refused_and_the_counters_cleared():
    buffer = torch.zeros(8, dtype=torch.int32)
    read = arrivals.settled(buffer, lambda: ["outputs"])
    assert read() == ["outputs"]  # every counter back at 0: the outputs go on to be judged
    buffer[[2, 5]] = 3
    with pytest.raises(RuntimeError, match="left 2 arrival counters counted"):
        read()
    assert not buffer.any(), "cleared for the next candidate"


def test_counters_are_zeroed_kept_per_device_and_grown():
    first = arrivals.counters(torch.zeros(1), 10)
    assert first.dtype == torch.int32 and not first.any() and first.numel() >= 10
    assert arrivals.counters(torch.zeros(1), 5) is first
    grown = arrivals.counters(torch.zeros(1), 2 * first.numel() + 1)
    assert grown.numel() > 2 * first.numel() and not grown.any()
    assert arrivals.counters(torch.zeros(1), 1) is grown
