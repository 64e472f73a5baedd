"""Command-line helpers shared by the steps, the pipelines' entry points and the tools: a parser whose errors exit 1
and whose ``--help`` shows every default, booleans as ``true``/``false``, and the options of a dataclass declared with
``components.settings.setting``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from components.settings import Setting, declared


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


def option_kwargs(kind: type, declared_as: Setting) -> dict[str, Any]:
    """``add_argument``'s keywords for a value of ``kind`` declared so (not its default or help)."""
    if declared_as.switch:
        return {"action": "store_true"}
    kwargs: dict[str, Any] = {"type": parse_bool, "metavar": "true|false"} if kind is bool else {} if kind is str else {"type": kind}
    if declared_as.bare_means_true:
        kwargs.update(nargs="?", const=True)
    if declared_as.choices:
        kwargs["choices"] = declared_as.choices
    return kwargs


def add_settings(parser: argparse.ArgumentParser, config: type) -> None:
    """An option per field of ``config``: ``--lora-rank`` for ``lora_rank``, with its type, default and help, in its group."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, kind, default, declared_as in declared(config):
        target = parser
        if declared_as.group is not None:
            if declared_as.group not in groups:
                groups[declared_as.group] = parser.add_argument_group(declared_as.group)
            target = groups[declared_as.group]
        target.add_argument(option_flag(name), default=default, help=declared_as.help, **option_kwargs(kind, declared_as))


def shown_default(value: Any) -> str:
    """A default as a user types it: booleans as ``true``/``false`` (what parse_bool reads, and the UI shows)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def help_with_default(action: argparse.Action) -> str:
    """An option's help as ``--help`` shows it: its default appended, unless the help already says it (a default of None
    means something the help must say: "default: once per epoch"), or the option is a switch or required."""
    text = action.help or ""
    if action.nargs == 0 or action.required or action.default in (None, argparse.SUPPRESS) or "default" in text:
        return text
    default = f"(default: {shown_default(action.default).replace('%', '%%')})"  # argparse expands % in help
    return f"{text} {default}" if text else default


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (their example commands stay on their lines) and every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return help_with_default(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors exit with status 1, as every other error a user can cause does (argparse: 2),
    and whose ``--help`` shows every option's default."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"formatter_class": HelpFormatter, **kwargs})

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")
