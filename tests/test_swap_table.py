"""The swap's table (alexnet_triton/swap/table.py): each row's fused class is a drop-in subclass of its torch
class under an option of swap_fused_ops, and a module the fused constructor refuses is left with its message."""

import inspect
from types import SimpleNamespace

from swap_helpers import reasons
from torch import nn

import alexnet_triton as at
from alexnet_triton.swap import table


def test_each_row_is_a_stateless_subclass_under_an_option_of_swap_fused_ops():
    keywords = inspect.signature(at.swap_fused_ops).parameters
    assert set(table.OPTIONS) == {name for name in keywords if name not in ("model", "verbose")}
    for op in table.FUSED_OPS:
        assert issubclass(op.fused_class, op.torch_class) and op.fused_class is not op.torch_class
        assert op.fused_class.forward is not op.torch_class.forward, f"{op.fused_class.__name__} computes its own"
        assert table.OP_FOR_FUSED_CLASS[op.fused_class] is op
    assert len(table.OP_FOR_FUSED_CLASS) == len(table.FUSED_OPS), "each fused class in one row"


def test_lookups_find_the_row_of_a_module():
    conv, fused_pool = nn.Conv2d(3, 4, 3), at.nn.MaxPool2d(2)
    assert [op.fused_class for op in table.ops_replacing(conv)] == [at.nn.Conv2dReLU]
    assert [op.torch_class for op in table.ops_replacing(fused_pool)] == [nn.MaxPool2d]
    assert table.ops_replacing(nn.ReLU()) == ()
    assert table.op_of_fused(fused_pool).torch_class is nn.MaxPool2d and table.op_of_fused(conv) is None


def test_a_conv_is_built_on_the_meta_device_around_its_own_parameters():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1).eval()
    (op,) = table.ops_replacing(conv)
    built = op.build(conv)
    assert type(built) is at.nn.Conv2dReLU and not built.training
    assert built.weight is conv.weight and built.bias is conv.bias
    assert (built.stride, built.padding) == (conv.stride, conv.padding)
    assert table.refusal(op, conv) is None
    assert table.refusal(op, nn.Conv2d(3, 4, 3, padding_mode="circular")) == (
        "Conv2dReLU supports padding_mode='zeros' only, got 'circular'"
    )


def test_local_response_norm_with_arguments_the_op_refuses_is_left():
    model = nn.Sequential(nn.LocalResponseNorm(2.5), nn.LocalResponseNorm(3, alpha="1e-4"))
    at.swap_fused_ops(model)
    assert [type(m) for m in model] == [nn.LocalResponseNorm, nn.LocalResponseNorm]
    assert reasons(model.fused_ops_report) == {
        "0": "size must be a positive int (channels in the window), got 2.5",
        "1": "alpha must be a number, got '1e-4'",
    }


def test_max_pool_with_return_indices_is_left():
    model = nn.Sequential(nn.MaxPool2d(2, return_indices=True), nn.MaxPool2d(3, 2, padding=1))
    at.swap_fused_ops(model)
    assert [type(m) for m in model] == [nn.MaxPool2d, at.nn.MaxPool2d]
    assert "does not return indices" in reasons(model.fused_ops_report)["0"]


def test_an_lrn_tries_the_row_of_the_pair_it_may_start_before_its_own():
    lrn, fused_pair = nn.LocalResponseNorm(3), at.nn.LRNMaxPool2d(3, 3, 2)
    pair, alone = table.ops_replacing(lrn)
    assert (pair.fused_class, alone.fused_class) == (at.nn.LRNMaxPool2d, at.nn.LocalResponseNorm)
    assert table.op_of_fused(fused_pair) is pair and table.op_of_fused(at.nn.LocalResponseNorm(3)) is alone
    # The pair's row builds from both modules' arguments (sequential.py's rule gathers them).
    both = SimpleNamespace(size=3, alpha=1e-4, beta=0.75, k=1.0, kernel_size=3, stride=2, padding=2)
    assert table.refusal(pair, both) == "padding 2 must be at most half the kernel's height 3"
    assert table.refusal(pair, SimpleNamespace(**{**vars(both), "padding": 1})) is None
