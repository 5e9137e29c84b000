"""bench/timing.py: the roofline a measured time is compared with."""

import pytest

from bench.timing import roofline


def test_roofline_is_the_slower_of_arithmetic_and_memory():
    peaks = {"copy_bytes_per_s": 1e12, "float32_flop_per_s": 1e14}
    memory_bound = roofline({"median_s": 2e-3}, flops=1e10, bytes_moved=1e9, peaks=peaks, dtype_name="float32")
    assert memory_bound["roofline_fraction"] == pytest.approx(0.5)  # 1 ms of copying in 2 ms
    assert memory_bound["gb_per_s"] == pytest.approx(500)
    compute_bound = roofline({"median_s": 4e-3}, flops=1e11, bytes_moved=1e9, peaks=peaks, dtype_name="float32")
    assert compute_bound["roofline_fraction"] == pytest.approx(0.25)
    assert compute_bound["tflop_per_s"] == pytest.approx(25)
