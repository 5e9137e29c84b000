"""kernels/_common.py's launch: every kernel launches under a device guard for its tensors' device, and no launcher's
grid passes CUDA's limits at the largest shapes a user can ask for (the interpreter enforces neither)."""

import contextlib

import pytest
import torch
import triton
import triton.runtime.interpreter as interpreter
from alexnet_triton.kernels import _common, augment, conv, conv_grad, dropout, lrn, lrn_pool, pool
from helpers import restore_tf32_settings, tf32_settings

from alexnet_triton import functional as F_at
from alexnet_triton.model import layer_shapes


@pytest.fixture
def guarded_launches(monkeypatch):
    """(kernel name, guarded device, devices of its tensor arguments) for every kernel launch while a test runs."""
    launches, active = [], []

    @contextlib.contextmanager
    def recording_guard(device):
        active.append(device)
        try:
            yield
        finally:
            active.pop()

    run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, **kwargs):
        tensors = {arg.device for arg in [*args, *kwargs.values()] if isinstance(arg, torch.Tensor)}
        launches.append((self.fn.__name__, active[-1] if active else None, tensors))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(_common, "device_guard", recording_guard)
    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording_run)
    return launches


def test_every_kernel_launches_under_a_guard_for_its_tensors_device(guarded_launches, device):
    x = torch.randn(2, 16, 9, 9, device=device, requires_grad=True)
    w = torch.randn(16, 16, 3, 3, device=device, requires_grad=True)
    y = F_at.conv2d_relu(x, w, torch.randn(16, device=device), padding=1)
    y = F_at.local_response_norm(y, 5)
    y = F_at.max_pool2d(y, 3, 2)
    y = F_at.lrn_max_pool2d(y, 3, 3, 1)
    y = F_at.dropout(y, 0.5, seed=3)
    y.sum().backward()
    images = torch.randint(0, 256, (2, 12, 12, 3), dtype=torch.uint8, device=device)
    boxes = torch.tensor([[0, 0, 0, 0], [1, 2, 2, 1]], dtype=torch.int32, device=device)
    ones = torch.ones(3, device=device)
    augment.crop_normalize(
        images, boxes, torch.zeros(2, 3, device=device), ones, ones, 8, torch.float32, torch.contiguous_format
    )
    F_at.conv2d_relu(torch.randn(2, 3, 15, 15, device=device), torch.randn(4, 3, 11, 11, device=device), stride=4)
    names = {name for name, _, _ in guarded_launches}
    assert {
        "_conv_fwd_kernel",
        "_relu_grad_kernel",
        "_conv_wgrad_kernel",
        "_lrn_fwd_kernel",
        "_lrn_bwd_kernel",
        "_max_pool_fwd_kernel",
        "_max_pool_bwd_kernel",
        "_lrn_max_pool_fwd_kernel",
        "_lrn_max_pool_bwd_kernel",
        "_dropout_kernel",
        "_crop_normalize_kernel",
        "_space_to_depth_kernel",
    } <= names
    for name, guarded, devices in guarded_launches:
        assert guarded is not None, f"{name} launched outside a device guard"
        assert devices == {guarded}, f"{name} launched under a guard for {guarded} on tensors of {devices}"


def test_the_guard_for_a_cuda_tensor_selects_its_device_by_index():
    guard = _common.device_guard(torch.device("cuda", 1))  # made, not entered: no GPU needed
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert isinstance(_common.device_guard(torch.device("cpu")), contextlib.nullcontext)


def test_a_grid_past_cudas_limits_is_refused_with_the_kernel_and_axis():
    assert _common.check_grid((2**31 - 1, 65535, 65535), "k") == (2**31 - 1, 65535, 65535)
    with pytest.raises(ValueError, match=r"_crop_normalize_kernel: 65,536 programs on grid axis 1, past CUDA's limit"):
        _common.check_grid((1, 65536), "_crop_normalize_kernel")
    with pytest.raises(ValueError, match="grid axis 0"):
        _common.check_grid((2**31,), "k")


class GridsOfEveryConfig:
    """A stand-in for _common.launcher that launches nothing: it evaluates the launch's grid for every config a GPU
    could tune to, and checks each against CUDA's limits."""

    grids: list = []

    def __init__(self, kernel, expect=None):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            name = _common._kernel_name(self.kernel)
            for config in getattr(self.kernel, "gpu_configs", None) or self.kernel.configs:
                shape = _common.check_grid(grid({**kwargs, **config.kwargs}), name)
                GridsOfEveryConfig.grids.append((name, shape))

        return launch


# The largest run a user can ask for on one GPU that still fits its memory is far below this; the grids must
# still fit: 2**16 images per tower-step, ten-crop evaluation at 4x that.
LARGEST_BATCH = 2**16


