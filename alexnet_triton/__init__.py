"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012) as fused Triton kernels for PyTorch.

import alexnet_triton as at
y = at.conv2d_relu(x, weight, bias, stride=1, padding=1)   # == F.relu(F.conv2d(...))
y = at.lrn_max_pool2d(x, 5, 3, 2, alpha=5e-4, k=2.0)        # LRN then max-pool, one pass each way
layer = at.nn.Conv2dReLU(96, 256, 5, padding=2, groups=2)  # a drop-in nn.Conv2d + ReLU
at.backend(x.device)                                        # "triton" | "triton-interpreter" | "torch"
model = at.swap_fused_ops(torchvision.models.alexnet())    # the fused ops in a model you have
"""

from alexnet_triton import functional, nn, reference
from alexnet_triton.functional import (
    backend,
    conv2d_relu,
    dropout,
    local_response_norm,
    lrn_max_pool2d,
    max_pool2d,
)
from alexnet_triton.model import AlexNet
from alexnet_triton.swap import SwapReport, swap_fused_ops, unswap_fused_ops

__all__ = [
    "AlexNet",
    "SwapReport",
    "backend",
    "conv2d_relu",
    "dropout",
    "functional",
    "local_response_norm",
    "lrn_max_pool2d",
    "max_pool2d",
    "nn",
    "reference",
    "swap_fused_ops",
    "unswap_fused_ops",
]
__version__ = "0.1.0"
