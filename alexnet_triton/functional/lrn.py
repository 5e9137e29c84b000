"""Local response normalization across channels as one operator with autograd: at.local_response_norm."""

from torch import Tensor

from alexnet_triton import reference
from alexnet_triton.functional.dispatch import backend, fused_op, traced_as_one_call
from alexnet_triton.kernels import lrn as lrn_kernels
from alexnet_triton.validation import check_tensor, lrn_parameters


def _local_response_norm_kernels(input: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    return lrn_kernels.lrn_forward(input, size, alpha, beta, k)


def _local_response_norm_backward_kernels(
    grad_out: Tensor, input: Tensor, size: int, alpha: float, beta: float, k: float
) -> Tensor:
    return lrn_kernels.lrn_backward(grad_out, input, size, alpha, beta, k)


def _local_response_norm_setup_context(ctx, inputs, output):
    input, size, alpha, beta, k = inputs
    ctx.save_for_backward(input)  # the scale is recomputed from it; nothing else is kept
    ctx.lrn = (size, alpha, beta, k)


def _local_response_norm_grad(ctx, grad_out, *, backward):
    (input,) = ctx.saved_tensors
    grad_input = backward(grad_out, input, *ctx.lrn)
    return grad_input, None, None, None, None


_local_response_norm = fused_op(
    "local_response_norm",
    _local_response_norm_kernels,
    _local_response_norm_setup_context,
    _local_response_norm_grad,
    _local_response_norm_backward_kernels,
)


@traced_as_one_call
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
    out = _local_response_norm(x, size, alpha, beta, k)
    return out.reshape(input.shape)
