"""The trainer's process and device (alexnet_triton/runtime.py), in a single process on this machine (the agreement
between processes with torch.distributed's collectives stood in for); the multi-process paths run under torchrun in
tests/test_train.py and tests/test_distributed_stop.py."""

import math
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from alexnet_triton import runtime as runtime_module
from alexnet_triton.model import AlexNet
from alexnet_triton.runtime import (
    Runtime,
    StopRequest,
    Verdict,
    agree,
    all_reduce_sum,
    autocast,
    gather_objects,
    injected_nan_step,
    seed_process_generators,
    start_runtime,
    to_device,
)

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


# ---- stop and abort, agreed by every process -----------------------------------------------------------------


@pytest.fixture
def no_collectives(monkeypatch):
    """A single process must not call torch.distributed at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("a collective in a single process")

    for name in ("all_reduce", "all_gather_object"):
        monkeypatch.setattr(dist, name, refuse)


class OtherRanks:
    """dist.all_reduce(MIN) as this process sees it when the other processes contribute `others` ([stop, key]
    tensors, as agree builds them); records each call's tensor."""

    def __init__(self, monkeypatch, *others: list[int]):
        self.others, self.calls = others, []

        def all_reduce(tensor, op=None):
            assert op == dist.ReduceOp.MIN and tensor.dtype == torch.int64 and tensor.shape == (2,)
            self.calls.append(tensor.clone())
            for other in self.others:
                torch.minimum(tensor, torch.tensor(other), out=tensor)

        monkeypatch.setattr(dist, "all_reduce", all_reduce)


def key(step: int, rank: int, world_size: int, kind: int = 0) -> int:
    return (step * world_size + rank) * 3 + kind


def test_one_process_agrees_with_itself_without_a_collective(no_collectives):
    one = Runtime(0, 1, torch.device("cpu"))
    assert agree(one, False, None) == Verdict(False, None)
    assert agree(one, True, (6, math.inf)) == Verdict(True, (6, 0, math.inf))
    assert gather_objects({"a": 1}, one) == [{"a": 1}]
    stop = StopRequest(one)
    stop.requested = True
    assert stop.now, "one process stops after the step the signal came in"


def test_the_verdict_names_the_earliest_non_finite_step_and_its_rank(monkeypatch):
    """Rank 1 of 4 saw inf at step 9; rank 3 a NaN at step 7, rank 2 -inf at step 7: step 7 on rank 2 (the lower rank
    at the earliest step), its value -inf. Any process's stop stops all."""
    world = Runtime(1, 4, torch.device("cpu"))
    others = OtherRanks(monkeypatch, [0, key(7, 3, 4, 0)], [-1, key(7, 2, 4, 2)], [0, runtime_module.NO_KEY])
    assert agree(world, False, (9, math.inf)) == Verdict(True, (7, 2, -math.inf))
    assert others.calls[0].tolist() == [0, key(9, 1, 4, 1)], "this process's request and key, as sent"
    others.others = ([0, runtime_module.NO_KEY],) * 3
    verdict = agree(world, False, (3, math.nan))
    assert not verdict.stop and verdict.nonfinite[:2] == (3, 1) and math.isnan(verdict.nonfinite[2])
    assert agree(world, False, None) == Verdict(False, None)
    assert agree(world, True, None) == Verdict(True, None)


def test_a_stop_in_several_processes_waits_for_their_agreement(monkeypatch):
    """A signal to one process of two: `now` stays False (the loop goes on) until an agreement point, where the
    other process learns of it too; once agreed it stays so. A process that received nothing stops there as well."""
    signalled = StopRequest(Runtime(1, 2, torch.device("cpu")), every=20)
    signalled.requested = True
    assert not signalled.now, "no process leaves between agreement points"
    others = OtherRanks(monkeypatch, [0, runtime_module.NO_KEY])
    assert signalled.agree().stop and signalled.now
    others.others = ([0, runtime_module.NO_KEY],)
    signalled.requested = False
    signalled.agree()
    assert signalled.now, "an agreed stop stays agreed"

    quiet = StopRequest(Runtime(0, 2, torch.device("cpu")), every=20)
    others.others = ([-1, runtime_module.NO_KEY],)
    assert not quiet.now and quiet.agree().stop and quiet.now and not quiet.requested


def test_the_signal_in_several_processes_says_when_they_stop(capsys):
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop = StopRequest(Runtime(1, 2, torch.device("cpu")), every=20)
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and not stop.now
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert capsys.readouterr().out.strip() == (
        "SIGTERM on rank 1: every process stops at the next logging point (within 20 steps) or evaluation's end, and "
        "saves (Ctrl-C again to stop at once)"
    )


def test_torchruns_copy_of_a_terminal_ctrl_c_is_the_same_request(monkeypatch, capsys):
    """A terminal's Ctrl-C reaches a worker, and torchrun forwards it a moment later: one request. A second Ctrl-C
    later stops at once, as in one process."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    clock = [100.0]
    monkeypatch.setattr(runtime_module.time, "monotonic", lambda: clock[0])
    try:
        stop = StopRequest(Runtime(0, 2, torch.device("cpu")), every=20)
        stop.install()
        os.kill(os.getpid(), signal.SIGINT)
        clock[0] += 0.05
        os.kill(os.getpid(), signal.SIGINT)  # torchrun's copy
        assert stop.requested and capsys.readouterr().out.count("SIGINT on rank 0") == 1
        clock[0] += runtime_module.FORWARDED_SIGINT_S
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_each_process_draws_its_own_dropout_stream():
    """After the same initial weights: rank 0 goes on as a single process would, every other rank from its own seed,
    the same one each run."""
    draws = {}
    for rank in (0, 1, 2, 1):
        torch.manual_seed(5)
        seed_process_generators(5, Runtime(rank, 3, torch.device("cpu")))
        draws.setdefault(rank, []).append(torch.rand(8))
    torch.manual_seed(5)
    assert torch.equal(draws[0][0], torch.rand(8)), "rank 0 keeps the single process's stream"
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[1][0], draws[2][0])
    assert torch.equal(draws[1][0], draws[1][1]), "repeatable"


def test_the_test_only_nan_injection_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv(runtime_module.TEST_NAN_LOSS, raising=False)
    assert injected_nan_step(0) is None and injected_nan_step(1) is None
    monkeypatch.setenv(runtime_module.TEST_NAN_LOSS, "1:3")
    assert injected_nan_step(0) is None and injected_nan_step(1) == 3


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
