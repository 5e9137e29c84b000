"""How the command lines' --help shows defaults (alexnet_triton/cli_help.py)."""

import argparse

from alexnet_triton.cli_help import HelpWithDefaults


def test_help_shows_only_real_defaults():
    parser = argparse.ArgumentParser(formatter_class=HelpWithDefaults)
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate")
    parser.add_argument("--epochs", type=int, help="epochs: 90 for ImageNet")
    parser.add_argument("--no-lrn", dest="lrn", action="store_false", help="ablation: no LRN")
    parser.add_argument("--name", default="x", help="run name (default: date and time)")
    text = " ".join(parser.format_help().split())
    assert "learning rate (default: 0.01)" in text
    assert "epochs: 90 for ImageNet --no-lrn" in text  # nothing appended: None is not a default worth showing
    assert "ablation: no LRN --name" in text  # nor a flag's True
    assert "run name (default: date and time)" in text and "(default: x)" not in text
