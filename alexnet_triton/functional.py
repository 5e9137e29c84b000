"""Floor 1: the fused ops as PyTorch operators with autograd.

Each op is registered with ``torch.library.triton_op`` (its kernels launch through ``wrap_triton``)
and gets its backward with ``register_autograd``, so eager mode, autograd and ``torch.compile`` on
CUDA all see one operator. The public functions below validate their arguments (once, here), apply
autocast, and pick the backend: compiled Triton on CUDA, the Triton interpreter on a CPU when
TRITON_INTERPRET=1, else the plain-PyTorch math in ``reference.py``.
"""

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, fx
from torch.library import register_autograd, triton_op

from alexnet_triton import reference
from alexnet_triton.kernels import _common
from alexnet_triton.kernels import conv as conv_kernels
from alexnet_triton.kernels import dropout as dropout_kernels
from alexnet_triton.kernels import lrn as lrn_kernels
from alexnet_triton.kernels import lrn_pool as lrn_pool_kernels
from alexnet_triton.kernels import pool as pool_kernels
from alexnet_triton.validation import check_number, check_pair, check_same, check_tensor, lrn_parameters

# ---------------------------------------------------------------------------------------------
# Backend selection
# ---------------------------------------------------------------------------------------------


def backend(device: torch.device | str | Tensor) -> str:
    """Which implementation runs for tensors on ``device``: "triton" (compiled kernels, CUDA),
    "triton-interpreter" (the same kernels in Triton's CPU interpreter; TRITON_INTERPRET=1 was set
    before import) or "torch" (reference.py)."""
    if isinstance(device, Tensor):
        device = device.device
    device = torch.device(device)
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu" and _common.INTERPRET:
        return "triton-interpreter"
    return "torch"


