"""Floor 1: the fused ops as PyTorch operators with autograd.

Each op is registered with ``torch.library.triton_op`` (its kernels launch through ``wrap_triton``)
and gets its backward with ``register_autograd``, so ``torch.compile``, export, make_fx and jit.trace see
one operator; an eager call goes straight to the same kernels through an ``autograd.Function``, without
the dispatcher's custom-op machinery (``dispatch.fused_op``). The public functions below validate their
arguments (once, here), apply autocast, and pick the backend: compiled Triton on CUDA, the Triton
interpreter on a CPU when TRITON_INTERPRET=1, else the plain-PyTorch math in ``reference.py``.
"""

from alexnet_triton.functional.conv import conv2d_relu
from alexnet_triton.functional.dispatch import backend
from alexnet_triton.functional.dropout import dropout
from alexnet_triton.functional.lrn import local_response_norm
from alexnet_triton.functional.lrn_pool import lrn_max_pool2d
from alexnet_triton.functional.pool import max_pool2d

__all__ = ["backend", "conv2d_relu", "dropout", "local_response_norm", "lrn_max_pool2d", "max_pool2d"]
