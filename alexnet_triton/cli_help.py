"""How the command lines' --help shows defaults."""

import argparse


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows an option's default where it has a value of its own: not None (the help says what then
    happens), not the flags' True/False, and not twice."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "(default" in help:
            return help
        return super()._get_help_string(action)
