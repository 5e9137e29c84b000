"""What a tuning candidate must produce: the trusted answer each launcher hands the autotuner (autotune.py).

Each expectation is PyTorch's own op (F.conv2d, its gradients, F.local_response_norm, F.max_pool2d) in float64
on the same device, at the tuning inputs, with an elementwise allowance for the rounding the kernel may do:

    |got - value| <= 2 u_out |value| + accumulation x magnitude

u_out is the output dtype's unit roundoff (the kernel's single store, and a little slack); magnitude is the same
op on absolute values (what a sum of products can lose to cancellation); accumulation is TF32's input rounding
(2^-10 per product) where TF32 is on, plus fp32 (fp64) summation error grown as 16 sqrt(K) unit roundoffs for K
terms (the typical growth of a blocked sum; the worst case, K u, would allow more than the values themselves at
the weight gradient's K of 387k). A wrong tile, a wrong edge or an unwritten element (outputs are NaN before a
candidate runs) is off by about a value's own size and fails. Max-pool values must match exactly.

Computed once per tuning, never in a training step that does not tune.
"""

import math

import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad


def rounding_unit(dtype: torch.dtype) -> float:
    """Unit roundoff of a dtype (0 for integers, which must match exactly)."""
    return torch.finfo(dtype).eps / 2 if dtype.is_floating_point else 0.0


def compare(got: torch.Tensor, value: torch.Tensor, allowance, what: str) -> str | None:
    """None when every element of got is within allowance of value (equal infinities and NaN where value is NaN
    agree), else a line saying how many elements are off, the worst and where."""
    if tuple(got.shape) != tuple(value.shape):
        return f"{what}: shape {tuple(got.shape)}, expected {tuple(value.shape)}"
    got = got.double()
    error = (got - value).abs()
    good = (error <= allowance) | (got == value) | (got.isnan() & value.isnan())
    if bool(good.all()):
        return None
    bad = (~good).nonzero()
    first = tuple(bad[0].tolist())
    return (
        f"{what}: {bad.shape[0]} of {got.numel()} elements off, e.g. at {first} {got[first].item():.6g} "
        f"where {value[first].item():.6g} +- {torch.as_tensor(allowance).expand_as(value)[first].item():.3g}"
    )


class Within:
    """The outputs results() reads after a candidate ran, each within its allowance of a value."""

    def __init__(self, results, expected: list[tuple[str, torch.Tensor, torch.Tensor]]):
        self.results = results  # () -> [tensors], in the order of expected
        self.expected = expected  # [(name, value in float64, allowance)]

    def judge(self) -> str | None:
        for got, (name, value, allowance) in zip(self.results(), self.expected, strict=True):
            problem = compare(got, value, allowance, name)
            if problem:
                return problem
        return None


def _accumulation(terms: int, dtype: torch.dtype, tf32: bool) -> float:
    accumulator = torch.float64 if dtype == torch.float64 else torch.float32
    summation = min(terms, 16 * math.sqrt(terms)) * rounding_unit(accumulator)
    return summation + (2.0**-10 if tf32 else 0.0)


def _allowance(value, magnitude, out_dtype, terms, in_dtype, tf32):
    return 2 * rounding_unit(out_dtype) * value.abs() + _accumulation(terms, in_dtype, tf32) * magnitude


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double()


# ---------------------------------------------------------------------------------------------
# Convolutions (conv.py, conv_grad.py)
# ---------------------------------------------------------------------------------------------


def conv(x, weight, bias, stride, padding, groups, *, relu: bool, tf32: bool, out_dtype, results) -> Within:
    """relu(conv2d(x, weight) + bias), relu and bias optional, as written by the forward kernel."""
    x64, w64, b64 = _f64(x), _f64(weight), _f64(bias)
    value = F.conv2d(x64, w64, b64, stride, padding, groups=groups)
    magnitude = F.conv2d(x64.abs(), w64.abs(), None if b64 is None else b64.abs(), stride, padding, groups=groups)
    if relu:
        value = value.clamp_min(0)
    terms = weight.shape[1] * weight.shape[2] * weight.shape[3]
    allowance = _allowance(value, magnitude, out_dtype, terms, x.dtype, tf32)
    return Within(results, [("output", value, allowance)])


