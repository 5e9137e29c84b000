"""AlexNet (Krizhevsky, Sutskever, Hinton, 2012) as fused Triton kernels for PyTorch.

import alexnet_triton as at
y = at.conv2d_relu(x, weight, bias, stride=1, padding=1)   # == F.relu(F.conv2d(...))
layer = at.nn.Conv2dReLU(96, 256, 5, padding=2, groups=2)  # a drop-in nn.Conv2d + ReLU
at.backend(x.device)                                        # "triton" | "triton-interpreter" | "torch"
"""

from alexnet_triton import functional, nn, reference
from alexnet_triton.functional import backend, conv2d_relu, dropout, local_response_norm, max_pool2d
from alexnet_triton.model import AlexNet

__all__ = [
    "AlexNet",
    "backend",
    "conv2d_relu",
    "dropout",
    "functional",
    "local_response_norm",
    "max_pool2d",
    "nn",
    "reference",
]
__version__ = "0.1.0"
