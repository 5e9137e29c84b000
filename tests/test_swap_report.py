"""The swap's report (alexnet_triton/swap/report.py): kept on the model, logged on the alexnet_triton.swap
logger, printed with verbose=True, as a table in the order of the model's modules."""

import logging

from swap_helpers import small_cnn
from torch import nn

import alexnet_triton as at
from alexnet_triton.swap import NotSwapped, Swapped


def test_report_is_kept_logged_and_printed(device, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="alexnet_triton.swap"):
        model = at.swap_fused_ops(small_cnn(device), dropout=False, verbose=True)
    text = str(model.fused_ops_report)
    assert capsys.readouterr().out == text + "\n"
    assert [record.getMessage() for record in caplog.records] == [text]
    assert text.splitlines() == [
        "swap_fused_ops: 3 swapped, 1 left as they were",
        "swapped:",
        "  0  nn.Conv2d + nn.ReLU (1)                  ->  at.nn.Conv2dReLU + nn.Identity",
        "  2  nn.LocalResponseNorm + nn.MaxPool2d (3)  ->  at.nn.LRNMaxPool2d + nn.Identity",
        "  4  nn.Conv2d + nn.ReLU (5)                  ->  at.nn.Conv2dReLU + nn.Identity",
        "left as they were:",
        "  7  nn.Dropout  dropout=False",
    ]


def test_entries_are_sorted_as_the_model_lists_its_modules_and_the_model_itself_is_named():
    model = nn.Sequential(nn.MaxPool2d(2), nn.Dropout())
    report = at.SwapReport("swap_fused_ops", traced=True)
    report.add_swapped("1", "nn.Dropout", "at.nn.Dropout")
    report.add_swapped("0", "nn.MaxPool2d", "at.nn.MaxPool2d")
    report.add_not_swapped("", model, "a reason")

    report.sort_as(model)

    assert [entry.name for entry in report.swapped] == ["0", "1"]
    assert report.swapped[0] == Swapped("0", "nn.MaxPool2d", "at.nn.MaxPool2d")
    assert report.left == [NotSwapped("", "nn.Sequential", "a reason")]
    assert str(report).splitlines() == [
        "swap_fused_ops: 2 swapped, 1 left as they were",
        "swapped:",
        "  0  nn.MaxPool2d  ->  at.nn.MaxPool2d",
        "  1  nn.Dropout    ->  at.nn.Dropout",
        "left as they were:",
        "  (the model itself)  nn.Sequential  a reason",
        "The returned model is a torch.fx.GraphModule: use it in place of the one passed in.",
    ]
