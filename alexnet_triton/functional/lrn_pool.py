"""LRN then max-pool in one pass each way, as one operator with autograd: at.lrn_max_pool2d."""

from torch import Tensor

from alexnet_triton import reference
from alexnet_triton.functional.dispatch import backend, fused_op, traced_as_one_call
from alexnet_triton.kernels import lrn_pool as lrn_pool_kernels
from alexnet_triton.validation import check_pool_window, check_tensor, lrn_parameters


def _lrn_max_pool2d_kernels(
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


def _lrn_max_pool2d_backward_kernels(
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


def _lrn_max_pool2d_grad(ctx, grad_out, _grad_positions, *, backward):
    input, positions = ctx.saved_tensors
    grad_input = backward(grad_out, input, positions, *ctx.lrn_pool)
    return grad_input, *([None] * len(ctx.lrn_pool))


_lrn_max_pool2d = fused_op(
    "lrn_max_pool2d",
    _lrn_max_pool2d_kernels,
    _lrn_max_pool2d_setup_context,
    _lrn_max_pool2d_grad,
    _lrn_max_pool2d_backward_kernels,
)


@traced_as_one_call
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
    out, _ = _lrn_max_pool2d(input, size, alpha, beta, k, list(kernel), list(stride), list(padding))
    return out
