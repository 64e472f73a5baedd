"""Command-line helpers shared by the step scripts and the tools, and the declaration of a setting.

A step's settings are the fields of one dataclass (``steps/config.py``), each made with
:func:`setting`: its default and type are the field's, its help and what else it is (a pipeline
parameter, a sweepable hyperparameter, a ``--help`` section) its metadata. :func:`add_settings`
turns the dataclass into the step's options; the pipeline's parameters, their routing to the
steps and the sweep's space are read from the same fields (``pipelines/definition.py``).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any


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


@dataclass(frozen=True)
class Setting:
    """What a configuration field declares beyond its type and default."""

    help: str
    pipeline: bool | str = False  # a pipeline parameter: True under the field's own name, or the parameter's name
    sweep: str | None = None  # sweepable: the values a sweep tries unless told others ("" : not swept unless asked)
    group: str | None = None  # the section of --help it is listed in (None: the first, "options")
    choices: tuple | None = None
    switch: bool = False  # a flag that is on when given (argparse's store_true) rather than an option with a value
    bare_means_true: bool = False  # a boolean option given without a value means true


SETTING = "setting"  # the metadata key of a field's Setting


def setting(default: Any, help: str, **declared) -> Any:
    """A configuration field: ``lora_rank: int = setting(8, "LoRA rank ...", pipeline=True, sweep="4,8,16,32")``."""
    return field(default=default, metadata={SETTING: Setting(help, **declared)})


def declared(config: type) -> list[tuple[str, type, Any, Setting]]:
    """Name, value type (``int | None`` -> ``int``), default and Setting of each field of a configuration dataclass."""
    hints = typing.get_type_hints(config)
    return [(f.name, value_type(hints[f.name]), f.default, f.metadata[SETTING]) for f in fields(config)]


def value_type(hint) -> type:
    """The type of the values an option parses: ``int | None`` and ``Optional[int]`` -> ``int``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        [hint] = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint


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


# Every command of the project (each module's build_parser() is its command line): the option reference
# docs/cli.md is written from them (python -m components.cli > docs/cli.md), and tests/test_argument_effects.py
# holds an effect test for each of their options.
COMMANDS = (
    "steps/ingest.py",
    "steps/preprocess.py",
    "steps/train.py",
    "steps/evaluate.py",
    "steps/register.py",
    "steps/export.py",
    "steps/rate.py",
    "pipelines/run_pipeline.py",
    "pipelines/run_hpo.py",
    "components/generation.py",
    "components/stats.py",
    "components/text_tasks.py",
)


def module_name(path: str) -> str:
    """``components/generation.py`` -> ``components.generation``."""
    return path.removesuffix(".py").replace("/", ".")


def command_line(path: str) -> str:
    """How a user runs a command: scripts by path, the components' tools as modules."""
    return f"python -m {module_name(path)}" if path.startswith("components/") else f"python {path}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _values(action: argparse.Action) -> str:
    if action.choices:
        return ", ".join(map(str, action.choices))
    if action.nargs == 0:
        return "flag"
    kind = action.metavar or getattr(action.type, "__name__", None) or "text"
    return f"{kind} ..." if action.nargs in ("+", "*") else kind


def _default(action: argparse.Action, root) -> str:
    if action.required:
        return "required"
    if action.default in (None, "", argparse.SUPPRESS):
        return ""
    default = action.default
    if hasattr(default, "relative_to") and default.is_absolute():  # a folder of the repository, wherever it is cloned
        default = default.relative_to(root)
    return f"`{default}`"


def parser_reference(command: str, parser: argparse.ArgumentParser, root) -> list[str]:
    """One command's section of docs/cli.md: its description's first paragraph, then a row per option, in a table per
    argument group (each under its title, as ``--help`` shows them) where the command has groups of its own."""
    summary = (parser.description or "").strip().split("\n\n")[0].replace("\n", " ")
    lines = [f"## `{command}`", "", summary, ""]
    groups = [(group.title, [action for action in group._group_actions if action.dest != "help"]) for group in parser._action_groups]
    groups = [(title, actions) for title, actions in groups if actions]
    for title, actions in groups:
        lines += [f"**{title}**", ""] if len(groups) > 1 else []
        lines += ["| option | default | values | help |", "|---|---|---|---|"]
        for action in actions:
            name = ", ".join(f"`{option}`" for option in action.option_strings) or f"`{action.dest}`"
            help_text = (action.help or "") % {**vars(action), "prog": parser.prog}  # as argparse expands it
            lines.append(f"| {name} | {_default(action, root)} | {_cell(_values(action))} | {_cell(help_text)} |")
        lines.append("")
    return lines


def reference() -> str:
    """docs/cli.md: every command's options with their defaults, values and help, from the parsers themselves."""
    import importlib

    from components.settings import PROJECT_ROOT

    lines = [
        "# Command-line reference",
        "",
        "Written by `python -m components.cli > docs/cli.md` from the commands' own parsers (`tests/test_argument_effects.py` checks it is current).",
        "",
    ]
    for path in COMMANDS:
        lines += parser_reference(command_line(path), importlib.import_module(module_name(path)).build_parser(), PROJECT_ROOT)
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
