"""conv2d + bias + ReLU as one operator with autograd: at.conv2d_relu."""

import torch.nn.functional as F
from torch import Tensor

from alexnet_triton import reference
from alexnet_triton.functional.dispatch import autocast_inputs, backend, fused_op, traced_as_one_call
from alexnet_triton.kernels import conv as conv_kernels
from alexnet_triton.kernels import conv_grad as conv_grad_kernels
from alexnet_triton.validation import check_pair, check_same, check_tensor


def _conv2d_relu_kernels(
    input: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], padding: list[int], groups: int
) -> Tensor:
    return conv_kernels.conv_relu_forward(input, weight, bias, stride, padding, groups)


def _conv2d_relu_backward_kernels(
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
    masked, bias_grad = conv_grad_kernels.relu_grad(grad_out, out, with_bias=need_bias)
    if need_input:
        grad_input = conv_grad_kernels.conv_relu_input_grad(
            masked, weight, list(input.shape), memory_format, stride, padding, groups
        )
    if need_weight:
        grad_weight = conv_grad_kernels.conv_relu_weight_grad(
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


def _conv2d_relu_grad(ctx, grad_out, *, backward):
    input, weight, out = ctx.saved_tensors
    stride, padding, groups = ctx.conv
    need = list(ctx.needs_input_grad[:3])
    grads = backward(grad_out, out, input, weight, stride, padding, groups, need)
    grad_input, grad_weight, grad_bias = (g if n else None for g, n in zip(grads, need, strict=True))
    return grad_input, grad_weight, grad_bias, None, None, None


_conv2d_relu = fused_op(
    "conv2d_relu", _conv2d_relu_kernels, _conv2d_relu_setup_context, _conv2d_relu_grad, _conv2d_relu_backward_kernels
)


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


@traced_as_one_call
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

    input, weight, bias = autocast_inputs(input.device, input, weight, bias)
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
        out = _conv2d_relu(input, weight, bias, list(stride), list(padding), groups)
    return out.squeeze(0) if unbatched else out
