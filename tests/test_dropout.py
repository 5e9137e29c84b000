"""at.dropout and at.nn.Dropout: F.dropout semantics, a mask regenerated from a seed, no mask stored."""

import itertools

import pytest
import torch
import triton
from alexnet_triton.kernels import dropout as dropout_kernels
from helpers import saved_tensors

import alexnet_triton as at


def scale(p: float, dtype=torch.float32) -> torch.Tensor:
    """1 / (1 - p) rounded to fp32, the factor kept values are multiplied by (as in PyTorch)."""
    return torch.tensor(1.0 / (1.0 - p), dtype=torch.float32).to(dtype)


@pytest.mark.parametrize("p", [0.5, 0.1, 0.9])
def test_dropped_fraction_and_kept_values(p, device):
    n = 1 << 20
    x = torch.randn(n, device=device)
    out = at.dropout(x, p)
    dropped = (out == 0).double().mean().item()
    standard_error = (p * (1 - p) / n) ** 0.5
    assert abs(dropped - p) < 5 * standard_error, f"dropped {dropped:.5f}, expected {p} +- {standard_error:.1e}"
    kept = out != 0
    assert torch.equal(out[kept], x[kept] * scale(p)), "kept values must be exactly x / (1 - p) in fp32"


def test_neighbouring_elements_draw_independent_numbers(device):
    # Four neighbours share a Philox call, each taking its own of the call's four numbers. Were they to share one
    # number, they would be kept or dropped together; independent draws at p = 0.5 agree half the time.
    n = 1 << 20
    kept = at.dropout(torch.randn(n, device=device), 0.5, seed=2012) != 0
    agree = (kept[1:] == kept[:-1]).double().mean().item()
    standard_error = (0.25 / (n - 1)) ** 0.5  # neighbouring pairs' agreements are pairwise independent at p = 0.5
    assert abs(agree - 0.5) < 5 * standard_error, f"neighbours agree {agree:.5f}, expected 0.5 +- {standard_error:.1e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_uses_the_forward_mask(dtype, device):
    x = torch.randn(3, 1000, device=device, dtype=dtype, requires_grad=True)
    out = at.dropout(x, 0.4, seed=7)
    grad = torch.randn_like(out)
    out.backward(grad)
    kept = out != 0
    assert torch.equal(x.grad != 0, kept)
    if dtype == torch.float32:
        assert torch.equal(x.grad[kept], grad[kept] * scale(0.4))
    else:  # 1 / (1 - p) reaches a compiled kernel as an fp32 argument: fp64 is exact to fp32 rounding
        torch.testing.assert_close(x.grad[kept], grad[kept] / 0.6, rtol=1e-7, atol=0)


