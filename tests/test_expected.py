"""kernels/expected.py: the trusted answers the launchers hand the autotuner, tested through the real launchers.

Each kernel is tuned here as on a GPU (a CheckedAutotuner, with the interpreter's blocks) over two candidates: the
kernel as it is, and the kernel with one output element spoiled after it ran, past the first tile (what a
miscompiled tile or a missed element looks like). The right candidate must pass its launcher's expectation
whatever its rounding (otherwise a GPU run would refuse every config), and the spoiled one must fail it, in either
order. Shapes are small: the interpreter runs every candidate.
"""

import warnings

import pytest
import torch
import triton
from alexnet_triton.kernels import arrivals, augment, autotune, conv, conv_grad, dropout, expected, lrn, lrn_pool, pool


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float32)


class Spoiling:
    """A kernel whose SPOIL config changes one element of its first checked output after it ran."""

    def __init__(self, kernel, output: str):
        self.fn = kernel  # the interpreter's kernel, which picks its own blocks
        self.arg_names = kernel.arg_names
        self.output = output

    def run(self, *args, SPOIL=False, **kwargs):
        result = self.fn.run(*args, **kwargs)
        if SPOIL and not kwargs.get("warmup"):
            named = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
            target = named[self.output]
            index = tuple(s * 2 // 3 for s in target.shape)  # past the first tile
            if target.is_floating_point():
                target[index] = target[index] * 1.5 + 1.0
            else:
                target[index] = (target[index] + 1) % 9
        return result


@pytest.fixture
def tuned_with_a_spoiled_candidate(monkeypatch):
    """tune(module, name, spoiled_first) puts a two-candidate CheckedAutotuner in place of module.name; returns it."""

    def tune(module, name, spoiled_first=False):
        kernel = getattr(module, name)
        candidates = [triton.Config({"SPOIL": False}), triton.Config({"SPOIL": True})]
        if spoiled_first:
            candidates.reverse()
        tuner = autotune.CheckedAutotuner(
            Spoiling(kernel, kernel.checked[0]),
            kernel.arg_names,
            candidates,
            [],
            checked=kernel.checked,
            do_bench=lambda call, quantiles: (call(), [1.0] * 3)[1],
        )
        monkeypatch.setattr(module, name, tuner)
        return tuner

    return tune


def chose_the_right_one(tuner, call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    dropped = [str(w.message) for w in caught if "dropped config" in str(w.message)]
    assert tuner.best_config.kwargs == {"SPOIL": False}, dropped
    assert len(dropped) == 1 and "SPOIL: True" in dropped[0], dropped
    return result


@pytest.mark.parametrize("spoiled_first", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_conv_forward(tuned_with_a_spoiled_candidate, spoiled_first, layout):
    tuner = tuned_with_a_spoiled_candidate(conv, "_conv_fwd_kernel", spoiled_first)
    x, w, b = randn(2, 32, 9, 7), randn(24, 16, 3, 3), randn(24)
    if layout == "channels_last":
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    out = chose_the_right_one(tuner, lambda: conv.conv_relu_forward(x, w, b, (1, 2), (1, 0), 2))
    reference = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double(), (1, 2), (1, 0), groups=2))
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5)


def test_conv_forward_in_split_partial_sums(tuned_with_a_spoiled_candidate, monkeypatch):
    monkeypatch.setattr(conv.tuning, "reduction_splits", lambda tiles, reduction, device: 3)
    tuner = tuned_with_a_spoiled_candidate(conv, "_conv_fwd_kernel")
    x, w, b = randn(3, 40, 1, 1), randn(20, 40, 1, 1), randn(20)
    chose_the_right_one(tuner, lambda: conv.conv_relu_forward(x, w, b, (1, 1), (0, 0), 1))


