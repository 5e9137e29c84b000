"""The trainer's process and device (alexnet_triton/runtime.py), in a single process on this machine; the
multi-process paths run under torchrun in tests/test_train.py."""

import os
import signal
import subprocess
import sys

import pytest
import torch

from alexnet_triton.model import AlexNet
from alexnet_triton.runtime import Runtime, StopRequest, all_reduce_sum, autocast, start_runtime, to_device

# Page faults while a 64 MB tensor is made and freed 20 times, after six such rounds to warm up (glibc settles on
# where the block lives within the first few, now and then a round or two later); printed by a fresh process, so
# that the malloc settings under test stay out of pytest's.
PAGE_FAULTS = """
import resource, sys, torch
from alexnet_triton.runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    torch.ones(2**24)
before = faults()
for _ in range(20):
    torch.ones(2**24)
print(faults() - before)
"""


def test_a_single_process_sums_to_its_own_values():
    runtime = Runtime(0, 1, torch.device("cpu"))
    assert runtime.is_main and not Runtime(1, 2, torch.device("cpu")).is_main
    assert all_reduce_sum([1.5, 2.0, 3.0], runtime) == [1.5, 2.0, 3.0]


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with one CUDA GPU as far as the trainer's device code can tell; torch.cuda.set_device applies
    torch's own index check (which an index-less torch.device("cuda") fails) and records what it was given."""
    chosen = []

    def set_device(device):
        torch.cuda._utils._get_device_index(device)  # raises for a device without an index
        chosen.append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return chosen


@pytest.mark.parametrize("asked", [None, "cuda", "cuda:0"])
def test_the_trainer_starts_on_one_gpu_with_an_indexed_device(one_gpu, asked):
    runtime = start_runtime(asked)
    assert runtime.device == torch.device("cuda", 0) and runtime.device.index == 0
    assert one_gpu == [torch.device("cuda", 0)]


def test_an_index_less_cuda_device_is_what_torch_refuses():
    # What start_runtime handed torch.cuda.set_device before: the check above fails it.
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        torch.cuda._utils._get_device_index(torch.device("cuda"))


def test_towers_placed_on_cuda_get_indexed_devices(one_gpu, monkeypatch):
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, device: moved.append(device) or self)
    AlexNet(num_classes=10, image_size=67).place(["cuda", "cuda:0"])
    assert moved == [torch.device("cuda", 0)] * 2


def test_to_device_keeps_the_batch_and_applies_channels_last():
    images, labels = torch.randn(2, 3, 5, 5), torch.tensor([1, 0])
    moved, moved_labels = to_device(images, labels, torch.device("cpu"), channels_last=True)
    assert moved.is_contiguous(memory_format=torch.channels_last) and torch.equal(moved, images)
    assert torch.equal(moved_labels, labels)
    crops, _ = to_device(torch.randn(2, 10, 3, 5, 5), labels, torch.device("cpu"), channels_last=True)
    assert crops.is_contiguous(), "ten-crop batches (5-D) stay as they are"


def test_autocast_bf16_runs_on_a_cpu_and_fp16_is_refused_there():
    with autocast("bf16", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("none", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        autocast("fp16", torch.device("cpu"))


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    def faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True, text=True, check=True)
        return int(result.stdout)

    # Without the setting each 64 MB block is unmapped on free and faulted in again: 16k faults per block with
    # 4 kB pages, 32 with 2 MB huge pages. Kept, the heap's pages are reused: at most a block or two's worth.
    default = faults("default")
    assert default >= 20 * 32
    assert faults("keep") * 5 < default