def test_every_launcher_fits_cudas_grid_limits_at_the_largest_shapes(monkeypatch):
    monkeypatch.setattr(_common, "launcher", GridsOfEveryConfig)
    monkeypatch.setattr(_common, "INTERPRET", False)  # the GPU's program sizes (e.g. the ReLU mask's chunks)
    monkeypatch.setattr(conv.tuning, "sm_count", lambda device: 132)
    GridsOfEveryConfig.grids = []
    meta = dict(device="meta", dtype=torch.float32)
    n, last = LARGEST_BATCH, torch.channels_last
    for shape in layer_shapes():
        if not shape.layer.relu:
            continue
        c_in, c_out, k, size = shape.in_channels, shape.out_channels, shape.kernel, shape.input_size
        x = torch.empty(n, c_in, size, size, **meta).to(memory_format=last)
        w = torch.empty(c_out, c_in, k, k, **meta).to(memory_format=last)
        stride, padding = (shape.layer.stride,) * 2, (shape.layer.padding,) * 2
        out = conv.conv_relu_forward(x, w, torch.empty(c_out, **meta), stride, padding, 1)
        masked, _ = conv_grad.relu_grad(torch.empty_like(out), out, True)
        conv_grad.conv_relu_input_grad(masked, w, list(x.shape), last, stride, padding, 1)
        conv_grad.conv_relu_weight_grad(masked, x, list(w.shape), last, stride, padding, 1)
        if shape.layer.lrn:
            lrn.lrn_backward(out, out, 5, 1e-4, 0.75, 2.0)
            lrn.lrn_forward(out, 5, 1e-4, 0.75, 2.0)
        if shape.layer.pool:
            pooled, pos = pool.max_pool_forward(out, (3, 3), (2, 2), (0, 0))
            pool.max_pool_backward(pooled, pos, list(out.shape), (3, 3), (2, 2), (0, 0))
            pooled, pos = lrn_pool.lrn_max_pool_forward(out, 5, 1e-4, 0.75, 2.0, (3, 3), (2, 2), (0, 0))
            lrn_pool.lrn_max_pool_backward(pooled, out, pos, 5, 1e-4, 0.75, 2.0, (3, 3), (2, 2), (0, 0))
    dropout.dropout(
        torch.empty(n, 4096, **meta), torch.empty(1, dtype=torch.int64, device="meta"), 0.5, torch.contiguous_format
    )
    crops = 10 * 4 * n  # ten crops of an evaluation batch 4x the training batch
    images = torch.empty(4 * n, 256, 256, 3, dtype=torch.uint8, device="meta")
    augment.crop_normalize(
        images,
        torch.empty(crops, 4, dtype=torch.int32, device="meta"),
        torch.empty(crops, 3, **meta),
        torch.empty(3, **meta),
        torch.empty(3, **meta),
        227,
        torch.float32,
        last,
    )
    launched = {name for name, _ in GridsOfEveryConfig.grids}
    assert len(launched) == 13, launched  # every kernel of the package, each at every config
    biggest = [
        max(shape[axis] if axis < len(shape) else 1 for _, shape in GridsOfEveryConfig.grids) for axis in range(3)
    ]
    assert biggest[0] > 2**20  # the test reached sizes where a wrong axis would matter
    assert biggest[1] <= 65535 and biggest[2] <= 65535


def test_largest_batch_is_beyond_what_the_old_crop_grid_allowed():
    # The crops were on grid axis 1 until they passed 65,535 (ten-crop evaluation from --batch-size 1,639 up).
    assert 10 * 4 * 1639 > 65535 and 10 * 4 * LARGEST_BATCH > 65535
    assert triton.cdiv(3 * 227 * 227, 1024) <= 65535  # what axis 1 holds now: one crop's blocks


def test_tf32_follows_pytorchs_newer_precision_api_without_raising():
    # Setting cudnn.conv.fp32_precision makes reading the old allow_tf32 flag raise in torch 2.9+; an fp32 conv must
    # still launch, rounding as the newer setting says.
    saved = tf32_settings()
    try:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        assert not _common.use_tf32(torch.float32)
        x, w = torch.randn(1, 16, 5, 5), torch.randn(16, 16, 3, 3)
        out = F_at.conv2d_relu(x, w)
        reference = torch.relu(torch.nn.functional.conv2d(x.double(), w.double()))
        assert ((out.double() - reference).norm() / reference.norm()).item() < 1e-5
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        assert _common.use_tf32(torch.float32) and not _common.use_tf32(torch.bfloat16)
    finally:
        restore_tf32_settings(saved)
