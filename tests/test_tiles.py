"""Past the first tile (DESIGN.md, "Tests"): the tests' interpreter blocks (_common.TEST_TILES, set by conftest.py for
the kernel test files) cut every shape into three programs or more along each tiled dimension and every loop into two
trips or more, and tests/tiles.py reads what a launch covered. The kernel test files check their representative
shapes with it (test_conv, test_lrn, test_pool, test_lrn_pool); dropout's and the crops' are checked here."""

from pathlib import Path

import pytest
import torch
import triton
from alexnet_triton.kernels import (
    _common,
    augment,
    conv,
    conv_grad,
    conv_tuning,
    dropout,
    lrn,
    lrn_pool,
    pool,
    space_to_depth,
)
from conftest import TILED_TEST_FILES
from tiles import _TILED, table, uncovered

import alexnet_triton as at

pytestmark = pytest.mark.skipif(not _common.INTERPRET, reason="the interpreter's blocks; a GPU interprets nothing")


def test_blocks_cut_any_size_into_three_or_four_programs_and_two_trips():
    for size in range(33, 5000):
        block = _common.parts_block(size, 16, 2**20, _common.TEST_PROGRAMS)
        assert block & (block - 1) == 0 and block >= 16
        assert triton.cdiv(size, block) in (3, 4), size
        assert triton.cdiv(size, _common.parts_block(size, 16, 2**20, _common.TEST_TRIPS)) == 2, size
    assert _common.parts_block(37, 16, 512, 3) == 16  # 16 + 16 + 5
    assert _common.parts_block(20, 16, 512, 3) == 16, "never below the floor (tl.dot reads 16 at least)"
    assert _common.parts_block(10**6, 16, 512, 3) == 512, "nor above the ceiling"


def test_the_kernel_tests_run_the_tests_tiles_and_other_code_the_whole_shape(monkeypatch):
    assert _common.TEST_TILES, "conftest.py's past_the_first_tile sets it for this file"
    for name in TILED_TEST_FILES:
        assert (Path(__file__).parent / f"{name}.py").is_file(), f"TILED_TEST_FILES names {name}, which is gone"
    args = {"M": 50, "C_out_g": 37, "C_in_g": 41, "TAPS": 9, "SPLITS": 1, "PACKED": False}
    assert conv_tuning.interpreter_fwd_blocks(args) == {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}
    monkeypatch.setattr(_common, "TEST_TILES", False)  # a user's interpreter run: one tile covers each extent
    assert conv_tuning.interpreter_fwd_blocks(args) == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}
    assert conv_tuning.mask_pixels_per_program(1000) == 1000


def test_the_forward_leaves_every_split_two_steps_where_the_reduction_allows():
    def steps_of_last_split(reduction, taps, splits):
        args = {"M": 40, "C_out_g": 40, "C_in_g": reduction, "TAPS": taps, "SPLITS": splits, "PACKED": taps == 1}
        block = conv_tuning.interpreter_fwd_blocks(args)["BLOCK_K"]
        steps = taps * triton.cdiv(reduction, block) if taps > 1 else triton.cdiv(reduction, block)
        return steps - (splits - 1) * triton.cdiv(steps, splits)

    for splits in (1, 3, 7):
        assert steps_of_last_split(216, 1, splits) >= 2  # fc6's shape in test_conv
        assert steps_of_last_split(48, 25, splits) >= 2
    assert steps_of_last_split(40, 1, 7) <= 0, "fc7's 40 products cannot fill 7 splits: some add nothing"


def test_relu_masks_pixel_chunks_are_three_the_last_partial():
    for pixels in range(7, 2000):
        per_program = conv_tuning.mask_pixels_per_program(pixels)
        assert triton.cdiv(pixels, per_program) == 3 and pixels % per_program != 0, pixels


def test_every_tuned_kernel_says_what_its_programs_share():
    # A new kernel needs a line in tiles._TILED (and its loops in _LOOPS) before its tests can check their coverage.
    kernels = {
        name
        for module in (augment, conv, conv_grad, dropout, lrn, lrn_pool, pool, space_to_depth)
        for name, value in vars(module).items()
        if hasattr(value, "gpu_configs")
    }
    assert kernels == set(_TILED)


def test_dropout_runs_past_the_first_tile(launches, device):
    x = torch.randn(3, 1000, device=device)  # 3,000 elements: three programs of 1,024, the last partial
    out = at.dropout(x, 0.5, seed=5)
    (launch,) = launches
    assert launch.kernel == "_dropout_kernel" and not uncovered(launches), table(launches)
    kept = out != 0
    assert torch.equal(out[kept], x[kept] * 2.0)
    block = launch.args["BLOCK"]  # programs draw their own masks: one drawn per lane would repeat in every block
    assert not torch.equal(kept.flatten()[:block], kept.flatten()[block : 2 * block])


def test_crops_run_past_the_first_tile(launches, device):
    images = torch.randint(0, 256, (2, 10, 10, 3), dtype=torch.uint8, device=device)
    boxes = torch.tensor([[0, 0, 0, 1], [1, 3, 2, 0]], dtype=torch.int32, device=device)
    ones, zeros = torch.ones(3, device=device), torch.zeros(3, device=device)
    crops = augment.crop_normalize(images, boxes, torch.zeros(2, 3, device=device), zeros, ones, 7, torch.float32,
                                   torch.contiguous_format)  # fmt: skip
    (launch,) = launches
    assert launch.grid[0] == 2 and not uncovered(launches), table(launches)  # 147 values a crop: 64 + 64 + 19
    assert torch.equal(crops[0], images[0, :7, :7].permute(2, 0, 1).flip(-1).float())
    assert torch.equal(crops[1], images[1, 3:10, 2:9].permute(2, 0, 1).float())


def test_rescaled_crops_run_past_the_first_tile(launches, monkeypatch, device):
    # 20 x 20 images rescaled to 13 x 13, 9 x 9 crops at its far corners: three row blocks, each walking its stored rows
    # into the ring, and four blocks of a row's 27 values. One program a crop walks every row itself: the same crops.
    images = torch.randint(0, 256, (2, 20, 20, 3), dtype=torch.uint8, device=device)
    boxes = torch.tensor([[0, 0, 4, 1], [1, 4, 0, 0]], dtype=torch.int32, device=device)
    ones, zeros = torch.ones(3, device=device), torch.zeros(3, device=device)
    args = (images, boxes, torch.zeros(2, 3, device=device), zeros, ones, 9, torch.float32, torch.channels_last)
    crops = augment.crop_normalize(*args, resize=13)
    (launch,) = launches
    assert launch.args["TAPS"] > 0 and launch.grid[1] == 3 and not uncovered(launches), table(launches)
    monkeypatch.setattr(_common, "TEST_TILES", False)
    assert torch.equal(crops, augment.crop_normalize(*args, resize=13)), "the row walk's tiles change the crops"
