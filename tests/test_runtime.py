"""The trainer's process and device (alexnet_triton/runtime.py), in a single process on this machine; the
multi-process paths run under torchrun in tests/test_train.py."""

import os
import signal

import pytest
import torch

from alexnet_triton.runtime import Runtime, StopRequest, all_reduce_sum, autocast, to_device


def test_a_single_process_sums_to_its_own_values():
    runtime = Runtime(0, 1, torch.device("cpu"))
    assert runtime.is_main and not Runtime(1, 2, torch.device("cpu")).is_main
    assert all_reduce_sum([1.5, 2.0, 3.0], runtime) == [1.5, 2.0, 3.0]


def test_to_device_keeps_the_batch_and_applies_channels_last():
    images, labels = torch.randn(2, 3, 5, 5), torch.tensor([1, 0])
    moved, moved_labels = to_device(images, labels, torch.device("cpu"), channels_last=True)
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, images)
    assert torch.equal(moved_labels, labels)
    crops, _ = to_device(torch.randn(2, 10, 3, 5, 5), labels, torch.device("cpu"), channels_last=True)
    assert crops.is_contiguous(), "ten-crop batches (5-D) stay as they are"


def test_autocast_is_off_on_a_cpu_and_for_none():
    with autocast("bf16", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with autocast("none", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_requests_a_stop_and_a_second_ctrl_c_stops_at_once(signum):
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = StopRequest()
        stop.install()
        assert not stop.requested
        os.kill(os.getpid(), signum)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
