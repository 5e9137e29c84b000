"""Floor 2: drop-in modules. Each subclasses the torch.nn module it replaces, so constructor
arguments, parameters and state_dict keys are the same; what the fused op cannot do raises."""

import torch
from torch import Tensor, fx

from alexnet_triton import functional
from alexnet_triton.validation import check_pool_window, lrn_parameters


def _one_node_in_trace(module: torch.nn.Module, input: fx.Proxy) -> fx.Proxy:
    """module as one call_module node of a torch.fx trace, as torch.fx records torch.nn's own modules: the
    traced graph keeps the module itself, so a traced Dropout still follows train() and eval() and
    unswap_fused_ops still finds it, and the op's checks never see a Proxy."""
    tracer = input.tracer
    return tracer.create_proxy("call_module", tracer.path_of_module(module), (input,), {})


class Conv2dReLU(torch.nn.Conv2d):
    """``nn.Conv2d`` followed by ReLU, computed by one fused op (:func:`alexnet_triton.conv2d_relu`).

    Same constructor and state_dict as ``nn.Conv2d``. Dilation other than 1, padding modes other
    than "zeros" and padding="same" with an even kernel are not supported and raise at construction.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.dilation != (1, 1):
            raise ValueError(f"Conv2dReLU supports dilation=1 only, got dilation={self.dilation}")
        if self.padding_mode != "zeros":
            raise ValueError(f"Conv2dReLU supports padding_mode='zeros' only, got {self.padding_mode!r}")
        if self.padding == "same" and any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError(
                f"Conv2dReLU supports padding='same' with odd kernels only (an even one pads unevenly), "
                f"got kernel_size={self.kernel_size}"
            )

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return _one_node_in_trace(self, input)
        return functional.conv2d_relu(input, self.weight, self.bias, self.stride, self.padding, self.groups)


class LocalResponseNorm(torch.nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` computed by one fused op (:func:`alexnet_triton.local_response_norm`).

    PyTorch's convention: alpha is divided by size. The 2012 paper's LRN is
    ``LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)``. Its arguments are checked at construction.
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0):
        super().__init__(*lrn_parameters(size, alpha, beta, k))

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return _one_node_in_trace(self, input)
        return functional.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


class MaxPool2d(torch.nn.MaxPool2d):
    """``nn.MaxPool2d`` computed by the fused op (:func:`alexnet_triton.max_pool2d`).

    dilation, ceil_mode and return_indices other than their defaults raise at construction, rather
    than computing something else.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.dilation not in (1, (1, 1)):
            raise ValueError(f"MaxPool2d supports dilation=1 only, got dilation={self.dilation}")
        if self.ceil_mode:
            raise ValueError("MaxPool2d supports ceil_mode=False only")
        if self.return_indices:
            raise ValueError("MaxPool2d does not return indices (it saves 1-byte window positions instead)")

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return _one_node_in_trace(self, input)
        return functional.max_pool2d(input, self.kernel_size, self.stride, self.padding)


class LRNMaxPool2d(torch.nn.LocalResponseNorm, torch.nn.MaxPool2d):
    """``nn.LocalResponseNorm`` then ``nn.MaxPool2d`` in one fused op (:func:`alexnet_triton.lrn_max_pool2d`).

    AlexNet's layers 1 and 2: ``LRNMaxPool2d(5, 3, 2, alpha=5e-4, beta=0.75, k=2.0)``. It is an instance
    of both modules it computes, holding the state of both (size, alpha, beta, k; kernel_size, stride,
    padding, and the pool's dilation=1, ceil_mode=False, return_indices=False), so code that looks for
    either kind finds it, and swap_fused_ops turns an ``nn.LocalResponseNorm`` into one by a class
    change. Its arguments are checked at construction. No parameters: the state_dict is empty.
    """

    def __init__(
        self,
        size: int,
        kernel_size,
        stride=None,
        padding=0,
        *,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 1.0,
    ):
        # Module's constructor only: the two parents' constructors each call the next in the MRO with
        # their own arguments.
        torch.nn.Module.__init__(self)
        self.size, self.alpha, self.beta, self.k = lrn_parameters(size, alpha, beta, k)
        check_pool_window(kernel_size, stride, padding)
        self.kernel_size, self.padding = kernel_size, padding
        self.stride = kernel_size if stride is None else stride  # as nn.MaxPool2d
        self.dilation, self.return_indices, self.ceil_mode = 1, False, False

    def extra_repr(self) -> str:
        return (
            f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        )

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return _one_node_in_trace(self, input)
        return functional.lrn_max_pool2d(
            input, self.size, self.kernel_size, self.stride, self.padding, alpha=self.alpha, beta=self.beta, k=self.k
        )


class Dropout(torch.nn.Dropout):
    """``nn.Dropout`` that stores no mask (:func:`alexnet_triton.dropout`): each call draws a seed from
    PyTorch's generator, and backward regenerates the mask from it. inplace=True is refused."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(p, inplace)
        if inplace:
            raise ValueError("Dropout(inplace=True) is not supported: the fused op writes a new tensor")

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, fx.Proxy):
            return _one_node_in_trace(self, input)
        return functional.dropout(input, self.p, self.training)
