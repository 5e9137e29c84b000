"""Checkpoints that never leave a broken file in place of a good one, and open without running code.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts (see train.py for its keys),
written to a temporary file in the same folder, flushed to disk, then renamed over the old one: a
crash or a full disk leaves the previous checkpoint intact. Reading uses ``weights_only=True``.
"""

import os
import tempfile

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, or made for another configuration."""


def save(state: dict, path: str) -> None:
    """Write state to path atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def load(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by save; CheckpointError if it is missing or unreadable."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"checkpoint {path!r} cannot be read (corrupt or not a checkpoint): {error}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path!r} is not an alexnet_triton training checkpoint")
    return state


def rng_state() -> dict:
    """Every random generator a training step draws from (dropout seeds, shuffling on the CPU)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
