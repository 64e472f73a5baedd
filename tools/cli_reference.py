"""docs/cli.md, the reference of every command's options, written from the commands' own parsers.

python -m tools.cli_reference > docs/cli.md
"""

from __future__ import annotations

import argparse

# Every command of the project (each module's build_parser() is its command line): the option reference
# docs/cli.md is written from them, and tests/test_argument_effects.py holds an effect test for each of their options.
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
    "tools/generate.py",
    "tools/serve.py",
    "tools/stats.py",
    "tools/text_tasks.py",
)


def module_name(path: str) -> str:
    """``tools/generate.py`` -> ``tools.generate``."""
    return path.removesuffix(".py").replace("/", ".")


def command_line(path: str) -> str:
    """How a user runs a command: steps and pipelines by path, the tools as modules."""
    return f"python -m {module_name(path)}" if path.startswith("tools/") else f"python {path}"


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
        "Written by `python -m tools.cli_reference > docs/cli.md` from the commands' own parsers (`tests/test_argument_effects.py` checks it is current).",
        "",
    ]
    for path in COMMANDS:
        lines += parser_reference(command_line(path), importlib.import_module(module_name(path)).build_parser(), PROJECT_ROOT)
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference(), end="")