def conv_weight_grad(x, masked, weight_shape, stride, padding, groups, *, tf32: bool, results) -> Within:
    """The weight gradient, [C_out, C_in_g, KH, KW], of a convolution of x that produced the masked gradient."""
    x64, g64 = _f64(x), _f64(masked)
    value = nn_grad.conv2d_weight(x64, weight_shape, g64, stride, padding, groups=groups)
    magnitude = nn_grad.conv2d_weight(x64.abs(), weight_shape, g64.abs(), stride, padding, groups=groups)
    terms = masked.shape[0] * masked.shape[2] * masked.shape[3]
    allowance = _allowance(value, magnitude, torch.float32, terms, x.dtype, tf32)
    return Within(results, [("weight gradient", value, allowance)])


def conv_input_grad(masked, weight, input_shape, stride, padding, groups, *, tf32: bool, out_dtype, results):
    g64, w64 = _f64(masked), _f64(weight)
    value = nn_grad.conv2d_input(input_shape, w64, g64, stride, padding, groups=groups)
    magnitude = nn_grad.conv2d_input(input_shape, w64.abs(), g64.abs(), stride, padding, groups=groups)
    terms = weight.shape[0] // groups * weight.shape[2] * weight.shape[3]
    allowance = _allowance(value, magnitude, out_dtype, terms, masked.dtype, tf32)
    return Within(results, [("input gradient", value, allowance)])


def relu_grad(grad_out, out, with_bias: bool, *, results) -> Within:
    """ReLU's mask (exact) and, with_bias, the bias gradient (a sum over pixels)."""
    g64 = _f64(grad_out)
    masked = torch.where(out > 0, g64, 0.0)
    expected = [("masked gradient", masked, torch.zeros(()))]
    if with_bias:
        db = masked.sum((0, 2, 3))
        magnitude = masked.abs().sum((0, 2, 3))
        terms = out.shape[0] * out.shape[2] * out.shape[3]
        expected.append(("bias gradient", db, _allowance(db, magnitude, grad_out.dtype, terms, grad_out.dtype, False)))
    return Within(results, expected)


# ---------------------------------------------------------------------------------------------
# LRN, pooling, both fused (lrn.py, pool.py, lrn_pool.py)
# ---------------------------------------------------------------------------------------------

# An LRN element costs a few dozen fp32 operations (a power by exp2 and log2 among them).
_LRN_OPERATIONS = 64


