"""Max-pooling as one operator with autograd, saving 1-byte window positions: at.max_pool2d."""

from torch import Tensor

from alexnet_triton import reference
from alexnet_triton.functional.dispatch import backend, fused_op, traced_as_one_call
from alexnet_triton.kernels import pool as pool_kernels
from alexnet_triton.validation import check_pair, check_pool_window, check_tensor


def _max_pool2d_kernels(
    input: Tensor, kernel_size: list[int], stride: list[int], padding: list[int]
) -> tuple[Tensor, Tensor]:
    """(output, window position of each maximum)."""
    return pool_kernels.max_pool_forward(input, kernel_size, stride, padding)


def _max_pool2d_backward_kernels(
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


def _max_pool2d_grad(ctx, grad_out, _grad_positions, *, backward):
    (positions,) = ctx.saved_tensors
    grad_input = backward(grad_out, positions, *ctx.pool)
    return grad_input, None, None, None


_max_pool2d = fused_op(
    "max_pool2d", _max_pool2d_kernels, _max_pool2d_setup_context, _max_pool2d_grad, _max_pool2d_backward_kernels
)


@traced_as_one_call
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
    kernel, stride, padding = check_pool_window(kernel_size, stride, padding)
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
    out, _ = _max_pool2d(x, list(kernel), list(stride), list(padding))
    return out.squeeze(0) if unbatched else out
