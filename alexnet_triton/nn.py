"""Floor 2: drop-in modules. Each subclasses the torch.nn module it replaces, so constructor
arguments, parameters and state_dict keys are the same; what the fused op cannot do raises."""

import torch
from torch import Tensor

from alexnet_triton import functional


class Conv2dReLU(torch.nn.Conv2d):
    """``nn.Conv2d`` followed by ReLU, computed by one fused op (:func:`alexnet_triton.conv2d_relu`).

    Same constructor and state_dict as ``nn.Conv2d``. Dilation other than 1 and padding modes other
    than "zeros" are not supported and raise at construction.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.dilation != (1, 1):
            raise ValueError(f"Conv2dReLU supports dilation=1 only, got dilation={self.dilation}")
        if self.padding_mode != "zeros":
            raise ValueError(f"Conv2dReLU supports padding_mode='zeros' only, got {self.padding_mode!r}")

    def forward(self, input: Tensor) -> Tensor:
        return functional.conv2d_relu(input, self.weight, self.bias, self.stride, self.padding, self.groups)