def _window_sum(v: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """sum_{j = c - before .. c + after} v[:, j], zero outside the channels."""
    padded = F.pad(v, (0, 0, 0, 0, before, after))
    return sum(padded[:, d : d + v.shape[1]] for d in range(before + after + 1))


def _lrn_scale(x64, size, alpha, k):
    return k + alpha / size * _window_sum(x64 * x64, size // 2, (size - 1) // 2)


def _lrn_grad_and_magnitude(x64, g64, size, alpha, beta, k):
    """LRN's input gradient for output gradient g, and the same sum over absolute terms."""
    scale = _lrn_scale(x64, size, alpha, k)
    direct = g64 * scale**-beta
    ratio = g64 * x64 * scale ** (-beta - 1)
    coefficient = 2 * alpha * beta / size
    # Channel c's scale holds x[i] for i in [c - size//2, c + (size-1)//2], so dx[i] sums c in the mirrored window.
    value = direct - coefficient * x64 * _window_sum(ratio, (size - 1) // 2, size // 2)
    magnitude = direct.abs() + coefficient * x64.abs() * _window_sum(ratio.abs(), (size - 1) // 2, size // 2)
    return value, magnitude


def lrn(x, size, alpha, beta, k, *, results) -> Within:
    value = F.local_response_norm(_f64(x), size, alpha, beta, k)
    allowance = (2 * rounding_unit(x.dtype) + _LRN_OPERATIONS * _acc_unit(x.dtype)) * value.abs()
    return Within(results, [("output", value, allowance)])


def lrn_grad(x, grad_out, size, alpha, beta, k, *, results) -> Within:
    value, magnitude = _lrn_grad_and_magnitude(_f64(x), _f64(grad_out), size, alpha, beta, k)
    allowance = 2 * rounding_unit(x.dtype) * value.abs() + _LRN_OPERATIONS * _acc_unit(x.dtype) * magnitude
    return Within(results, [("input gradient", value, allowance)])


def _acc_unit(dtype):
    return rounding_unit(torch.float64 if dtype == torch.float64 else torch.float32)


def window_positions_to_input(pos, input_shape, kernel, stride, padding) -> torch.Tensor:
    """Each output's chosen element as a flat index into its input plane (h * W + w), from its window position."""
    _, _, OH, OW = pos.shape
    W = input_shape[3]
    pos = pos.long()
    oh = torch.arange(OH, device=pos.device)[:, None]
    ow = torch.arange(OW, device=pos.device)[None, :]
    ih = oh * stride[0] - padding[0] + pos // kernel[1]
    iw = ow * stride[1] - padding[1] + pos % kernel[1]
    return ih * W + iw


def gather_at(plane_values: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """values[n, c, index[n, c, oh, ow]] for (N, C, H, W) values."""
    N, C = plane_values.shape[:2]
    taken = plane_values.reshape(N * C, -1).gather(1, flat_index.reshape(N * C, -1))
    return taken.reshape(flat_index.shape)


def scatter_to(flat_index: torch.Tensor, values: torch.Tensor, input_shape) -> torch.Tensor:
    """The (N, C, H, W) sum of values sent to their chosen elements (max-pool's backward), in float64."""
    N, C, H, W = input_shape
    out = torch.zeros(N * C, H * W, dtype=torch.float64, device=values.device)
    out.scatter_add_(1, flat_index.reshape(N * C, -1), values.double().reshape(N * C, -1))
    return out.reshape(N, C, H, W)


def max_pool(x, kernel, stride, padding, *, results) -> Within:
    """Pooled values exactly as F.max_pool2d's, and each saved position pointing at an element of that value."""
    value = F.max_pool2d(_f64(x), kernel, stride, padding)

    def read():
        out, pos = results()
        index = window_positions_to_input(pos, x.shape, kernel, stride, padding)
        return [out, gather_at(x, index)]

    zero = torch.zeros(())
    return Within(read, [("output", value, zero), ("the element each position points at", value, zero)])


def max_pool_grad(grad_out, pos, input_shape, kernel, stride, padding, *, results) -> Within:
    index = window_positions_to_input(pos, input_shape, kernel, stride, padding)
    value = scatter_to(index, grad_out, input_shape)
    magnitude = scatter_to(index, grad_out.abs(), input_shape)
    windows = math.ceil(kernel[0] / stride[0]) * math.ceil(kernel[1] / stride[1])
    allowance = 2 * rounding_unit(grad_out.dtype) * value.abs() + windows * _acc_unit(grad_out.dtype) * magnitude
    return Within(results, [("input gradient", value, allowance)])


def lrn_max_pool(x, size, alpha, beta, k, kernel, stride, padding, *, results) -> Within:
    """Pooled LRN within LRN's rounding, and each saved position pointing at an LRN value that is the maximum
    within that rounding (near-ties may go either way in fp32)."""
    normalized = F.local_response_norm(_f64(x), size, alpha, beta, k)
    value = F.max_pool2d(normalized, kernel, stride, padding)
    allowance = (2 * rounding_unit(x.dtype) + 2 * _LRN_OPERATIONS * _acc_unit(x.dtype)) * value.abs()

    def read():
        out, pos = results()
        index = window_positions_to_input(pos, x.shape, kernel, stride, padding)
        return [out, gather_at(normalized, index)]

    return Within(read, [("output", value, allowance), ("the element each position points at", value, allowance)])


def lrn_max_pool_grad(x, grad_out, pos, size, alpha, beta, k, kernel, stride, padding, *, results) -> Within:
    """The pooled gradient sent to the saved positions, then through LRN's backward."""
    index = window_positions_to_input(pos, x.shape, kernel, stride, padding)
    routed = scatter_to(index, grad_out, x.shape)
    value, magnitude = _lrn_grad_and_magnitude(_f64(x), routed, size, alpha, beta, k)
    _, routed_magnitude = _lrn_grad_and_magnitude(_f64(x).abs(), scatter_to(index, grad_out.abs(), x.shape), size,
                                                  alpha, beta, k)
    magnitude = torch.maximum(magnitude, routed_magnitude)
    allowance = 2 * rounding_unit(x.dtype) * value.abs() + 4 * _LRN_OPERATIONS * _acc_unit(x.dtype) * magnitude
    return Within(results, [("input gradient", value, allowance)])


# ---------------------------------------------------------------------------------------------
# Dropout and the crops (dropout.py, augment.py)
# ---------------------------------------------------------------------------------------------


class DropoutMask:
    """Dropout has no second implementation of Triton's Philox here, so a candidate must (1) keep each element
    as x * scale or zero it, (2) keep a fraction within six standard deviations of 1 - p, and (3) draw the same
    mask, bit for bit, as the first candidate (the mask is a function of the seed and each element's index only,
    whatever the tile)."""

    def __init__(self, x, p: float, scale: float, results):
        self.results = results
        self.p = p
        self.kept_value = _f64(x) * scale
        self.allowance = 2 * rounding_unit(x.dtype) * self.kept_value.abs()
        self.first_mask = None

    def judge(self) -> str | None:
        (out,) = self.results()
        out64 = out.double()
        zero = out64 == 0
        problem = compare(torch.where(zero, self.kept_value, out64), self.kept_value, self.allowance, "kept values")
        if problem:
            return problem
        kept = (~zero | (self.kept_value == 0)).double().mean().item()
        n = out.numel()
        spread = 6 * math.sqrt(self.p * (1 - self.p) / n) + 1 / n
        if abs(kept - (1 - self.p)) > spread:
            return f"kept {kept:.4f} of the elements, p={self.p} expects {1 - self.p:.4f} +- {spread:.4f}"
        if self.first_mask is None:
            self.first_mask = zero
        elif not torch.equal(zero, self.first_mask):
            return f"its mask differs from the first candidate's at {(zero != self.first_mask).sum().item()} elements"
        return None


def crop_normalize(images, boxes, shift, mean, scale, size, out_dtype, *, results) -> Within:
    """((pixel + shift) - mean) * scale for each box's crop, flipped where asked, in (M, 3, size, size)."""
    sample, top, left, flip = (boxes[:, i].long() for i in range(4))
    y = torch.arange(size, device=images.device)
    x = torch.arange(size, device=images.device)
    source_x = torch.where(flip[:, None] != 0, size - 1 - x[None, :], x[None, :])  # (M, size)
    rows = (top[:, None] + y[None, :])[:, :, None]  # (M, size, 1)
    columns = (left[:, None] + source_x)[:, None, :]  # (M, 1, size)
    pixels = images[sample[:, None, None], rows, columns].double()  # (M, size, size, 3)
    shifted = pixels + shift.double()[:, None, None, :]
    value = ((shifted - mean.double()) * scale.double()).permute(0, 3, 1, 2)
    magnitude = ((shifted.abs() + mean.double().abs()) * scale.double().abs()).permute(0, 3, 1, 2)
    allowance = 2 * rounding_unit(out_dtype) * value.abs() + 4 * rounding_unit(torch.float32) * magnitude
    return Within(results, [("crops", value, allowance)])
