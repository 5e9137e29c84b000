"""at.conv2d_relu and at.nn.Conv2dReLU against float64 PyTorch: values, every gradient, layouts, errors."""

import collections
import math

import pytest
import torch
import torch.nn.functional as F
from alexnet_triton.kernels import _common, arrivals, conv_tuning, expected, space_to_depth
from alexnet_triton.kernels import conv as conv_kernels
from alexnet_triton.kernels import conv_grad as conv_grad_kernels
from helpers import TOLERANCE, assert_close, away_from_kink, every_other, requires_cuda
from tiles import table, uncovered
from torch.utils._python_dispatch import TorchDispatchMode

import alexnet_triton as at
from alexnet_triton.model import layer_shapes


def check_conv2d_relu(x, w, b, stride, padding, groups, tol_key, *, grad_view=None):
    """Forward and the gradient of every input of at.conv2d_relu against float64 torch on the same
    (rounded) values. grad_view, if given, turns the incoming gradient into a non-contiguous view."""
    tol = TOLERANCE[tol_key]
    inputs = [t for t in (x, w, b) if t is not None]
    for t in inputs:
        t.requires_grad_(True)
    out = at.conv2d_relu(x, w, b, stride, padding, groups)

    inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
    x64, w64 = inputs64[:2]
    b64 = inputs64[2] if b is not None else None
    pre = F.conv2d(x64, w64, b64, stride, padding, groups=groups)
    ref = F.relu(pre)
    assert out.dtype == x.dtype
    assert_close(out, ref, TOLERANCE[tol_key], "output")

    # Rounded to the tested dtype first: the kernel and the reference then differentiate the same incoming gradient.
    grad = away_from_kink(torch.randn_like(ref), pre.detach(), tol).to(x.dtype).double()
    grad_in = grad.to(out.dtype)
    if grad_view is not None:
        grad_in = grad_view(grad_in)
        assert not grad_in.is_contiguous() and torch.equal(grad_in, grad.to(out.dtype))
    grads = torch.autograd.grad(out, inputs, grad_in)
    ref_grads = torch.autograd.grad(ref, inputs64, grad)
    for name, g, r in zip(("input", "weight", "bias"), grads, ref_grads, strict=False):
        assert g.dtype == x.dtype
        assert_close(g, r, tol, f"grad of {name}")
    return out, grads


def randn(*shape, device, dtype=torch.float32):
    return torch.randn(*shape, device=device, dtype=dtype)


# Each conv layer's output side in the tests: AlexNet's channels and kernels at a spatial size the
# interpreter runs quickly (5 is prime, so no block divides it; a batch of 2 is 50 pixels, four tiles of 16).
TEST_OUTPUT_SIDE = 5


def alexnet_conv_layers() -> dict[str, tuple[int, ...]]:
    """AlexNet's five convolutions from the model's table, as a tower runs them (conv3 reads both towers' channels),
    each at the input size that gives a TEST_OUTPUT_SIDE output: name -> (C_in, C_out, kernel, stride, padding,
    groups, input size). Under the tests' tiles every program costs the interpreter alike, so both towers in one
    grouped tensor would double the time; test_every_kernel_runs_past_the_first_tile runs groups of several tiles."""
    layers = {}
    for shape in layer_shapes():
        layer = shape.layer
        if layer.fully_connected:
            continue
        size = (TEST_OUTPUT_SIDE - 1) * layer.stride + shape.kernel - 2 * layer.padding
        layers[layer.name] = (shape.in_channels, shape.out_channels, shape.kernel, layer.stride, layer.padding, 1, size)
    return layers


ALEXNET_LAYERS = alexnet_conv_layers()


