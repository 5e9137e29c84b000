"""What a tuning candidate must produce: the trusted answer each launcher hands the autotuner (autotune.py).

Each expectation is PyTorch's own op (F.conv2d, its gradients, F.local_response_norm, F.max_pool2d) in float64
on the same device, at the tuning inputs, with an elementwise allowance for the rounding the kernel may do:

    |got - value| <= 2 u_out |value| + accumulation x magnitude

u_out is the output dtype's unit roundoff (the kernel's single store, and a little slack); magnitude is the same
op on absolute values (what a sum of products can lose to cancellation); accumulation is TF32's input truncation
where TF32 is on (Triton's TF32 drops the low 13 bits of each operand, so a product may lose 2^-9 of itself), plus
fp32 (fp64) summation error grown as 16 sqrt(K) unit roundoffs for K terms (the typical growth of a blocked sum;
the worst case, K u, would allow more than the values themselves at the weight gradient's K of 387k). A wrong
tile, a wrong edge or an unwritten element (outputs are NaN before a candidate runs) is off by about a value's own
size and fails. Max-pool values must match exactly, and saved positions must point inside their window.

Long reductions get a second, relative-norm test (||got - value|| / ||value|| under 4 u_out + 4 sqrt(K) u_acc,
plus 2^-8 for TF32): a dropped loop trip or split of a 387k-term sum moves every element a little, which the
elementwise allowance of a sum that long cannot see.

References are computed a slice of the batch at a time (REFERENCE_ELEMENTS per float64 tensor), so tuning at a
large batch does not hold float64 copies of whole activations. Computed once per tuning, never in a training step
that does not tune.
"""

import math

import torch
import torch.nn.functional as F
from torch.nn import grad as nn_grad

# Elements of one float64 tensor in a reference (128 MiB); a reference holds up to about sixteen at once.
REFERENCE_ELEMENTS = 2**24


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


class Norm:
    """||got - value|| / ||value|| summed over the slices of a batch (elements that agree exactly, NaN with NaN
    included, add nothing)."""

    def __init__(self):
        self.error = self.scale = 0.0

    def add(self, got: torch.Tensor, value: torch.Tensor) -> None:
        got = got.double()
        same = (got == value) | (got.isnan() & value.isnan())
        self.error += torch.where(same, 0.0, got - value).square().sum().item()
        self.scale += torch.where(value.isfinite(), value, 0.0).square().sum().item()

    def problem(self, tolerance: float | None, what: str) -> str | None:
        if tolerance is None:
            return None
        relative = math.sqrt(self.error) / max(math.sqrt(self.scale), torch.finfo(torch.float64).tiny)
        if relative <= tolerance:
            return None
        return f"{what}: relative error {relative:.3g} over the whole output, past the {tolerance:.3g} rounding allows"


class Whole:
    """One output, compared whole: value and allowance computed up front (small: a weight or bias gradient)."""

    def __init__(self, name: str, value, allowance, norm_tolerance: float | None = None):
        self.name, self.value, self.allowance, self.norm_tolerance = name, value, allowance, norm_tolerance

    def judge(self, got: torch.Tensor) -> str | None:
        problem = compare(got, self.value, self.allowance, self.name)
        if problem is None and self.norm_tolerance is not None:
            norm = Norm()
            norm.add(got, self.value)
            problem = norm.problem(self.norm_tolerance, self.name)
        return problem


