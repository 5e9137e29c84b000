"""Floor 0: @triton.jit kernels and the host functions that allocate and launch them.

Pure Triton: no autograd, no nn. Installed as ``alexnet_triton.kernels``; one file per op.
"""