@pytest.mark.parametrize("layer", ALEXNET_LAYERS)
def test_alexnet_layer_shapes_match_reference(layer, precision, launches, device):
    dtype, tol_key = precision
    c_in, c_out, k, stride, padding, groups, size = ALEXNET_LAYERS[layer]
    x = randn(2, c_in, size, size, device=device, dtype=dtype)
    # Weights scaled like a trained layer's (unit-variance pre-activations); values are arbitrary.
    w = (randn(c_out, c_in // groups, k, k, device=device) / (c_in // groups * k * k) ** 0.5).to(dtype)
    b = randn(c_out, device=device, dtype=dtype)
    out, _ = check_conv2d_relu(x, w, b, stride, padding, groups, tol_key)
    assert out.shape[-2:] == (TEST_OUTPUT_SIDE, TEST_OUTPUT_SIDE)
    # Past the first tile: three programs or more along every tiled dimension and two trips or more of every loop
    # (AlexNet's channel counts are multiples of every block, so only the pixels end in a partial tile; conv1 runs on
    # its 48-channel blocks). conv1's input gradient has 3 channels, under tl.dot's 16.
    exempt = {"_conv_dgrad_gather_kernel": ["input channels"]}
    assert not uncovered(launches, partial=False, exempt=exempt), table(launches)


def test_odd_sizes_rectangular_kernel_and_stride(device):
    # Primes everywhere: batch 3, 5 -> 7 channels, 17x13 image, 3x5 kernel, stride (2, 3), padding (1, 2).
    x, w, b = randn(3, 5, 17, 13, device=device), randn(7, 5, 3, 5, device=device), randn(7, device=device)
    check_conv2d_relu(x, w, b, (2, 3), (1, 2), 1, torch.float32)


def test_batch_one_single_channel(device):
    x, w, b = randn(1, 1, 11, 11, device=device), randn(1, 1, 3, 3, device=device), randn(1, device=device)
    check_conv2d_relu(x, w, b, 1, 0, 1, torch.float32)


def test_depthwise_groups(device):
    x, w, b = randn(2, 6, 9, 9, device=device), randn(6, 1, 3, 3, device=device), randn(6, device=device)
    check_conv2d_relu(x, w, b, 2, 1, 6, torch.float32)


def test_without_bias(device):
    x, w = randn(2, 8, 9, 9, device=device), randn(12, 4, 3, 3, device=device)
    out, grads = check_conv2d_relu(x, w, None, 1, 1, 2, torch.float32)
    assert len(grads) == 2


def test_channels_last_in_and_out(device):
    x = randn(2, 16, 9, 11, device=device).to(memory_format=torch.channels_last)
    w = randn(24, 8, 3, 3, device=device).to(memory_format=torch.channels_last)
    b = randn(24, device=device)
    out, grads = check_conv2d_relu(x, w, b, 1, 1, 2, torch.float32)
    assert out.is_contiguous(memory_format=torch.channels_last), "channels_last input should give channels_last output"
    assert grads[0].is_contiguous(memory_format=torch.channels_last), "input gradient should keep the input layout"


def test_non_contiguous_input_and_weight(device):
    x = randn(2, 9, 6, 22, device=device).permute(0, 2, 1, 3)[..., ::2]  # (2, 6, 9, 11), no unit stride in W
    w = randn(3, 3, 6, 10, device=device).permute(3, 2, 0, 1)  # (10, 6, 3, 3), channels innermost
    assert not x.is_contiguous() and not w.is_contiguous()
    check_conv2d_relu(x, w, randn(10, device=device), 2, 1, 1, torch.float32)


def test_non_contiguous_incoming_gradient(device):
    x, w, b = randn(2, 6, 10, 10, device=device), randn(8, 3, 3, 3, device=device), randn(8, device=device)
    check_conv2d_relu(x, w, b, 1, 1, 2, torch.float32, grad_view=every_other)


def test_float64_matches_to_rounding(device):
    x, w, b = (randn(*s, device=device, dtype=torch.float64) for s in ((2, 4, 8, 7), (6, 2, 3, 3), (6,)))
    check_conv2d_relu(x, w, b, (1, 2), 1, 2, torch.float64)


def test_gradcheck_float64(device):
    # gradcheck's fast mode compares one random projection of the Jacobians (a few calls, where the full Jacobian
    # takes two forward passes per input element), so the shape can span programs: 40 output pixels, three tiles.
    x = randn(2, 2, 5, 7, device=device, dtype=torch.float64).requires_grad_()
    w = randn(2, 1, 3, 3, device=device, dtype=torch.float64).requires_grad_()
    b = randn(2, device=device, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w, b: at.conv2d_relu(x, w, b, (1, 2), 1, 2), (x, w, b), fast_mode=True)


def test_unbatched_input(device):
    x, w, b = randn(4, 7, 7, device=device), randn(5, 4, 3, 3, device=device), randn(5, device=device)
    out = at.conv2d_relu(x, w, b, padding=1)
    assert out.shape == (5, 7, 7)
    assert_close(out, F.relu(F.conv2d(x.double(), w.double(), b.double(), padding=1)), 1e-5, "unbatched output")


def test_string_padding(device):
    x, w = randn(1, 3, 6, 6, device=device), randn(4, 3, 3, 3, device=device)
    for padding in ("same", "valid"):
        ref = F.relu(F.conv2d(x.double(), w.double(), padding=padding))
        assert_close(at.conv2d_relu(x, w, padding=padding), ref, 1e-5, f"padding={padding!r}")


def test_only_the_needed_gradients_flow(device):
    # AlexNet's conv1 never needs the image's gradient; asking for the weight only must work.
    x = randn(1, 3, 15, 15, device=device)
    w = randn(8, 3, 11, 11, device=device).requires_grad_()
    out = at.conv2d_relu(x, w, None, stride=4)
    out.sum().backward()
    w64 = w.detach().double().requires_grad_()
    F.relu(F.conv2d(x.double(), w64, stride=4)).sum().backward()
    assert x.grad is None
    assert_close(w.grad, w64.grad, 1e-5, "weight gradient")


def test_empty_batch(device):
    x, w, b = randn(0, 3, 8, 8, device=device), randn(4, 3, 3, 3, device=device), randn(4, device=device)
    out = at.conv2d_relu(x, w, b)
    assert out.shape == (0, 4, 6, 6)


# ---- the kernels' paths: channels_last fast path, input gradient, fc layers ---------------------------


@pytest.fixture
def launched(monkeypatch):
    """The conv kernels launched while a test runs, in order, by name."""
    names = {
        conv_kernels._conv_fwd_kernel: "forward",
        conv_grad_kernels._relu_grad_kernel: "relu_grad",
        conv_grad_kernels._conv_dgrad_gather_kernel: "gather",
        conv_grad_kernels._conv_wgrad_kernel: "weight_grad",
    }
    order = []
    launch = _common.launcher

    def recording(kernel, *args, **kwargs):  # whatever else a launch passes the launcher, passed on
        order.append(names.get(kernel, kernel))
        return launch(kernel, *args, **kwargs)

    monkeypatch.setattr(_common, "launcher", recording)
    return order


def test_stride_one_input_gradient_runs_the_forward_kernel(launched, device):
    # The input gradient of a stride-1 convolution is the forward kernel on the masked gradient with the flipped,
    # transposed weights: no gather kernel. 16 channels per group each way: the channel-block path throughout.
    x, w, b = randn(2, 32, 7, 9, device=device), randn(32, 16, 3, 5, device=device), randn(32, device=device)
    check_conv2d_relu(x, w, b, 1, (1, 2), 2, torch.float32)
    assert launched == ["forward", "relu_grad", "forward", "weight_grad"]


def test_strided_input_gradient_gathers(launched, device):
    x, w, b = randn(2, 6, 9, 8, device=device), randn(8, 3, 3, 3, device=device), randn(8, device=device)
    check_conv2d_relu(x, w, b, (2, 1), 1, 2, torch.float32)
    assert launched == ["forward", "relu_grad", "gather", "weight_grad"]


@pytest.mark.parametrize(
    "stride, x_shape, w_shape, groups",
    [
        # Two groups; the input gradient is the forward kernel. Tiles per group (pixels x channels): forward 4 x 3,
        # input gradient 4 x 3, weight gradient 3 x 3.
        (1, (2, 74, 5, 5), (70, 37, 3, 3), 2),
        # The input gradient gathers. Tiles: forward 4 x 3, input gradient 3 x 4, weight gradient 3 x 4.
        (2, (2, 50, 9, 9), (35, 50, 3, 3), 1),
    ],
    ids=["stride-1-groups", "strided"],
)
def test_every_kernel_runs_past_the_first_tile(stride, x_shape, w_shape, groups, launches, device):
    # Sizes no block divides (50 and 162 pixels, 35, 37 and 50 channels, reductions of 37, 50 and 35 x 9), so that a
    # tile index, a block offset or a loop's carry that only the first program or trip gets right shows in the result
    # as on a GPU's hundreds of programs; each GEMM kernel's two tile counts differ in one of the cases, so that
    # programs that swap their tile indices leave tiles undone.
    x, w, b = randn(*x_shape, device=device), randn(*w_shape, device=device), randn(w_shape[0], device=device)
    check_conv2d_relu(x, w, b, stride, 1, groups, torch.float32)
    if _common.INTERPRET:
        gradient = "_conv_fwd_kernel" if stride == 1 else "_conv_dgrad_gather_kernel"
        assert [launch.kernel for launch in launches] == [
            "_conv_fwd_kernel", "_relu_grad_kernel", gradient, "_conv_wgrad_kernel"
        ]  # fmt: skip
        assert not uncovered(launches), table(launches)


@pytest.mark.parametrize("splits", [1, 3, 7])
@pytest.mark.parametrize(
    "x_shape, w_shape",
    [((35, 24, 3, 3), (37, 24, 3, 3)), ((3, 40, 1, 1), (24, 40, 1, 1))],
    ids=["kernel-covers-input", "one-by-one"],
)
def test_fully_connected_layers_split_their_reduction(x_shape, w_shape, splits, launches, monkeypatch, device):
    # fc6 (a kernel as large as its input) and fc7 (1x1 on a 1x1 map) are matrix products whose rows are the batch:
    # the forward kernel on the flattened input, its reduction split over programs and summed afterwards; the
    # weight gradient splits the batch likewise. fc6's 216 products per output leave each of 7 splits two trips of
    # 16 and more; fc7's 40 leave some splits nothing to add (so do both input gradients, over 37 and 24 channels).
    asked, asked_pixels = [], []

    def forced(tiles, reduction, device):
        asked.append(reduction)
        return splits

    def forced_pixels(pixels, tiles, device):
        asked_pixels.append(pixels)
        return splits

    monkeypatch.setattr(conv_tuning, "reduction_splits", forced)
    monkeypatch.setattr(conv_tuning, "wgrad_splits", forced_pixels)
    x, w, b = randn(*x_shape, device=device), randn(*w_shape, device=device), randn(w_shape[0], device=device)
    check_conv2d_relu(x, w, b, 1, 0, 1, torch.float32)
    flat = x_shape[1] * x_shape[2] * x_shape[3]
    assert asked == [flat, w_shape[0]]  # the forward reduces the flattened input, the input gradient C_out
    assert asked_pixels == [x_shape[0]]  # the weight gradient the batch's rows
    if _common.INTERPRET:
        forward, _, input_grad, weight_grad = launches
        assert [launch.kernel for launch in launches] == [
            "_conv_fwd_kernel", "_relu_grad_kernel", "_conv_fwd_kernel", "_conv_wgrad_kernel"
        ]  # fmt: skip
        assert forward.coverage()["splits"] == input_grad.coverage()["splits"] == (splits,)
        assert weight_grad.coverage()["splits"] == (splits,)
        if x_shape[1] * x_shape[2] * x_shape[3] >= 16 * 2 * 7:  # fc6: every split of the forward two trips or more
            assert not forward.uncovered(), table(launches)


@pytest.mark.parametrize("splits", [1, 3, 7])
def test_weight_gradient_splits_its_pixels(splits, launches, monkeypatch, device):
    # The weight gradient of a convolution sums over every output pixel of the batch, cut into `splits` chunks whose
    # pixel lanes step across rows and images with carries: 126 pixels (3 images of 6 x 7) in 7 chunks of 18 are two
    # trips of 16 each, the chunks and the trips starting mid-row and mid-image.
    monkeypatch.setattr(conv_tuning, "wgrad_splits", lambda pixels, tiles, device: splits)
    x = randn(3, 35, 6, 8, device=device)
    masked = randn(3, 37, 6, 7, device=device).contiguous(memory_format=torch.channels_last)
    dw = conv_grad_kernels.conv_relu_weight_grad(masked, x, [37, 35, 1, 2], torch.contiguous_format, (1, 1), (0, 0), 1)
    reference = torch.nn.grad.conv2d_weight(x.double(), (37, 35, 1, 2), masked.double(), (1, 1), (0, 0))
    assert_close(dw, reference, TOLERANCE[torch.float32], "weight gradient")
    if _common.INTERPRET:
        (launch,) = launches
        assert launch.coverage()["splits"] == (splits,)
        assert uncovered(launches) == [], table(launches)


class AtenOps(TorchDispatchMode):
    """The ATen ops run inside it, by name."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func._schema.name.removeprefix("aten::"))
        return func(*args, **(kwargs or {}))


def counters_all_zero() -> bool:
    return all(not bool(buffer.any()) for buffer in arrivals._buffers.values())


@pytest.fixture
def arrivals_counted(monkeypatch, launches):
    """Per launch (its index in `launches`) and arrival counter (its address): the counts its atomic increments
    returned, in the order the interpreter ran the programs. The interpreter runs one program after another, so the
    last to arrive always finds the others' partial tiles written: a kernel whose every program took itself for the
    last would still end with the right sums. What it cannot hide is the counts: each tile's must be 0, 1, ...,
    splits - 1, one per program."""
    from triton.runtime import interpreter

    counted = collections.defaultdict(lambda: collections.defaultdict(list))
    builder = interpreter.interpreter_builder
    increment = builder.create_atomic_rmw

    def counting(op, ptr, val, mask, sem, scope):
        result = increment(op, ptr, val, mask, sem, scope)
        for address, old, active in zip(ptr.data.ravel(), result.data.ravel(), mask.data.ravel(), strict=True):
            if active:
                counted[len(launches) - 1][int(address)].append(int(old))
        return result

    monkeypatch.setattr(builder, "create_atomic_rmw", counting)
    return counted


# Per kernel whose programs share a reduction: the grid axis along which they share it (the split's).
SHARING_AXIS = {"_conv_fwd_kernel": 2, "_conv_wgrad_kernel": 1, "_relu_grad_kernel": 0}


def assert_one_arrival_per_program(launches, counted) -> None:
    """Every split launch counted each of its tiles on a counter of its own, once per program sharing the tile, and
    a launch whose reduction is whole counted nothing."""
    for index, launch in enumerate(launches):
        sharing = launch.grid[SHARING_AXIS[launch.kernel]]
        tiles = counted.get(index, {})
        if sharing == 1:
            assert not tiles, f"{launch.kernel}: a whole reduction counted arrivals"
            continue
        assert len(tiles) * sharing == math.prod(launch.grid), f"{launch.kernel}: {len(tiles)} counters, {launch.grid}"
        for counts in tiles.values():
            assert counts == list(range(sharing)), f"{launch.kernel}: a tile's arrivals counted {counts}"


@pytest.fixture
def split_everywhere(monkeypatch):
    """Every split reduction split 3 ways (the forward's and the weight gradient's, as on a GPU with few output tiles;
    ReLU's mask is cut into 3 pixel chunks by the tests' tiles), and the split paths' launches recorded."""
    monkeypatch.setattr(conv_tuning, "reduction_splits", lambda tiles, reduction, device: 3)
    monkeypatch.setattr(conv_tuning, "wgrad_splits", lambda pixels, tiles, device: 3)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(
    "x_shape, w_shape, padding, groups",
    [((5, 24, 3, 3), (37, 24, 3, 3), 0, 1), ((2, 34, 5, 4), (36, 17, 3, 3), 1, 2)],
    ids=["kernel-covers-input", "groups"],
)
def test_split_reductions_finish_in_the_kernel_twice_over(
    x_shape, w_shape, padding, groups, memory_format, split_everywhere, launches, arrivals_counted, device
):
    # fc6 (a kernel covering its input), and a grouped convolution whose groups' tiles count on counters of their own,
    # with every reduction split: each kernel's last program to arrive at a tile sums the partial tiles, adds the bias,
    # applies ReLU and stores, and sets its arrival counter back to 0; so a second call on the same counters computes
    # as the first did (a counter left counted would keep every program of its tile from being last, and leave the
    # poisoned output NaN). No torch op sums, adds, clamps or flips after a kernel.
    def inputs():
        x = randn(*x_shape, device=device).to(memory_format=memory_format)
        w = randn(*w_shape, device=device).to(memory_format=memory_format)
        return x, w, randn(w_shape[0], device=device)

    for call in range(2):
        _, grads = check_conv2d_relu(*inputs(), 1, padding, groups, torch.float32)
        assert counters_all_zero(), f"call {call}: a kernel left an arrival counter counted"
        assert grads[1].is_contiguous(memory_format=memory_format), "the weight gradient keeps the weight's layout"
    if _common.INTERPRET:
        assert [launch.kernel for launch in launches[-4:]] == [
            "_conv_fwd_kernel", "_relu_grad_kernel", "_conv_fwd_kernel", "_conv_wgrad_kernel"
        ]  # fmt: skip
        forward, relu_grad, input_grad, weight_grad = launches[-4:]
        assert forward.grid[2] == input_grad.grid[2] == weight_grad.grid[1] == relu_grad.grid[0] == 3
        assert_one_arrival_per_program(launches, arrivals_counted)
    x, w, b = (t.requires_grad_() for t in inputs())
    with AtenOps() as aten:
        out = at.conv2d_relu(x, w, b, 1, padding, groups)
        torch.autograd.grad(out, (x, w, b), torch.ones_like(out))
    # (Copies are no sign: NCHW tensors are copied to channels_last and back, and the interpreter copies arguments.)
    assert not {"sum", "add", "add_", "clamp_min", "flip", "_to_copy"} & set(aten.ops), aten.ops


def test_split_forward_keeps_bias_relu_and_nan(split_everywhere, device):
    # On the split path the epilogue runs in the last program: bias added to the summed partials, then ReLU, whose
    # `acc < 0` is false for NaN, so an image with a NaN input gives NaN outputs, as F.relu(F.conv2d(...)) does.
    x, w, b = randn(4, 40, 1, 1, device=device), randn(24, 40, 1, 1, device=device), 3 * randn(24, device=device)
    x[2, 7] = float("nan")
    out = conv_kernels.conv_relu_forward(x, w, b, (1, 1), (0, 0), 1)
    reference = F.relu(F.conv2d(x.double(), w.double(), b.double()))
    assert torch.equal(out.isnan(), reference.isnan()) and out[2].isnan().all()
    finite = ~reference.isnan()
    assert torch.equal(out[finite] == 0, reference[finite] == 0), "ReLU's zeros"
    assert (out[finite] > 0).any() and (out[finite] == 0).any()
    torch.testing.assert_close(out[finite].double(), reference[finite], rtol=1e-5, atol=1e-5)
    assert counters_all_zero()


def test_bias_gradient_of_pixel_chunks_keeps_nan(launches, arrivals_counted, device):
    # ReLU's mask cuts the pixels into 3 chunks (the tests' tiles); the last chunk to arrive at a channel block sums the
    # partial bias gradients. A NaN incoming gradient where the output is positive reaches its channel's bias gradient
    # only; one where ReLU clipped the output does not.
    out, grad = torch.relu(randn(3, 10, 5, 7, device=device)), randn(3, 10, 5, 7, device=device)
    out[1, 4, 2, 3], out[0, 6, 1, 1] = 1.0, 0.0
    grad[1, 4, 2, 3] = grad[0, 6, 1, 1] = float("nan")
    for _ in range(2):  # the second on the counters the first left
        masked, db = conv_grad_kernels.relu_grad(grad, out, True)
        kept = torch.where(out > 0, grad.double(), 0.0)
        assert torch.equal(masked.isnan(), kept.isnan()) and masked.isnan().sum() == 1
        reference = kept.sum((0, 2, 3))
        assert db.isnan()[4] and db.isnan().sum() == 1
        finite = reference.isfinite()
        torch.testing.assert_close(db.double()[finite], reference[finite], rtol=1e-5, atol=1e-5)
        assert counters_all_zero()
    if _common.INTERPRET:
        assert [launch.grid[0] for launch in launches] == [3, 3]  # pixel chunks
        assert_one_arrival_per_program(launches, arrivals_counted)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("kernel", [3, 1])
def test_split_weight_gradient_in_the_weights_layout(kernel, memory_format, split_everywhere, device):
    # The weight gradient's last program writes dw in the weight's dtype and layout; fc6's columns are the flattened
    # (kh, kw, ci), which an NCHW weight does not lay out one after another, so that one is written channels_last
    # and copied.
    x = randn(7, 20, kernel, kernel, device=device)
    masked = randn(7, 18, 1, 1, device=device).contiguous(memory_format=torch.channels_last)
    shape = [18, 20, kernel, kernel]
    dw = conv_grad_kernels.conv_relu_weight_grad(masked, x, shape, memory_format, (1, 1), (0, 0), 1)
    assert dw.is_contiguous(memory_format=memory_format)
    reference = torch.nn.grad.conv2d_weight(x.double(), shape, masked.double(), (1, 1), (0, 0))
    assert_close(dw, reference, TOLERANCE[torch.float32], "weight gradient")
    assert counters_all_zero()


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_stride_one_input_gradients_weight_is_one_gather(groups, memory_format, device):
    # Flipped in space, in and out channels swapped per group, channels_last: one torch.take at an index made once.
    w = randn(6, 5, 3, 4, device=device).to(memory_format=memory_format)
    flipped = conv_grad_kernels.flipped_weight(w, groups)
    per_group = w.reshape(groups, 6 // groups, 5, 3, 4)
    reference = per_group.flip(3, 4).transpose(1, 2).reshape(5 * groups, 6 // groups, 3, 4)
    assert torch.equal(flipped, reference) and flipped.is_contiguous(memory_format=torch.channels_last)
    with AtenOps() as aten:
        again = conv_grad_kernels.flipped_weight(w, groups)
    assert torch.equal(again, reference) and aten.ops == ["take", "permute"], aten.ops


@pytest.mark.parametrize("channels", [4, 16], ids=["packed-taps", "channel-blocks"])
@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_fast_path_equals_the_nchw_path(stride, channels, device):
    """NCHW tensors are copied once into channels_last and run the same kernels: the same numbers, bit for bit.

    What bit-for-bit rests on: each kernel sums in an order fixed by its block sizes, and on a GPU the autotuner
    picks those per key. The forward, input-gradient and weight-gradient kernels read the dense channels_last
    copies and the masked gradient (always channels_last), so both layouts launch them with the same keys and
    get the same configs. The ReLU-mask kernel (conv_grad._relu_grad_kernel) reads the incoming gradient and the
    output in the caller's layout, and its key holds their channel strides, so the two layouts are tuned apart
    and may pick different BLOCK_P; BLOCK_P orders its bias-gradient sum. Here that cannot show: the incoming
    gradient is all ones, so the bias gradient is a count of positive outputs, exact in fp32 in any order. With
    any other gradient the bias gradient is bit-equal only while that kernel's summation order does not depend
    on its tuning (or both layouts pick the same BLOCK_P)."""
    x, w = randn(2, 2 * channels, 9, 7, device=device), randn(2 * channels, channels, 3, 3, device=device)
    b = randn(2 * channels, device=device)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        inputs = [t.to(memory_format=memory_format) if t.dim() == 4 else t for t in (x, w, b)]
        inputs = [t.clone().requires_grad_() for t in inputs]
        out = at.conv2d_relu(*inputs, stride=stride, padding=1, groups=2)
        assert out.is_contiguous(memory_format=memory_format)
        grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
        results.append([out, *grads])
    for nchw, channels_last in zip(*results, strict=True):
        assert torch.equal(nchw, channels_last)


@pytest.mark.parametrize("pack_below", [0, 1000], ids=["channel-blocks", "packed-taps"])
def test_packed_taps_and_channel_blocks_agree_with_the_reference(pack_below, monkeypatch, device):
    # Narrow channels (conv1's 3) pack (tap, channel) pairs into a reduction block; wider ones loop over taps and
    # channel blocks. Either way for the same odd convolution, forward and every gradient.
    monkeypatch.setattr(conv_tuning, "PACK_CHANNELS_BELOW", pack_below)
    x, w, b = randn(3, 12, 11, 8, device=device), randn(10, 6, 3, 5, device=device), randn(10, device=device)
    check_conv2d_relu(x, w, b, 1, (2, 1), 2, torch.float32)
    check_conv2d_relu(x, w, b, (2, 3), 1, 2, torch.float32)


@pytest.mark.parametrize(
    "x_shape, w_shape, padding, groups, inside",
    [
        ((2, 32, 7, 6), (72, 16, 3, 3), 0, 2, True),  # 144 columns a group, tiles across taps
        ((3, 32, 5, 8), (36, 32, 1, 5), 0, 1, True),  # a row of taps
        ((2, 32, 7, 6), (24, 16, 3, 3), 1, 2, False),  # padded: windows leave the image, a tap's channels a block
        ((2, 24, 7, 6), (20, 24, 3, 3), 0, 1, False),  # 24 channels: not runs of 16
    ],
    ids=["inside-groups", "inside-row-of-taps", "padded", "channels-not-runs-of-16"],
)
def test_weight_gradient_packs_the_taps_of_a_convolution_inside_its_image(
    x_shape, w_shape, padding, groups, inside, launches, device
):
    # A stride-1 convolution without padding, of channels in runs of 16, packs its weight gradient's (tap, channel)
    # columns without bounds (INSIDE: conv1 blocked); column tiles that straddle taps, against float64.
    x, w, b = randn(*x_shape, device=device), randn(*w_shape, device=device), randn(w_shape[0], device=device)
    check_conv2d_relu(x, w, b, 1, padding, groups, torch.float32)
    if _common.INTERPRET:
        ran = {launch.kernel: launch for launch in launches}["_conv_wgrad_kernel"]
        assert ran.args["INSIDE"] is inside and ran.args["PACKED"] is inside
        taps = w_shape[2] * w_shape[3]
        assert ran.args["COLUMNS"] == (taps if inside else 1) * w_shape[1]
        if inside:  # three tiles or more each way (a tap's 16 or 24 columns are one)
            assert not uncovered([ran]), table([ran])


def test_weight_gradient_packs_inside_only_runs_of_16_channels():
    # A tap's channels load 16 at a time only where the strides between taps keep each run aligned.
    dense = (9 * 48, 1, 7 * 48, 48)  # strides of a channels_last [N, 48, H, 7]
    assert conv_tuning.wgrad_inside(48, 9, (1, 1), (0, 0), dense)
    assert not conv_tuning.wgrad_inside(48, 9, (1, 1), (0, 0), (9 * 56, 1, 7 * 56, 56))  # a slice of 56 channels
    assert not conv_tuning.wgrad_inside(48, 9, (2, 2), (0, 0), dense)  # strided
    assert not conv_tuning.wgrad_inside(48, 9, (1, 1), (0, 1), dense)  # padded
    assert not conv_tuning.wgrad_inside(48, 1, (1, 1), (0, 0), dense)  # one tap: its channels are the columns
    assert not conv_tuning.wgrad_inside(128, 9, (1, 1), (0, 0), (9 * 128, 1, 7 * 128, 128))  # a tap fills a tile


# ---- conv1 by space-to-depth ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "x_shape, kernel, stride, padding",
    [
        ((1, 3, 227, 227), (11, 11), (4, 4), (0, 0)),  # the paper's conv1: 57 x 57 blocks of 48, 3 x 3 taps
        ((2, 3, 67, 67), (11, 11), (4, 4), (0, 0)),  # the built-in data's crops
        ((1, 3, 230, 229), (11, 11), (4, 4), (0, 0)),  # rows and columns no window reads (floor mode)
        ((3, 3, 23, 20), (7, 7), (2, 4), (3, 2)),  # padded, rectangular strides, a kernel no stride divides
        ((1, 5, 9, 13), (3, 5), (3, 3), (1, 0)),  # a kernel narrower than its stride in one dimension
    ],
)
def test_space_to_depth_is_the_strided_convolution(x_shape, kernel, stride, padding, device):
    # The blocked stride-1 convolution equals the strided one (in float64 PyTorch, on the kernel's blocked input), the
    # kernel's blocked input equals PyTorch's pad-and-rearrange bit for bit (NCHW and channels_last inputs), and the
    # weight's blocks map back to the weight exactly.
    x = torch.randn(*x_shape, dtype=torch.float64)
    w = torch.randn(6, x_shape[1], *kernel, dtype=torch.float64)
    strided = F.conv2d(x, w, stride=stride, padding=padding)
    out = tuple(strided.shape[2:])
    blocked_w = space_to_depth.space_to_depth_weight(w, stride)
    reference = expected.space_to_depth_reference(x, kernel, stride, padding, out)
    torch.testing.assert_close(F.conv2d(reference, blocked_w), strided, rtol=1e-12, atol=1e-12)
    assert torch.equal(space_to_depth.depth_to_space_weight(blocked_w, kernel, stride), w)
    for memory_format in (torch.contiguous_format, torch.channels_last):
        x32 = x.float().to(device, memory_format=memory_format)
        blocked = space_to_depth.space_to_depth(x32, kernel, stride, padding, out)
        assert blocked.is_contiguous(memory_format=torch.channels_last)
        assert blocked.shape[1] == x_shape[1] * stride[0] * stride[1]
        assert torch.equal(blocked.cpu(), reference.float())


@pytest.mark.parametrize(
    "channels, stride, blocked",
    [(3, 4, True), (3, 2, False), (1, 4, True), (16, 4, False), (3, 1, False)],
    ids=["conv1", "12-channel-blocks", "one-channel", "wide-channels", "stride-1"],
)
def test_space_to_depth_runs_where_blocks_fill_a_channel_block(channels, stride, blocked):
    assert space_to_depth.applies(channels, (stride, stride), 1) is blocked
    assert not space_to_depth.applies(channels, (stride, stride), 2)  # groups keep the packed taps


@pytest.mark.parametrize(
    "x_shape, out_channels, memory_format",
    [
        ((2, 3, 67, 67), 24, torch.contiguous_format),  # the built-in data's crops
        ((1, 3, 67, 67), 48, torch.channels_last),  # batch 1, channels_last
        ((1, 3, 227, 227), 16, torch.channels_last),  # the paper's 227 crops (16 channels: the interpreter's time)
        ((3, 3, 41, 38), 7, torch.contiguous_format),  # odd sizes: 8 x 7 outputs, 7 channels
    ],
    ids=["67", "67-batch-1-channels-last", "227", "odd"],
)
def test_conv1_runs_on_the_channel_block_path(x_shape, out_channels, memory_format, launches, device):
    # conv1 (11x11, stride 4, 3 channels) as a stride-1 convolution of 48-channel blocks: the forward and weight
    # gradient kernels run their channel-block path (not packed taps), against float64 for the values and every
    # gradient; the input gradient (never needed by AlexNet) keeps the gather kernel.
    x = randn(*x_shape, device=device).to(memory_format=memory_format)
    w = (randn(out_channels, 3, 11, 11, device=device) / 363**0.5).to(memory_format=memory_format)
    b = randn(out_channels, device=device)
    out, _ = check_conv2d_relu(x, w, b, 4, 0, 1, torch.float32)
    assert out.is_contiguous(memory_format=memory_format)
    if _common.INTERPRET:
        ran = {launch.kernel: launch.args for launch in launches}
        assert [launch.kernel for launch in launches] == [
            "_space_to_depth_kernel", "_conv_fwd_kernel", "_relu_grad_kernel", "_conv_dgrad_gather_kernel",
            "_space_to_depth_kernel", "_conv_wgrad_kernel",
        ]  # fmt: skip
        assert ran["_conv_fwd_kernel"]["C_in_g"] == 48 and ran["_conv_fwd_kernel"]["TAPS"] == 9
        assert not ran["_conv_fwd_kernel"]["PACKED"]
        # the weight gradient's columns: every (tap, channel) pair of the blocked 3x3 taps, without bounds
        assert ran["_conv_wgrad_kernel"]["PACKED"] and ran["_conv_wgrad_kernel"]["INSIDE"]
        assert ran["_conv_wgrad_kernel"]["C_in_g"] == 48 and ran["_conv_wgrad_kernel"]["COLUMNS"] == 9 * 48


# ---- the module --------------------------------------------------------------------------------


def test_module_is_a_drop_in_conv2d(device):
    torch_conv = torch.nn.Conv2d(6, 8, 3, stride=2, padding=1, groups=2).to(device)
    fused = at.nn.Conv2dReLU(6, 8, 3, stride=2, padding=1, groups=2).to(device)
    assert isinstance(fused, torch.nn.Conv2d)
    assert fused.state_dict().keys() == torch_conv.state_dict().keys()
    fused.load_state_dict(torch_conv.state_dict())
    x = randn(2, 6, 9, 9, device=device)
    assert_close(fused(x), F.relu(torch_conv.double()(x.double())), 1e-5, "module output")


@pytest.mark.parametrize(
    "kernel, kwargs, match",
    [
        (3, {"dilation": 2}, "dilation"),
        (3, {"padding_mode": "reflect"}, "padding_mode"),
        (2, {"padding": "same"}, "odd kernels only"),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # nn.Conv2d's own, before ours raises
def test_module_rejects_what_it_cannot_compute(kernel, kwargs, match):
    with pytest.raises(ValueError, match=match):
        at.nn.Conv2dReLU(3, 4, kernel, **kwargs)


# ---- validation ----------------------------------------------------------------------------------


def _valid():
    return torch.randn(2, 4, 8, 8), torch.randn(6, 2, 3, 3), torch.randn(6)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda x, w, b: (x[0, 0], w, b, {}), ValueError, "input must be 3-D or 4-D"),
        (lambda x, w, b: (x, w[0], b, {}), ValueError, "weight must be 4-D"),
        (lambda x, w, b: (x.long(), w, b, {}), TypeError, "input must have a floating dtype"),
        (lambda x, w, b: (x, w.double(), b, {}), TypeError, "weight has dtype torch.float64 but input"),
        (lambda x, w, b: (x, w, b.to("meta"), {}), ValueError, "bias is on meta but input is on cpu"),
        (lambda x, w, b: (x[:, :3], w, b, {}), ValueError, "input has 3 channels but weight expects"),
        (lambda x, w, b: (x, w, b, {"groups": 3}), ValueError, "weight expects 2 per group x 3"),
        (lambda x, w, b: (x, w[:5], b, {}), ValueError, "groups=2 does not divide"),
        (lambda x, w, b: (x, w, b[:5], {}), ValueError, "bias has 5 elements"),
        (lambda x, w, b: (x, w, b, {"stride": 0}), ValueError, "stride must be >= 1"),
        (lambda x, w, b: (x, w, b, {"stride": (1, 2, 3)}), TypeError, "stride must be an int or a pair"),
        (lambda x, w, b: (x, w, b, {"padding": -1}), ValueError, "padding must be >= 0"),
        (lambda x, w, b: (x, w, b, {"groups": 0}), ValueError, "groups must be a positive int"),
        (lambda x, w, b: (x, w, b, {"dilation": 2}), ValueError, "dilation=2 is not supported"),
        (lambda x, w, b: (x[..., :2, :2], w, b, {}), ValueError, "input height 2 .* smaller than the kernel"),
        (lambda x, w, b: (x, w, b, {"padding": "same", "stride": 2}), ValueError, "padding='same' needs stride 1"),
        (lambda x, w, b: ("image", w, b, {}), TypeError, "input must be a torch.Tensor"),
    ],
)
def test_bad_arguments_name_the_argument(change, error, match):
    x, w, b, kwargs = change(*_valid())
    kwargs.setdefault("groups", 2)
    with pytest.raises(error, match=match):
        at.conv2d_relu(x, w, b, **kwargs)


# ---- GPU only ------------------------------------------------------------------------------------


@requires_cuda
def test_autocast_bf16_casts_like_conv2d():
    conv = at.nn.Conv2dReLU(8, 16, 3, padding=1).cuda()
    x = torch.randn(4, 8, 12, 12, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    x64, w64, b64 = (t.detach().bfloat16().double() for t in (x, conv.weight, conv.bias))
    ref = F.relu(F.conv2d(x64, w64, b64, padding=1))
    assert_close(out, ref, TOLERANCE[torch.bfloat16], "autocast output")
    out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32


@requires_cuda
@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_torch_compile_sees_one_op(memory_format, tf32, allow_tf32):
    # The precision is chosen, not inherited: true fp32, and TF32 as PyTorch's default lets cuDNN run fp32.
    allow_tf32(tf32)
    conv = at.nn.Conv2dReLU(16, 32, 3, padding=1).cuda()
    compiled = torch.compile(conv, fullgraph=True)
    x = torch.randn(4, 16, 13, 13, device="cuda").to(memory_format=memory_format).requires_grad_()
    out = compiled(x)
    x64 = x.detach().double().requires_grad_()
    w64, b64 = conv.weight.detach().double().requires_grad_(), conv.bias.detach().double().requires_grad_()
    pre = F.conv2d(x64, w64, b64, padding=1)
    ref = F.relu(pre)
    tol = TOLERANCE["tf32" if tf32 else torch.float32]
    # Rounded to the tested dtype first: the kernel and the reference then differentiate the same incoming gradient.
    grad = away_from_kink(torch.randn_like(ref), pre.detach(), tol).to(x.dtype).double()
    out.backward(grad.float())
    ref.backward(grad)
    assert_close(out, ref, tol, "compiled output")
    assert_close(x.grad, x64.grad, tol, "compiled input gradient")
    assert_close(conv.weight.grad, w64.grad, tol, "compiled weight gradient")


def test_relu_gradient_passes_where_the_output_is_nan_as_pytorch_does(device):
    # PyTorch's ReLU backward (threshold_backward on the result) zeroes the gradient where the output is <= 0 and
    # passes it everywhere else, NaN outputs included; the mask here must agree, or a NaN forward would hide itself
    # from the gradients.
    out = torch.relu(randn(2, 6, 3, 4, device=device))
    out[0, 1, 2, 3], out[1, 5, 0, 0], out[1, 2, 1, 1] = float("nan"), 0.0, 2.0
    grad = randn(2, 6, 3, 4, device=device)
    masked, db = conv_grad_kernels.relu_grad(grad, out, True)
    pre = out.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(torch.relu(pre), pre, grad)  # relu's backward on its own output
    assert torch.equal(masked.contiguous(), expected.contiguous()), "the masked gradient, NaN position included"
    assert masked[0, 1, 2, 3] == grad[0, 1, 2, 3] and masked[1, 5, 0, 0] == 0
    torch.testing.assert_close(db.double(), expected.double().sum((0, 2, 3)), rtol=1e-5, atol=1e-5)
