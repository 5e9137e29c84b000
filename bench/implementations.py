"""The ways each benchmark is run, as results name them in extra_info["implementation"] and the report's
columns order them: our fused ops, PyTorch eager (cuDNN / ATen), and torch.compile of that eager code."""

IMPLEMENTATIONS = ("ours", "eager", "compile")
