"""Arrival counters: how the programs that share a split reduction learn which of them arrives last, so that one of
them finishes the reduction inside the kernel instead of a torch sum after it (conv.py, conv_grad.py).

Each program of a split reduction writes its partial tile to an fp32 buffer, then adds 1 to its output tile's counter
(one atomic); the program that reads SPLITS - 1 back knows every other split has written, sums the partials in split
order (deterministic, as CUTLASS's "serial split-K"), applies the epilogue, stores the result and sets the counter
back to 0. So every counter is 0 between launches, and the next launch (or a CUDA graph's replay) starts from zero.

Why a persistent buffer: zeroing fresh counters per call is itself a launch (a memset), one of those this saves.
Why one per (device, current stream): launches on one stream run one after another, so they can share counters; two
streams may run launches at the same time, which must not. A buffer is made (torch.zeros, on the current stream,
ordered before the kernel that reads it) on a miss, i.e. in warm-up, and grows when a launch needs more counters;
the one it replaces is kept alive, since a CUDA graph captured with it keeps its address. A graph's launches use the
counters of the stream it was captured on, wherever it replays: work on that stream must never run at the same time
as a replay. Here it cannot: step_graph's side stream and the model's tower streams are fenced with the current
stream both ways, and replays run on the current stream.

While something traces the call (torch.compile, make_fx: _common.traced), a global buffer mutated inside a traced op
would not be functional: each call gets fresh zeroed counters instead.
"""

import threading

import torch

from . import _common

# The fewest counters a buffer holds (4 KiB of int32): the conv layers need a few hundred to a few thousand.
SMALLEST = 1024

_buffers: dict[tuple, torch.Tensor] = {}
_replaced: list[torch.Tensor] = []  # buffers a larger one replaced: a captured CUDA graph may still use them
_lock = threading.Lock()  # autograd runs each device's backward on its own thread


def counters(like: torch.Tensor, count: int) -> torch.Tensor:
    """At least `count` zeroed int32 counters on like's device for a launch on its current stream (fresh ones while
    like is traced). The kernel that uses them must leave them 0."""
    device = like.device
    if _common.traced((like,)):
        return torch.zeros(count, dtype=torch.int32, device=device)
    key = (device, torch._C._cuda_getCurrentRawStream(device.index)) if device.type == "cuda" else (device, None)
    buffer = _buffers.get(key)
    if buffer is None or buffer.numel() < count:
        if _common.capturing(device):
            # Made during a CUDA graph's capture, zeros are only a recorded memset in the graph's memory: kept
            # here, a failed capture would leave a buffer never zeroed. The graph owns these (its replays zero them).
            return torch.zeros(count, dtype=torch.int32, device=device)
        with _lock:
            buffer = _buffers.get(key)
            if buffer is None or buffer.numel() < count:
                if buffer is not None:
                    _replaced.append(buffer)
                size = max(count, SMALLEST, 2 * buffer.numel() if buffer is not None else 0)
                buffer = _buffers[key] = torch.zeros(size, dtype=torch.int32, device=device)
    return buffer


def settled(buffer: torch.Tensor, outputs):
    """outputs (the results function of a tuning check, expected.py), after checking that the candidate left every
    counter at 0 and zeroing them: a candidate that computes the right sums but leaves counters counted (a miscompiled
    reset) would keep every later launch's last program from ever arriving, and is refused (RuntimeError, which the
    check reports as this config's failure); a refused one may have left counts, which are cleared for the next."""

    def read():
        got = outputs()
        left = int(torch.count_nonzero(buffer))
        buffer.zero_()
        if left:
            raise RuntimeError(f"the kernel left {left} arrival counters counted (each must be reset to 0)")
        return got

    return read