def test_gradient_from_sum_backward_and_channels_last(device):
    x = torch.randn(4, 8, 5, 5, device=device).to(memory_format=torch.channels_last).requires_grad_()
    out = at.dropout(x, 0.5, seed=3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.sum().backward()  # an expanded, all-zero-stride gradient
    assert torch.equal(x.grad, (out != 0).float() * 2.0)


def test_non_contiguous_input(device):
    x = torch.randn(64, 48, device=device).t()
    out = at.dropout(x, 0.25, seed=11)
    kept = out != 0
    assert torch.equal(out[kept], x[kept] * scale(0.25))
    assert 0.15 < 1 - kept.float().mean().item() < 0.35


def test_same_seed_same_mask_other_seed_other_mask(device):
    x = torch.randn(10_000, device=device)
    first, again = at.dropout(x, 0.5, seed=1234), at.dropout(x, 0.5, seed=1234)
    other = at.dropout(x, 0.5, seed=1235)
    assert torch.equal(first, again)
    assert not torch.equal(first != 0, other != 0)


def launch_with_block(x: torch.Tensor, seed: int, p: float, block: int) -> torch.Tensor:
    """The dropout kernel launched directly with BLOCK elements per program, whatever the launcher (the interpreter's
    heuristic, a GPU's tuning) would choose, into a NaN-filled output."""
    out = torch.full_like(x, float("nan"))
    seed_tensor = torch.full((), seed, dtype=torch.int64, device=x.device)
    grid = (triton.cdiv(x.numel(), block),)
    dropout_kernels._dropout_kernel.fn[grid](x, out, seed_tensor, x.numel(), p, 1.0 / (1.0 - p), BLOCK=block)
    return out


# Block sizes a launch may run with: the interpreter's smallest, a few between, and a GPU config's.
BLOCKS = [16, 32, 128, 1024]


def test_the_mask_is_a_function_of_seed_and_position_whatever_the_block(device):
    # Philox is keyed by the seed and each element's index, never by the program or its lane, so every tiling gives
    # the launcher's mask bit for bit: a GPU's tuner may pick any block, and backward may tune apart from forward.
    x = torch.randn(2 * 1024 + 5, device=device)  # a partial last program at every block
    expected = at.dropout(x, 0.5, seed=77)
    for block in BLOCKS:
        out = launch_with_block(x, 77, 0.5, block)
        assert not out.isnan().any(), f"BLOCK={block}: {out.isnan().sum().item()} elements never written"
        assert torch.equal(out, expected), f"BLOCK={block}: differs from the launcher's at {(out != expected).sum()}"


@pytest.mark.parametrize("block", BLOCKS)
def test_blocks_draw_different_masks(block, device):
    # A mask drawn from the lane index instead of the element index repeats in every block; each program's fraction
    # dropped is still right, so only comparing blocks shows it. The seed is fixed, so this cannot flake.
    blocks = 4
    x = torch.randn(blocks * block + 5, device=device)
    kept = (launch_with_block(x, 1234, 0.5, block) != 0)[: blocks * block].view(blocks, block)
    for i, j in itertools.combinations(range(blocks), 2):
        assert not torch.equal(kept[i], kept[j]), f"BLOCK={block}: blocks {i} and {j} draw the same mask"


def test_the_launchers_mask_repeats_at_no_block_size(device):
    # Whatever block the launcher runs with (the interpreter's heuristic up to 65,536, a GPU's 1,024 to 4,096), its
    # mask has no power-of-two period: the first `period` elements never repeat as the next `period`.
    n = 2**17 + 5
    kept = at.dropout(torch.randn(n, device=device), 0.5, seed=2012) != 0
    for log2 in range(4, 17):
        period = 2**log2
        assert not torch.equal(kept[:period], kept[period : 2 * period]), f"the mask repeats every {period} elements"


def test_other_seeds_draw_other_masks_in_every_block(device):
    # Seeds apart in the low word, in the high word (Philox takes both 32-bit halves), and at the top of the range:
    # every 64-element stretch of their masks differs (a coincidence there has probability 2^-64).
    x = torch.randn(64 * 64, device=device)
    seeds = [0, 1, 2**32, 2**63 - 1]
    masks = {seed: (at.dropout(x, 0.5, seed=seed) != 0).view(64, 64) for seed in seeds}
    for a, b in itertools.combinations(seeds, 2):
        same = (masks[a] == masks[b]).all(dim=1)
        assert not same.any(), f"seeds {a} and {b} draw the same mask in stretches {same.nonzero().flatten().tolist()}"


def test_torch_manual_seed_reproduces_and_calls_differ(device):
    x = torch.randn(10_000, device=device)
    torch.manual_seed(2012)
    first, second = at.dropout(x, 0.5), at.dropout(x, 0.5)
    torch.manual_seed(2012)
    assert torch.equal(at.dropout(x, 0.5), first)
    assert not torch.equal(first != 0, second != 0), "two calls in a row must draw different masks"


def test_p_zero_p_one_and_eval(device):
    x = torch.randn(100, device=device)
    assert torch.equal(at.dropout(x, 0.0), x)
    assert torch.equal(at.dropout(x, 1.0), torch.zeros_like(x))
    assert at.dropout(x, 0.5, training=False) is x


def test_gradcheck_tiny_float64(device):
    x = torch.randn(4, 5, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: at.dropout(t, 0.5, seed=99), (x,))


def test_no_mask_is_stored(device):
    x = torch.randn(128, 4096, device=device, requires_grad=True)
    out, saved = saved_tensors(lambda: at.dropout(x, 0.5))
    assert [(t.numel(), t.dtype) for t in saved] == [(1, torch.int64)], "only the seed may be kept"


def test_module_is_a_drop_in(device):
    ours = at.nn.Dropout(0.3)
    assert isinstance(ours, torch.nn.Dropout) and repr(ours) == repr(torch.nn.Dropout(0.3))
    x = torch.randn(1000, device=device)
    assert 0.2 < (ours(x) == 0).float().mean().item() < 0.4
    assert ours.eval()(x) is x
    with pytest.raises(ValueError, match="inplace"):
        at.nn.Dropout(0.5, inplace=True)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"p": -0.1}, ValueError, r"p must be a probability in \[0, 1\]"),
        ({"p": 1.5}, ValueError, r"p must be a probability in \[0, 1\]"),
        ({"p": "half"}, TypeError, "p must be a number"),
        ({"training": "yes"}, TypeError, "training must be a bool"),
        ({"seed": -1}, ValueError, "seed must be None or an int"),
        ({"seed": 1.5}, ValueError, "seed must be None or an int"),
        ({"input": torch.ones(3, dtype=torch.int64)}, TypeError, "input must have a floating dtype"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    args = {"input": torch.randn(10), "p": 0.5} | kwargs
    with pytest.raises(error, match=match):
        at.dropout(**args)