def _autocast(device: torch.device, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Cast floating inputs to the autocast dtype, as autocast does for F.conv2d.

    A custom op is not on autocast's lists, so without this a bf16 activation would meet an fp32
    weight inside an autocast region."""
    if device.type not in ("cuda", "cpu") or not torch.is_autocast_enabled(device.type):
        return tensors
    dtype = torch.get_autocast_dtype(device.type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def _traced_as_one_call(op):
    """op, which under torch.fx symbolic tracing records itself as one call_function node instead of
    running, as torch.fx.wrap makes a function do. Unlike torch.fx.wrap, whatever name calls it
    (at.conv2d_relu, functional.conv2d_relu, an imported alias): its checks and kernels need real
    tensors, and a Proxy reaching them would stop the trace."""

    @functools.wraps(op)
    def call(*args, **kwargs):
        proxies = _proxies((args, kwargs))
        if proxies:
            return proxies[0].tracer.create_proxy("call_function", call, args, kwargs)
        return op(*args, **kwargs)

    return call


def _proxies(arguments) -> list[fx.Proxy]:
    """The torch.fx Proxies in arguments, looking inside tuples, lists and dicts."""
    found = []
    fx.node.map_aggregate(arguments, lambda value: found.append(value) if isinstance(value, fx.Proxy) else None)
    return found


# ---------------------------------------------------------------------------------------------
# conv2d + bias + ReLU
# ---------------------------------------------------------------------------------------------


@triton_op("alexnet_triton::conv2d_relu", mutates_args=())
def _conv2d_relu(
    input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int], groups: int
) -> Tensor:
    return conv_kernels.conv_relu_forward(input, weight, bias, stride, padding, groups)


@triton_op("alexnet_triton::conv2d_relu_backward", mutates_args=())
def _conv2d_relu_backward(
    grad_out: Tensor,
    out: Tensor,
    input: Tensor,
    weight: Tensor,
    stride: list[int],
    padding: list[int],
    groups: int,
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias); a gradient not asked for in output_mask is an empty tensor."""
    need_input, need_weight, need_bias = output_mask
    # Distinct empty tensors: an op's outputs may not alias each other.
    grad_input, grad_weight, grad_bias = (grad_out.new_empty(0) for _ in range(3))
    memory_format = conv_kernels.output_memory_format(input, weight)  # both gradients' layout, as in PyTorch
    # ReLU's mask applied once, the bias gradient summed on the way; both products read the masked gradient.
    masked, bias_grad = conv_kernels.relu_grad(grad_out, out, with_bias=need_bias)
    if need_input:
        grad_input = conv_kernels.conv_relu_input_grad(
            masked, weight, list(input.shape), memory_format, stride, padding, groups
        )
    if need_weight:
        grad_weight = conv_kernels.conv_relu_weight_grad(
            masked, input, list(weight.shape), memory_format, stride, padding, groups
        )
    grad_bias = grad_bias if bias_grad is None else bias_grad
    return grad_input, grad_weight, grad_bias


def _conv2d_relu_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, groups = inputs
    # Only the output is kept from the forward: ReLU's mask is out > 0. Input and weight are the
    # operands of the weight and input gradients.
    ctx.save_for_backward(input, weight, output)
    ctx.conv = (stride, padding, groups)


def _conv2d_relu_grad(ctx, grad_out):
    input, weight, out = ctx.saved_tensors
    stride, padding, groups = ctx.conv
    need = list(ctx.needs_input_grad[:3])
    grads = torch.ops.alexnet_triton.conv2d_relu_backward(grad_out, out, input, weight, stride, padding, groups, need)
    grad_input, grad_weight, grad_bias = (g if n else None for g, n in zip(grads, need, strict=True))
    return grad_input, grad_weight, grad_bias, None, None, None


register_autograd(_conv2d_relu, _conv2d_relu_grad, setup_context=_conv2d_relu_setup_context)


def _conv_padding(padding, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """Zero padding as a pair, accepting F.conv2d's "valid" and (for odd kernels, stride 1) "same"."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
            raise ValueError(f"padding='same' with an even kernel {kernel} pads unevenly; pass explicit padding")
        return (kernel[0] // 2, kernel[1] // 2)
    return check_pair("padding", padding, minimum=0)


@_traced_as_one_call
def conv2d_relu(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride=1,
    padding=0,
    groups: int = 1,
    *,
    dilation=1,
) -> Tensor:
    """``F.relu(F.conv2d(input, weight, bias, stride, padding, groups=groups))`` in one fused op.

    input: (N, C_in, H, W) or unbatched (C_in, H, W), any memory layout (channels_last is kept).
    weight: (C_out, C_in / groups, KH, KW). bias: (C_out,) or None. fp16 / bf16 / fp32 / fp64,
    all of one dtype, accumulated in fp32 (fp64 for fp64). fp32 uses TF32 on the GPU exactly when
    ``torch.backends.cudnn.allow_tf32`` lets F.conv2d do so. Dilation other than 1 is not supported
    and raises.
    """
    check_tensor("input", input, ndims=(3, 4))
    check_tensor("weight", weight, ndims=(4,))
    if bias is not None:
        check_tensor("bias", bias, ndims=(1,))
    if check_pair("dilation", dilation, minimum=1) != (1, 1):
        raise ValueError(f"dilation={dilation!r} is not supported by conv2d_relu; only dilation=1 is")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    stride = check_pair("stride", stride, minimum=1)
    kernel = (weight.shape[2], weight.shape[3])
    padding = _conv_padding(padding, kernel, stride)

    input, weight, bias = _autocast(input.device, input, weight, bias)
    check_same("weight", weight, "input", input)
    if bias is not None:
        check_same("bias", bias, "input", input)

    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    c_in, c_out = input.shape[1], weight.shape[0]
    if c_out == 0 or 0 in kernel:
        raise ValueError(f"weight must have output channels and a kernel of at least 1x1, got {tuple(weight.shape)}")
    if c_out % groups != 0:
        raise ValueError(f"weight has {c_out} output channels, which groups={groups} does not divide")
    if weight.shape[1] * groups != c_in:
        raise ValueError(
            f"input has {c_in} channels but weight expects {weight.shape[1]} per group x {groups} groups "
            f"= {weight.shape[1] * groups}"
        )
    if bias is not None and bias.shape[0] != c_out:
        raise ValueError(f"bias has {bias.shape[0]} elements but weight has {c_out} output channels")
    for axis, size, k, p in zip(("height", "width"), input.shape[2:], kernel, padding, strict=True):
        if size + 2 * p < k:
            raise ValueError(f"input {axis} {size} + 2 x padding {p} is smaller than the kernel's {k}")
    if 0 in input.shape[2:] and input.shape[0] > 0 and c_in > 0:
        raise ValueError(
            f"input {tuple(input.shape)} has an empty spatial dimension; as in F.conv2d, an input may be empty "
            "only by an empty batch or zero channels"
        )

    if c_in == 0:
        # F.conv2d's own answer, kept for its shape: (N, 0, OH, OW) for zero input channels, where the math
        # would give relu(bias) in C_out channels.
        out = F.relu(F.conv2d(input, weight, bias, stride, padding, groups=groups))
    elif backend(input.device) == "torch":
        out = reference.conv2d_relu(input, weight, bias, stride, padding, groups)
    else:
        out = torch.ops.alexnet_triton.conv2d_relu(input, weight, bias, list(stride), list(padding), groups)
    return out.squeeze(0) if unbatched else out


# ---------------------------------------------------------------------------------------------
# Local Response Normalization
# ---------------------------------------------------------------------------------------------


@triton_op("alexnet_triton::local_response_norm", mutates_args=())
def _local_response_norm(input: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return lrn_kernels.lrn_forward(input, size, alpha, beta, k)


@triton_op("alexnet_triton::local_response_norm_backward", mutates_args=())
def _local_response_norm_backward(
    grad_out: Tensor, input: Tensor, size: int, alpha: float, beta: float, k: float
) -> Tensor:
    return lrn_kernels.lrn_backward(grad_out, input, size, alpha, beta, k)


def _local_response_norm_setup_context(ctx, inputs, output):
    input, size, alpha, beta, k = inputs
    ctx.save_for_backward(input)  # the scale is recomputed from it; nothing else is kept
    ctx.lrn = (size, alpha, beta, k)


def _local_response_norm_grad(ctx, grad_out):
    (input,) = ctx.saved_tensors
    grad_input = torch.ops.alexnet_triton.local_response_norm_backward(grad_out, input, *ctx.lrn)
    return grad_input, None, None, None, None


register_autograd(_local_response_norm, _local_response_norm_grad, setup_context=_local_response_norm_setup_context)


@_traced_as_one_call
def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> Tensor:
    """Local response normalization across channels, exactly as ``F.local_response_norm``:

        out[c] = x[c] / (k + alpha / size * sum of x[j]^2 over the `size` channels around c) ** beta

    input: (N, C, *) with at least one spatial dimension, any layout; empty in, empty out. PyTorch
    (and Caffe) divide alpha by `size`; the 2012 paper does not, so the paper's LRN (k=2, n=5, alpha=1e-4, beta=0.75) is
    ``local_response_norm(x, size=5, alpha=5e-4, beta=0.75, k=2.0)``. alpha, beta and k are applied in
    fp32 (fp64 for fp64 input); fp16 / bf16 inputs are computed in fp32.

    Saved for backward: the input only (the scale is recomputed), so 0 extra bytes per element
    whenever the input is kept anyway.
    """
    check_tensor("input", input, min_ndim=3)
    size, alpha, beta, k = lrn_parameters(size, alpha, beta, k)

    if backend(input.device) == "torch":
        return reference.local_response_norm(input, size, alpha, beta, k)
    # The kernel sees (N, C, H, W): 3-D input gains H = 1, 5-D and up fold their trailing dimensions.
    if input.dim() == 3:
        x = input.unsqueeze(2)
    elif input.dim() > 4:
        x = input.flatten(3)
    else:
        x = input
    out = torch.ops.alexnet_triton.local_response_norm(x, size, alpha, beta, k)
    return out.reshape(input.shape)


# ---------------------------------------------------------------------------------------------
# Max-pool
# ---------------------------------------------------------------------------------------------


@triton_op("alexnet_triton::max_pool2d", mutates_args=())
def _max_pool2d(input: Tensor, kernel_size: list[int], stride: list[int], padding: list[int]) -> tuple[Tensor, Tensor]:
    """(output, window position of each maximum)."""
    return pool_kernels.max_pool_forward(input, kernel_size, stride, padding)


@triton_op("alexnet_triton::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward(
    grad_out: Tensor,
    positions: Tensor,
    input_shape: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> Tensor:
    return pool_kernels.max_pool_backward(grad_out, positions, input_shape, kernel_size, stride, padding)


def _max_pool2d_setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding = inputs
    _, positions = output
    ctx.mark_non_differentiable(positions)
    ctx.save_for_backward(positions)  # one byte per output element; nothing of the input but its shape
    ctx.pool = (list(input.shape), kernel_size, stride, padding)


def _max_pool2d_grad(ctx, grad_out, _grad_positions):
    (positions,) = ctx.saved_tensors
    grad_input = torch.ops.alexnet_triton.max_pool2d_backward(grad_out, positions, *ctx.pool)
    return grad_input, None, None, None


register_autograd(_max_pool2d, _max_pool2d_grad, setup_context=_max_pool2d_setup_context)


@_traced_as_one_call
def max_pool2d(
    input: Tensor,
    kernel_size,
    stride=None,
    padding=0,
    *,
    dilation=1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor:
    """2-D max-pool, exactly as ``F.max_pool2d`` (floor mode): padding never wins, NaN propagates, ties
    go to the first maximum. AlexNet's overlapping pool is ``max_pool2d(x, 3, 2)``.

    input: (N, C, H, W) or unbatched (C, H, W), any layout (channels_last is kept). dilation,
    ceil_mode and return_indices exist only to refuse what this op does not compute.

    Saved for backward: the position of each maximum inside its window, one byte per output element
    (PyTorch saves an int64 index: 8 bytes), and no part of the input.
    """
    check_tensor("input", input, ndims=(3, 4))
    if check_pair("dilation", dilation, minimum=1) != (1, 1):
        raise ValueError(f"dilation={dilation!r} is not supported by max_pool2d; only dilation=1 is")
    if ceil_mode:
        raise ValueError("ceil_mode=True is not supported by max_pool2d; only floor mode is")
    if return_indices:
        raise ValueError("return_indices=True is not supported by max_pool2d (it saves 1-byte window positions)")
    kernel = check_pair("kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None or stride == [] else check_pair("stride", stride, minimum=1)
    padding = check_pair("padding", padding, minimum=0)
    for axis, k, p in zip(("height", "width"), kernel, padding, strict=True):
        if p > k // 2:
            raise ValueError(f"padding {p} must be at most half the kernel's {axis} {k}")
    if min(input.shape[-3:]) == 0:  # F.max_pool2d's rule: of a 4-D input only the batch may be empty
        raise ValueError(
            f"input has an empty channel or spatial dimension: shape {tuple(input.shape)}; only the batch may be empty"
        )
    for axis, size, k, p in zip(("height", "width"), input.shape[-2:], kernel, padding, strict=True):
        if size + 2 * p < k:
            raise ValueError(f"input {axis} {size} + 2 x padding {p} is smaller than the kernel's {k}")

    if backend(input.device) == "torch":
        return reference.max_pool2d(input, kernel, stride, padding)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    out, _ = torch.ops.alexnet_triton.max_pool2d(x, list(kernel), list(stride), list(padding))
    return out.squeeze(0) if unbatched else out


# ---------------------------------------------------------------------------------------------
# LRN + max-pool, fused
# ---------------------------------------------------------------------------------------------


@triton_op("alexnet_triton::lrn_max_pool2d", mutates_args=())
def _lrn_max_pool2d(
    input: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> tuple[Tensor, Tensor]:
    """(output, window position of each maximum)."""
    return lrn_pool_kernels.lrn_max_pool_forward(input, size, alpha, beta, k, kernel_size, stride, padding)


@triton_op("alexnet_triton::lrn_max_pool2d_backward", mutates_args=())
def _lrn_max_pool2d_backward(
    grad_out: Tensor,
    input: Tensor,
    positions: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> Tensor:
    return lrn_pool_kernels.lrn_max_pool_backward(
        grad_out, input, positions, size, alpha, beta, k, kernel_size, stride, padding
    )


def _lrn_max_pool2d_setup_context(ctx, inputs, output):
    input, *arguments = inputs
    _, positions = output
    ctx.mark_non_differentiable(positions)
    # The input (LRN's scale is recomputed from it) and one byte per output element; nothing else.
    ctx.save_for_backward(input, positions)
    ctx.lrn_pool = arguments


def _lrn_max_pool2d_grad(ctx, grad_out, _grad_positions):
    input, positions = ctx.saved_tensors
    grad_input = torch.ops.alexnet_triton.lrn_max_pool2d_backward(grad_out, input, positions, *ctx.lrn_pool)
    return grad_input, *([None] * len(ctx.lrn_pool))


register_autograd(_lrn_max_pool2d, _lrn_max_pool2d_grad, setup_context=_lrn_max_pool2d_setup_context)


def check_pool_window(kernel_size, stride=None, padding=0) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """A max-pool's (kernel, stride, padding) as pairs, checked as max_pool2d checks them (stride None:
    the kernel). The fused LRN + pool op and its module share this check."""
    kernel = check_pair("kernel_size", kernel_size, minimum=1)
    stride = kernel if stride is None or stride == [] else check_pair("stride", stride, minimum=1)
    padding = check_pair("padding", padding, minimum=0)
    for axis, k, p in zip(("height", "width"), kernel, padding, strict=True):
        if p > k // 2:
            raise ValueError(f"padding {p} must be at most half the kernel's {axis} {k}")
    return kernel, stride, padding


@_traced_as_one_call
def lrn_max_pool2d(
    input: Tensor,
    size: int,
    kernel_size,
    stride=None,
    padding=0,
    *,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
) -> Tensor:
    """``F.max_pool2d(F.local_response_norm(input, size, alpha, beta, k), kernel_size, stride, padding)``
    in one pass each way: the full-size LRN map is never written, nor its gradient.

    LRN as :func:`local_response_norm` (PyTorch's convention: alpha divided by size); the pool as
    :func:`max_pool2d` (floor mode, padding never wins, NaN propagates, ties go to the first maximum,
    compared at the input's precision as the separate ops compare them). AlexNet's layers 1 and 2 run
    ``lrn_max_pool2d(x, 5, 3, 2, alpha=5e-4, beta=0.75, k=2.0)``.

    input: (N, C, H, W), any layout (channels_last is kept); only the batch may be empty. A 3-D input is
    refused: F.local_response_norm reads it as (N, C, L) and F.max_pool2d as (C, H, W).

    Saved for backward: the input (the LRN's scale is recomputed from it, so 0 extra bytes when the
    input is kept anyway) and the position of each maximum in its window, one byte per output element.
    """
    check_tensor("input", input, min_ndim=3)
    if input.dim() != 4:
        raise ValueError(
            f"input must be 4-D (N, C, H, W), got shape {tuple(input.shape)}: for other ranks "
            "F.local_response_norm and F.max_pool2d disagree on which dimension holds the channels"
        )
    size, alpha, beta, k = lrn_parameters(size, alpha, beta, k)
    kernel, stride, padding = check_pool_window(kernel_size, stride, padding)
    if min(input.shape[1:]) == 0:  # F.max_pool2d's rule: of a 4-D input only the batch may be empty
        raise ValueError(
            f"input has an empty channel or spatial dimension: shape {tuple(input.shape)}; only the batch may be empty"
        )
    for axis, extent, kernel_extent, p in zip(("height", "width"), input.shape[2:], kernel, padding, strict=True):
        if extent + 2 * p < kernel_extent:
            raise ValueError(f"input {axis} {extent} + 2 x padding {p} is smaller than the kernel's {kernel_extent}")

    if backend(input.device) == "torch":
        return reference.lrn_max_pool2d(input, size, kernel, stride, padding, alpha=alpha, beta=beta, k=k)
    out, _ = torch.ops.alexnet_triton.lrn_max_pool2d(
        input, size, alpha, beta, k, list(kernel), list(stride), list(padding)
    )
    return out


# ---------------------------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------------------------


@triton_op("alexnet_triton::dropout", mutates_args=())
def _dropout(input: Tensor, seed: Tensor, p: float, channels_last: bool) -> Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return dropout_kernels.dropout(input, seed, p, memory_format)


def _dropout_setup_context(ctx, inputs, output):
    _, seed, p, channels_last = inputs
    ctx.save_for_backward(seed)  # 8 bytes: the mask is regenerated from it
    ctx.dropout = (p, channels_last)


def _dropout_grad(ctx, grad_out):
    (seed,) = ctx.saved_tensors
    # The derivative of dropout is dropout with the same mask: the same op, the same seed.
    return torch.ops.alexnet_triton.dropout(grad_out, seed, *ctx.dropout), None, None, None


register_autograd(_dropout, _dropout_grad, setup_context=_dropout_setup_context)


@_traced_as_one_call
def dropout(input: Tensor, p: float = 0.5, training: bool = True, *, seed: int | None = None) -> Tensor:
    """Dropout with ``F.dropout`` semantics and no stored mask.

    Training: each element is zeroed with probability p and the kept ones are scaled by 1 / (1 - p);
    p = 0 returns the input's values, p = 1 zeros. Not training: the input itself. The mask comes
    from Triton's Philox generator keyed by ``seed`` and each element's position in memory, and the
    backward regenerates it: 8 bytes saved per call instead of a byte per element. With seed=None the
    seed is drawn from PyTorch's generator for the input's device, so ``torch.manual_seed`` makes runs
    repeatable; the same seed gives the same mask for the same shape and layout.
    """
    check_tensor("input", input)
    p = check_number("p", p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
    if input.numel() > dropout_kernels.MAX_ELEMENTS:
        raise ValueError(f"input has {input.numel()} elements; dropout supports up to {dropout_kernels.MAX_ELEMENTS}")

    if not training:
        return input
    if p == 0.0:
        return input.clone()
    if backend(input.device) == "torch":
        return reference.dropout(input, p, training, seed=seed)
    if seed is None:
        seed_tensor = torch.randint(0, 2**62, (), device=input.device, dtype=torch.int64)
    else:
        seed_tensor = torch.full((), seed, device=input.device, dtype=torch.int64)
    channels_last = _common.suggest_memory_format(input) == torch.channels_last
    return torch.ops.alexnet_triton.dropout(input, seed_tensor, p, channels_last)