def batch_slices(rows: int, per_row: int):
    """Slices of a batch of `rows` images, each holding at most REFERENCE_ELEMENTS of `per_row` per image (one image
    at least)."""
    step = max(1, REFERENCE_ELEMENTS // max(per_row, 1))
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


class PerImage:
    """One output whose images (first dimension) are independent: reference(rows, got[rows]) -> (what to compare,
    value, allowance) for a slice of rows at a time."""

    def __init__(self, name: str, reference, rows: int, per_row: int, norm_tolerance: float | None = None):
        self.name, self.reference, self.norm_tolerance = name, reference, norm_tolerance
        self.slices = batch_slices(rows, per_row)

    def judge(self, got: torch.Tensor) -> str | None:
        norm = Norm()
        for rows in self.slices:
            compared, value, allowance = self.reference(rows, got[rows])
            problem = compare(compared, value, allowance, self.name)
            if problem:
                return problem.replace(" at (", f" at (image {rows.start} +", 1) if rows.start else problem
            norm.add(compared, value)
        return norm.problem(self.norm_tolerance, self.name)


class Within:
    """The outputs results() reads after a candidate ran, each judged by its check (Whole or PerImage)."""

    def __init__(self, results, checks: list):
        self.results = results  # () -> [tensors], in the order of checks
        self.checks = checks

    def judge(self) -> str | None:
        for got, check in zip(self.results(), self.checks, strict=True):
            problem = check.judge(got)
            if problem:
                return problem
        return None


def _acc_unit(dtype):
    return rounding_unit(torch.float64 if dtype == torch.float64 else torch.float32)


# Triton's TF32 truncates each operand to 10 mantissa bits: a product may lose up to 2^-9 of itself.
TF32_PRODUCT = 2.0**-9


def _accumulation(terms: int, dtype: torch.dtype, tf32: bool) -> float:
    return min(terms, 16 * math.sqrt(terms)) * _acc_unit(dtype) + (TF32_PRODUCT if tf32 else 0.0)


def _allowance(value, magnitude, out_dtype, terms, in_dtype, tf32):
    return 2 * rounding_unit(out_dtype) * value.abs() + _accumulation(terms, in_dtype, tf32) * magnitude


def _norm_tolerance(out_dtype, terms, in_dtype, tf32) -> float:
    return 4 * rounding_unit(out_dtype) + 4 * math.sqrt(terms) * _acc_unit(in_dtype) + (2.0**-8 if tf32 else 0.0)


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().double()


def _per_image(t: torch.Tensor) -> int:
    return t[0].numel() if t.shape[0] else 1


# ---------------------------------------------------------------------------------------------
# Convolutions (conv.py, conv_grad.py)
# ---------------------------------------------------------------------------------------------


def conv(x, weight, bias, stride, padding, groups, *, relu: bool, tf32: bool, out_dtype, results) -> Within:
    """relu(conv2d(x, weight) + bias), relu and bias optional, as written by the forward kernel."""
    w64, b64 = _f64(weight), _f64(bias)
    terms = weight.shape[1] * weight.shape[2] * weight.shape[3]

    def reference(rows, got):
        x64 = _f64(x[rows])
        value = F.conv2d(x64, w64, b64, stride, padding, groups=groups)
        magnitude = F.conv2d(x64.abs(), w64.abs(), None if b64 is None else b64.abs(), stride, padding, groups=groups)
        if relu:
            value = value.clamp_min(0)
        return got, value, _allowance(value, magnitude, out_dtype, terms, x.dtype, tf32)

    per_row = _per_image(x) + weight.shape[0] * (x.shape[2] + 2 * padding[0]) * (x.shape[3] + 2 * padding[1])
    tolerance = _norm_tolerance(out_dtype, terms, x.dtype, tf32)
    return Within(results, [PerImage("output", reference, x.shape[0], per_row, tolerance)])


def conv_weight_grad(x, masked, weight_shape, stride, padding, groups, *, tf32: bool, out_dtype, results) -> Within:
    """The weight gradient, [C_out, C_in_g, KH, KW], of a convolution of x that produced the masked gradient: summed
    over slices of the batch in float64, as the kernel writes it in out_dtype."""
    value = magnitude = 0.0
    for rows in batch_slices(x.shape[0], _per_image(x) + _per_image(masked)):
        x64, g64 = _f64(x[rows]), _f64(masked[rows])
        value = value + nn_grad.conv2d_weight(x64, weight_shape, g64, stride, padding, groups=groups)
        magnitude = magnitude + nn_grad.conv2d_weight(
            x64.abs(), weight_shape, g64.abs(), stride, padding, groups=groups
        )
    terms = masked.shape[0] * masked.shape[2] * masked.shape[3]
    allowance = _allowance(value, magnitude, out_dtype, terms, x.dtype, tf32)
    tolerance = _norm_tolerance(out_dtype, terms, x.dtype, tf32)
    return Within(results, [Whole("weight gradient", value, allowance, tolerance)])


def conv_input_grad(masked, weight, input_shape, stride, padding, groups, *, tf32: bool, out_dtype, results):
    w64 = _f64(weight)
    terms = weight.shape[0] // groups * weight.shape[2] * weight.shape[3]

    def reference(rows, got):
        g64 = _f64(masked[rows])
        shape = [g64.shape[0], *input_shape[1:]]
        value = nn_grad.conv2d_input(shape, w64, g64, stride, padding, groups=groups)
        magnitude = nn_grad.conv2d_input(shape, w64.abs(), g64.abs(), stride, padding, groups=groups)
        return got, value, _allowance(value, magnitude, out_dtype, terms, masked.dtype, tf32)

    per_row = _per_image(masked) + math.prod(input_shape[1:])
    tolerance = _norm_tolerance(out_dtype, terms, masked.dtype, tf32)
    return Within(results, [PerImage("input gradient", reference, input_shape[0], per_row, tolerance)])


def relu_grad(grad_out, out, with_bias: bool, *, results) -> Within:
    """ReLU's mask (exact) and, with_bias, the bias gradient (a sum over pixels)."""

    def masked(rows, got):
        return got, torch.where(out[rows] <= 0, 0.0, _f64(grad_out[rows])), torch.zeros((), device=out.device)

    checks = [PerImage("masked gradient", masked, out.shape[0], 2 * _per_image(out))]
    if with_bias:
        db = magnitude = 0.0
        for rows in batch_slices(out.shape[0], _per_image(out)):
            kept = torch.where(out[rows] <= 0, 0.0, _f64(grad_out[rows]))  # a NaN output passes, as in PyTorch
            db, magnitude = db + kept.sum((0, 2, 3)), magnitude + kept.abs().sum((0, 2, 3))
        terms = out.shape[0] * out.shape[2] * out.shape[3]
        allowance = _allowance(db, magnitude, grad_out.dtype, terms, grad_out.dtype, False)
        checks.append(
            Whole("bias gradient", db, allowance, _norm_tolerance(grad_out.dtype, terms, grad_out.dtype, False))
        )
    return Within(results, checks)


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
    def reference(rows, got):
        value = F.local_response_norm(_f64(x[rows]), size, alpha, beta, k)
        return got, value, (2 * rounding_unit(x.dtype) + _LRN_OPERATIONS * _acc_unit(x.dtype)) * value.abs()

    return Within(results, [PerImage("output", reference, x.shape[0], 4 * _per_image(x))])


def lrn_grad(x, grad_out, size, alpha, beta, k, *, results) -> Within:
    def reference(rows, got):
        value, magnitude = _lrn_grad_and_magnitude(_f64(x[rows]), _f64(grad_out[rows]), size, alpha, beta, k)
        return got, value, 2 * rounding_unit(x.dtype) * value.abs() + _LRN_OPERATIONS * _acc_unit(x.dtype) * magnitude

    return Within(results, [PerImage("input gradient", reference, x.shape[0], 8 * _per_image(x))])


def chosen_elements(pos, input_shape, kernel, stride, padding) -> torch.Tensor:
    """Each output's chosen element as a flat index into its input plane (h * W + w), from its window position;
    ValueError when a position lies outside its window or points outside the image (a wrong kernel's), so that
    nothing indexes out of bounds on the device."""
    _, _, OH, OW = pos.shape
    H, W = input_shape[2], input_shape[3]
    pos = pos.long()
    if bool(((pos < 0) | (pos >= kernel[0] * kernel[1])).any()):
        raise ValueError("a saved position lies outside its window")
    oh = torch.arange(OH, device=pos.device)[:, None]
    ow = torch.arange(OW, device=pos.device)[None, :]
    ih = oh * stride[0] - padding[0] + pos // kernel[1]
    iw = ow * stride[1] - padding[1] + pos % kernel[1]
    if bool(((ih < 0) | (ih >= H) | (iw < 0) | (iw >= W)).any()):
        raise ValueError("a saved position points outside the image")
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
    zero = torch.zeros((), device=x.device)

    def values(rows, got):
        return got, F.max_pool2d(_f64(x[rows]), kernel, stride, padding), zero

    def positions(rows, got):
        chosen = gather_at(x[rows], chosen_elements(got, x[rows].shape, kernel, stride, padding))
        return chosen, F.max_pool2d(_f64(x[rows]), kernel, stride, padding), zero

    n, per_row = x.shape[0], 4 * _per_image(x)
    checks = [
        PerImage("output", values, n, per_row),
        PerImage("the element each position points at", positions, n, per_row),
    ]
    return Within(results, checks)


def max_pool_grad(grad_out, pos, input_shape, kernel, stride, padding, *, results) -> Within:
    windows = math.ceil(kernel[0] / stride[0]) * math.ceil(kernel[1] / stride[1])

    def reference(rows, got):
        shape = [got.shape[0], *input_shape[1:]]
        index = chosen_elements(pos[rows], shape, kernel, stride, padding)
        value = scatter_to(index, grad_out[rows], shape)
        magnitude = scatter_to(index, grad_out[rows].abs(), shape)
        unit = _acc_unit(grad_out.dtype)
        return got, value, 2 * rounding_unit(grad_out.dtype) * value.abs() + windows * unit * magnitude

    per_row = 4 * math.prod(input_shape[1:])
    return Within(results, [PerImage("input gradient", reference, input_shape[0], per_row)])


def lrn_max_pool(x, size, alpha, beta, k, kernel, stride, padding, *, results) -> Within:
    """Pooled LRN within LRN's rounding, and each saved position pointing at an LRN value that is the maximum
    within that rounding (near-ties may go either way in fp32)."""
    unit = 2 * rounding_unit(x.dtype) + 2 * _LRN_OPERATIONS * _acc_unit(x.dtype)

    def values(rows, got):
        value = F.max_pool2d(F.local_response_norm(_f64(x[rows]), size, alpha, beta, k), kernel, stride, padding)
        return got, value, unit * value.abs()

    def positions(rows, got):
        normalized = F.local_response_norm(_f64(x[rows]), size, alpha, beta, k)
        value = F.max_pool2d(normalized, kernel, stride, padding)
        chosen = gather_at(normalized, chosen_elements(got, x[rows].shape, kernel, stride, padding))
        return chosen, value, unit * value.abs()

    n, per_row = x.shape[0], 6 * _per_image(x)
    checks = [
        PerImage("output", values, n, per_row),
        PerImage("the element each position points at", positions, n, per_row),
    ]
    return Within(results, checks)


def lrn_max_pool_grad(x, grad_out, pos, size, alpha, beta, k, kernel, stride, padding, *, results) -> Within:
    """The pooled gradient sent to the saved positions, then through LRN's backward."""

    def reference(rows, got):
        x64 = _f64(x[rows])
        index = chosen_elements(pos[rows], x64.shape, kernel, stride, padding)
        value, magnitude = _lrn_grad_and_magnitude(
            x64, scatter_to(index, grad_out[rows], x64.shape), size, alpha, beta, k
        )
        _, routed = _lrn_grad_and_magnitude(
            x64.abs(), scatter_to(index, grad_out[rows].abs(), x64.shape), size, alpha, beta, k
        )
        magnitude = torch.maximum(magnitude, routed)
        unit = 4 * _LRN_OPERATIONS * _acc_unit(x.dtype)
        return got, value, 2 * rounding_unit(x.dtype) * value.abs() + unit * magnitude

    return Within(results, [PerImage("input gradient", reference, x.shape[0], 16 * _per_image(x))])


# ---------------------------------------------------------------------------------------------
# Dropout and the crops (dropout.py, augment.py)
# ---------------------------------------------------------------------------------------------


class DropoutMask:
    """Dropout has no second implementation of Triton's Philox here, so a candidate must (1) keep each element
    as x * scale or zero it, (2) keep a fraction of the nonzero elements within six standard deviations of 1 - p
    (zeros, e.g. ReLU's, look the same kept or dropped), and (3) draw the same mask, bit for bit, as the first
    candidate (the mask is a function of the seed and each element's index only, whatever the tile)."""

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
        nonzero = self.kept_value != 0
        n = int(nonzero.sum().item())
        if n:
            kept = (~zero & nonzero).sum().item() / n
            spread = 6 * math.sqrt(self.p * (1 - self.p) / n) + 1 / n
            if abs(kept - (1 - self.p)) > spread:
                return f"kept {kept:.4f} of the nonzero elements, p={self.p} expects {1 - self.p:.4f} +- {spread:.4f}"
        dropped = zero & nonzero
        if self.first_mask is None:
            self.first_mask = dropped
        elif not torch.equal(dropped, self.first_mask):
            return (
                f"its mask differs from the first candidate's at {(dropped != self.first_mask).sum().item()} elements"
            )
        return None


def crop_normalize(images, boxes, shift, mean, scale, size, out_dtype, table=None, *, results) -> Within:
    """((pixel + shift) - mean) * scale for each box's crop, flipped where asked, in (M, 3, size, size); with a
    resampling table (starts, weights), of the images rescaled by it (augment.resampling), rounded to whole grey
    levels after each pass as the kernel does."""
    x = torch.arange(size, device=images.device)

    def reference(rows, got):
        sample, top, left, flip = (boxes[rows, i].long() for i in range(4))
        source = images if table is None else _resampled(images, sample, *table)
        sample = sample if table is None else torch.arange(len(sample), device=images.device)
        source_x = torch.where(flip[:, None] != 0, size - 1 - x[None, :], x[None, :])  # (M, size)
        ys = (top[:, None] + x[None, :])[:, :, None]  # (M, size, 1)
        xs = (left[:, None] + source_x)[:, None, :]  # (M, 1, size)
        pixels = source[sample[:, None, None], ys, xs].double()  # (M, size, size, 3)
        shifted = pixels + shift[rows].double()[:, None, None, :]
        value = ((shifted - mean.double()) * scale.double()).permute(0, 3, 1, 2)
        magnitude = ((shifted.abs() + mean.double().abs()) * scale.double().abs()).permute(0, 3, 1, 2)
        allowance = 2 * rounding_unit(out_dtype) * value.abs() + 4 * rounding_unit(torch.float32) * magnitude
        if table is not None:  # fp32 sums against these float64 ones may round a half the other way: a grey level,
            # itself rounded to the output dtype where the value is near 0 and its own allowance nil
            allowance = allowance + scale.double().abs()[:, None, None] * (1 + 2 * rounding_unit(out_dtype))
        return got, value, allowance

    per_crop = 8 * 3 * size * size + (3 * 3 * images.shape[1] ** 2 if table is not None else 0)  # + its resampling
    return Within(results, [PerImage("crops", reference, boxes.shape[0], per_crop)])


def resampling_matrix(starts: torch.Tensor, weights: torch.Tensor, source: int) -> torch.Tensor:
    """(R, S) float64: row i holds target pixel i's weights on the source pixels (augment.resampling's table)."""
    matrix = torch.zeros(len(starts), source, dtype=torch.float64, device=weights.device)
    columns = (starts.long()[:, None] + torch.arange(weights.shape[1], device=weights.device)).clamp(max=source - 1)
    return matrix.scatter_add_(1, columns, weights.double())


def _resampled(images, samples, starts, weights):
    """(M, R, R, 3) float64: images[samples] rescaled by the table, along rows then columns, each pass rounded to
    whole grey levels (halves up) as a uint8 resize stores them."""
    matrix = resampling_matrix(starts, weights, images.shape[1])
    pixels = images[samples].double()  # (M, S, S, 3)
    along_rows = torch.einsum("xs,mysc->myxc", matrix, pixels).add(0.5).floor().clamp(0, 255)
    return torch.einsum("ys,msxc->myxc", matrix, along_rows).add(0.5).floor().clamp(0, 255)


def space_to_depth_reference(x, kernel, stride, padding, out) -> torch.Tensor:
    """kernels/space_to_depth.py's blocked input by PyTorch's pad and a rearranging copy: zero padding to whole
    blocks (cropping the rows and columns no window reads, then padding them back with zeros), channel (dy, dx, c)."""
    N, C, H, W = x.shape
    (KH, KW), (SH, SW), (PH, PW), (OH, OW) = kernel, stride, padding, out
    BH, BW = OH + (KH + SH - 1) // SH - 1, OW + (KW + SW - 1) // SW - 1
    read_rows, read_columns = (OH - 1) * SH + KH, (OW - 1) * SW + KW
    nhwc = F.pad(x.permute(0, 2, 3, 1), (0, 0, PW, read_columns - PW - W, PH, read_rows - PH - H))
    padded = F.pad(nhwc, (0, 0, 0, BW * SW - read_columns, 0, BH * SH - read_rows))
    blocks = padded.reshape(N, BH, SH, BW, SW, C).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(N, BH, BW, SH * SW * C).permute(0, 3, 1, 2)


def space_to_depth_weight(weight: torch.Tensor, stride) -> torch.Tensor:
    """[C_out, C, KH, KW] -> [C_out, SH*SW*C, ceil(KH / SH), ceil(KW / SW)], channels_last, zero-padded to whole
    blocks, channel (dy, dx, c) as kernels/space_to_depth.py cuts the input."""
    C_out, C, KH, KW = weight.shape
    SH, SW = stride
    KBH, KBW = (KH + SH - 1) // SH, (KW + SW - 1) // SW
    padded = F.pad(weight.permute(0, 2, 3, 1), (0, 0, 0, KBW * SW - KW, 0, KBH * SH - KH))
    blocks = padded.reshape(C_out, KBH, SH, KBW, SW, C).permute(0, 1, 3, 2, 4, 5)
    return blocks.reshape(C_out, KBH, KBW, SH * SW * C).permute(0, 3, 1, 2)


def space_to_depth(x, kernel, stride, padding, out, *, results) -> Within:
    """The blocked input, exactly (a copy), a slice of the batch at a time."""

    def reference(rows, got):
        value = space_to_depth_reference(x[rows], kernel, stride, padding, out)
        return got, value, torch.zeros((), device=x.device)

    per_image = x[0].numel() * 2 * stride[0] * stride[1]  # the blocked image: about the image, padded
    return Within(results, [PerImage("blocked input", reference, x.shape[0], per_image)])
