"""Command-line helpers shared by the step scripts and the tools."""

from __future__ import annotations

import argparse
import sys


def parse_bool(value: str | bool) -> bool:
    """A boolean argument as ``true``/``false``: unambiguous when edited in the ClearML UI
    or overridden by a pipeline, where a value always arrives as a string."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def option_flag(name: str) -> str:
    """The command-line flag of an argument: ``max_steps`` -> ``--max-steps``."""
    return "--" + name.replace("_", "-")


def exit_if_help_asked(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Print the help and exit before any ClearML task exists (an argument error waits for the task)."""
    if any(a in ("-h", "--help") for a in argv):
        parser.parse_args(argv)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors exit with status 1, as every other error a user can cause does (argparse: 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")