def test_a_candidate_that_leaves_a_counter_counted_spoils_no_other(tuned_with_a_spoiled_candidate, monkeypatch):
    # A split forward's spoiled candidate also leaves an arrival counter counted, as a miscompiled one might: the check
    # zeroes the counters once it has read a candidate's outputs, so the right candidate after it still finishes every
    # tile (otherwise its second program would take itself for the last and sum a partial tile not yet written).
    monkeypatch.setattr(conv.tuning, "reduction_splits", lambda tiles, reduction, device: 3)
    tuner = tuned_with_a_spoiled_candidate(conv, "_conv_fwd_kernel", True)
    spoiler, run = tuner.fn, tuner.fn.run

    def and_a_counter(*args, SPOIL=False, **kwargs):
        result = run(*args, SPOIL=SPOIL, **kwargs)
        if SPOIL and not kwargs.get("warmup"):
            {**dict(zip(spoiler.arg_names, args, strict=False)), **kwargs}["arrivals_ptr"][0] += 1
        return result

    monkeypatch.setattr(spoiler, "run", and_a_counter)
    x, w, b = randn(3, 40, 1, 1), randn(20, 40, 1, 1), randn(20)
    out = chose_the_right_one(tuner, lambda: conv.conv_relu_forward(x, w, b, (1, 1), (0, 0), 1))
    reference = torch.relu(torch.nn.functional.conv2d(x.double(), w.double(), b.double()))
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5)
    assert not any(bool(buffer.any()) for buffer in arrivals._buffers.values())


def test_conv_packed_forward_strided(tuned_with_a_spoiled_candidate):
    tuner = tuned_with_a_spoiled_candidate(conv, "_conv_fwd_kernel", True)
    x, w, b = randn(2, 3, 23, 23), randn(16, 3, 11, 11), randn(16)
    chose_the_right_one(tuner, lambda: conv.conv_relu_forward(x, w, b, (4, 4), (2, 2), 1))


@pytest.mark.parametrize("with_bias", [True, False])
def test_relu_mask_and_bias_gradient(tuned_with_a_spoiled_candidate, with_bias):
    tuner = tuned_with_a_spoiled_candidate(conv_grad, "_relu_grad_kernel", True)
    out, grad = torch.relu(randn(2, 24, 5, 6)), randn(2, 24, 5, 6)
    chose_the_right_one(tuner, lambda: conv_grad.relu_grad(grad, out, with_bias))


def test_bias_gradient_of_pixel_chunks(tuned_with_a_spoiled_candidate, monkeypatch):
    # Three pixel chunks, whose last program to arrive sums the bias gradient: the bias gradient spoiled this time.
    monkeypatch.setattr(conv_grad.tuning, "mask_pixels_per_program", lambda pixels: pixels // 3 + 1)
    tuner = tuned_with_a_spoiled_candidate(conv_grad, "_relu_grad_kernel", True)
    monkeypatch.setattr(tuner.fn, "output", "db_ptr")
    out, grad = torch.relu(randn(2, 24, 5, 6)), randn(2, 24, 5, 6)
    _, db = chose_the_right_one(tuner, lambda: conv_grad.relu_grad(grad, out, True))
    reference = torch.where(out > 0, grad, 0).double().sum((0, 2, 3))
    torch.testing.assert_close(db.double(), reference, rtol=1e-5, atol=1e-5)


def test_conv_weight_gradient(tuned_with_a_spoiled_candidate, monkeypatch):
    monkeypatch.setattr(conv_grad.tuning, "wgrad_splits", lambda pixels, tiles, device: 2)
    tuner = tuned_with_a_spoiled_candidate(conv_grad, "_conv_wgrad_kernel")
    x, g = randn(2, 32, 9, 8), randn(2, 24, 9, 8).to(memory_format=torch.channels_last)
    dw = chose_the_right_one(
        tuner, lambda: conv_grad.conv_relu_weight_grad(g, x, [24, 16, 3, 3], torch.contiguous_format, (1, 1), (1, 1), 2)
    )
    reference = torch.nn.grad.conv2d_weight(x.double(), (24, 16, 3, 3), g.double(), 1, 1, groups=2)
    torch.testing.assert_close(dw.double(), reference, rtol=1e-5, atol=1e-5)


def test_conv_weight_gradient_of_a_layer_covering_its_input(tuned_with_a_spoiled_candidate):
    tuner = tuned_with_a_spoiled_candidate(conv_grad, "_conv_wgrad_kernel", True)
    x, g = randn(3, 16, 3, 3), randn(3, 8, 1, 1)
    chose_the_right_one(
        tuner, lambda: conv_grad.conv_relu_weight_grad(g, x, [8, 16, 3, 3], torch.contiguous_format, (1, 1), (0, 0), 1)
    )


def test_conv_input_gradient_strided_gather(tuned_with_a_spoiled_candidate):
    tuner = tuned_with_a_spoiled_candidate(conv_grad, "_conv_dgrad_gather_kernel", True)
    g, w = randn(2, 16, 4, 4), randn(16, 8, 3, 3)
    chose_the_right_one(
        tuner,
        lambda: conv_grad.conv_relu_input_grad(g, w, [2, 8, 9, 9], torch.contiguous_format, (2, 2), (0, 0), 1),
    )


@pytest.mark.parametrize("spoiled_first", [False, True])
def test_lrn_forward_and_backward(tuned_with_a_spoiled_candidate, spoiled_first):
    forward = tuned_with_a_spoiled_candidate(lrn, "_lrn_fwd_kernel", spoiled_first)
    backward = tuned_with_a_spoiled_candidate(lrn, "_lrn_bwd_kernel", spoiled_first)
    x, g = randn(2, 13, 4, 5), randn(2, 13, 4, 5)
    chose_the_right_one(forward, lambda: lrn.lrn_forward(x, 5, 5e-2, 0.75, 2.0))
    chose_the_right_one(backward, lambda: lrn.lrn_backward(g, x, 4, 5e-2, 0.75, 1.0))


def test_max_pool_forward_and_backward(tuned_with_a_spoiled_candidate):
    forward = tuned_with_a_spoiled_candidate(pool, "_max_pool_fwd_kernel", True)
    backward = tuned_with_a_spoiled_candidate(pool, "_max_pool_bwd_kernel")
    x = randn(2, 5, 9, 11).to(memory_format=torch.channels_last)
    out, pos = chose_the_right_one(forward, lambda: pool.max_pool_forward(x, (3, 3), (2, 2), (1, 1)))
    g = randn(*out.shape)
    chose_the_right_one(backward, lambda: pool.max_pool_backward(g, pos, list(x.shape), (3, 3), (2, 2), (1, 1)))


def test_max_pool_positions_are_checked_too(tuned_with_a_spoiled_candidate, monkeypatch):
    # The positions are the second output; spoil those instead of the values.
    forward = tuned_with_a_spoiled_candidate(pool, "_max_pool_fwd_kernel")
    monkeypatch.setattr(forward.fn, "output", "pos_ptr")
    x = randn(2, 5, 9, 11)
    chose_the_right_one(forward, lambda: pool.max_pool_forward(x, (3, 3), (2, 2), (0, 0)))


def test_an_unwritten_position_is_refused_without_indexing_out_of_bounds(tuned_with_a_spoiled_candidate, monkeypatch):
    # Positions start at 255 before a candidate runs: one left unwritten points outside its 3x3 window, and the
    # check must say so before anything gathers with it (on a GPU an out-of-range gather is a device-side assert).
    forward = tuned_with_a_spoiled_candidate(pool, "_max_pool_fwd_kernel")
    spoiler = forward.fn
    monkeypatch.setattr(spoiler, "output", "pos_ptr")
    run = spoiler.run

    def leave_one_unwritten(*args, SPOIL=False, **kwargs):
        result = run(*args, **kwargs)
        if SPOIL and not kwargs.get("warmup"):
            named = {**dict(zip(spoiler.arg_names, args, strict=False)), **kwargs}
            named["pos_ptr"][1, 2, 3, 3] = 255
        return result

    monkeypatch.setattr(spoiler, "run", leave_one_unwritten)
    with pytest.warns(RuntimeWarning, match="a saved position lies outside its window"):
        pool.max_pool_forward(randn(2, 5, 9, 11), (3, 3), (2, 2), (0, 0))
    assert forward.best_config.kwargs == {"SPOIL": False}


def test_lrn_max_pool_forward_and_backward(tuned_with_a_spoiled_candidate):
    forward = tuned_with_a_spoiled_candidate(lrn_pool, "_lrn_max_pool_fwd_kernel")
    backward = tuned_with_a_spoiled_candidate(lrn_pool, "_lrn_max_pool_bwd_kernel", True)
    x = torch.relu(randn(2, 7, 9, 9))  # ReLU's zeros: ties in every window
    args = (5, 5e-2, 0.75, 2.0, (3, 3), (2, 2), (0, 0))
    out, pos = chose_the_right_one(forward, lambda: lrn_pool.lrn_max_pool_forward(x, *args))
    g = randn(*out.shape)
    chose_the_right_one(backward, lambda: lrn_pool.lrn_max_pool_backward(g, x, pos, *args))


@pytest.mark.parametrize("spoiled_first", [False, True])
def test_dropout_of_relu_outputs(tuned_with_a_spoiled_candidate, spoiled_first):
    # fc6's and fc7's inputs are ReLU outputs, about half exactly zero: those look the same kept or dropped.
    tuner = tuned_with_a_spoiled_candidate(dropout, "_dropout_kernel", spoiled_first)
    x = torch.relu(randn(4000)) + (torch.arange(4000) == 2666)  # the spoiled element is not zero
    seed = torch.tensor([1234], dtype=torch.int64)
    # A spoiled element is neither zero nor its kept value, so it fails on its own, first or not.
    chose_the_right_one(tuner, lambda: dropout.dropout(x, seed, 0.5, torch.contiguous_format))


def test_dropout_of_everything(tuned_with_a_spoiled_candidate):
    tuner = tuned_with_a_spoiled_candidate(dropout, "_dropout_kernel")
    x = randn(300)
    seed = torch.tensor([7], dtype=torch.int64)
    out = chose_the_right_one(tuner, lambda: dropout.dropout(x, seed, 1.0, torch.contiguous_format))
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("resize, dtype", [(None, torch.float32), (11, torch.float32), (11, torch.float16)],
                         ids=["as stored", "rescaled", "rescaled fp16"])  # fmt: skip
def test_crops(tuned_with_a_spoiled_candidate, resize, dtype):
    tuner = tuned_with_a_spoiled_candidate(augment, "_crop_normalize_kernel", True)
    images = torch.randint(0, 256, (3, 23, 23, 3), dtype=torch.uint8)
    boxes = torch.tensor([[0, 1, 2, 0], [2, 0, 3, 1], [1, 4, 4, 1]], dtype=torch.int32)
    shift, mean, scale = randn(3, 3), torch.tensor([120.0, 115.0, 100.0]), torch.tensor([0.02, 0.021, 0.019])
    layout = torch.channels_last
    chose_the_right_one(
        tuner, lambda: augment.crop_normalize(images, boxes, shift, mean, scale, 7, dtype, layout, resize)
    )


def tf32_truncated(t: torch.Tensor) -> torch.Tensor:
    """t with the low 13 mantissa bits cleared: what Triton's TF32 tl.dot reads (it truncates, not rounds)."""
    return (t.float().view(torch.int32) & ~0x1FFF).view(torch.float32)


@pytest.mark.parametrize("seed", range(3))
def test_tf32_truncation_of_both_operands_is_within_the_allowance(seed):
    # The worst a correct TF32 kernel does: products of truncated operands, summed exactly, stored in fp32. Short
    # sums show truncation's one-sided error most: a 3x3 kernel on one channel (9 terms; about 1,400 of these
    # 370k outputs pass a 2^-10 per-product allowance), and a 5x5 weight gradient whose corner taps sum few pixels.
    generator = torch.Generator().manual_seed(seed)
    x, w = torch.randn(4, 1, 40, 40, generator=generator), torch.randn(64, 1, 3, 3, generator=generator)
    out = torch.nn.functional.conv2d(tf32_truncated(x).double(), tf32_truncated(w).double()).float()
    check = expected.conv(
        x, w, None, (1, 1), (0, 0), 1, relu=False, tf32=True, out_dtype=torch.float32, results=lambda: [out]
    )
    assert check.judge() is None
    x, g = torch.relu(torch.randn(4, 16, 7, 7, generator=generator)), torch.randn(4, 8, 7, 7, generator=generator)
    dw = torch.nn.grad.conv2d_weight(tf32_truncated(x).double(), (8, 16, 5, 5), tf32_truncated(g).double(), 1, 2)
    check = expected.conv_weight_grad(
        x, g, (8, 16, 5, 5), (1, 1), (2, 2), 1, tf32=True, out_dtype=torch.float32, results=lambda: [dw.float()]
    )
    assert check.judge() is None
