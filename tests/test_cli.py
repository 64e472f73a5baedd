"""The command-line helpers every step and tool shares: booleans, flags, --help before a task, usage errors, options
declared as a dataclass's fields, and every option's help and default."""

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from cli.options import ArgumentParser, add_settings, exit_if_help_asked, help_with_default, option_flag, parse_bool
from components.settings import declared, setting, value_type
from tools.cli_reference import COMMANDS, module_name, parser_reference


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        (" TRUE ", True),
        ("1", True),
        ("yes", True),
        ("On", True),
        ("false", False),
        ("0", False),
        ("No", False),
        ("off", False),
        (True, True),
        (False, False),
    ],
)
def test_a_boolean_is_read_from_any_usual_spelling(text, value):
    assert parse_bool(text) is value


def test_anything_else_is_refused_in_one_sentence_and_a_flag_is_its_dashed_name(capsys):
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected true or false, got 'maybe'$"):
        parse_bool("maybe")
    assert option_flag("max_new_tokens") == "--max-new-tokens"
    parser = ArgumentParser(prog="step")
    parser.add_argument("--compare-base", type=parse_bool)
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["--compare-base", "maybe"])
    assert refused.value.code == 1  # argparse's own is 2: every error a user causes exits 1
    out, err = capsys.readouterr()
    assert (
        out == ""
        and err == "usage: step [-h] [--compare-base COMPARE_BASE]\nstep: error: argument --compare-base: expected true or false, got 'maybe'\n"
    )


def test_help_is_answered_before_anything_else_and_only_when_asked(capsys):
    parser = ArgumentParser(prog="step", description="Does a step.")
    parser.add_argument("--lora-rank", type=int, required=True)
    exit_if_help_asked(parser, ["--lora-rank", "8"])  # no help asked: nothing happens, not even the parse
    exit_if_help_asked(parser, [])
    for asked in (["-h"], ["--help", "--lora-rank", "x"]):
        with pytest.raises(SystemExit) as helped:
            exit_if_help_asked(parser, asked)
        assert helped.value.code == 0 and "Does a step." in capsys.readouterr().out


def test_a_commands_reference_has_a_row_per_option_with_its_default_values_and_help(tmp_path):
    parser = ArgumentParser(prog="tool")
    parser.add_argument("-n", "--num", type=int, default=3, help="how many (%(prog)s: %(default)s)")
    parser.add_argument("--names", nargs="*", help="names | aliases,\nmany")
    parser.add_argument("--where", type=Path, default=tmp_path / "data", help="a folder")
    parser.add_argument("--mode", choices=["a", "b"], required=True)
    header = ["| option | default | values | help |", "|---|---|---|---|"]
    rows = [
        "| `-n`, `--num` | `3` | int | how many (tool: 3) |",
        "| `--names` |  | text ... | names \\| aliases, many |",
        "| `--where` | `data` | Path | a folder |",
        "| `--mode` | required | a, b |  |",
    ]
    assert parser_reference("python tool.py", parser, tmp_path) == ["## `python tool.py`", "", "", "", *header, *rows, ""]
    parser.add_argument_group("speed").add_argument("--fast", action="store_true")
    parser.add_argument_group("empty")
    parser.add_argument("texts", nargs="+")
    assert parser_reference("python tool.py", parser, tmp_path) == [  # a table per group, under its title, as --help shows
        "## `python tool.py`",
        "",
        "",
        "",
        "**positional arguments**",
        "",
        *header,
        "| `texts` | required | text ... |  |",
        "",
        "**options**",
        "",
        *header,
        *rows,
        "",
        "**speed**",
        "",
        *header,
        "| `--fast` | `False` | flag |  |",
        "",
    ]


def docstring_commands() -> list[str]:
    """The commands whose ``--help`` description is their module's docstring."""
    return [path for path in COMMANDS if (module := importlib.import_module(module_name(path))).build_parser().description == module.__doc__]


@pytest.mark.parametrize("path", docstring_commands())
def test_help_shows_the_commands_docstring_with_its_example_lines_as_written(path):
    """The docstrings hold indented example commands: ``--help`` keeps their lines instead of reflowing them into prose."""
    module = importlib.import_module(module_name(path))
    examples = [line for line in module.__doc__.splitlines() if line.startswith("    python ")]
    assert examples
    assert set(examples) <= set(module.build_parser().format_help().splitlines())


def every_option() -> list:
    """(command, option) for every option of every command, ``--help`` aside."""
    return [
        pytest.param(path, action, id=f"{path} {action.option_strings[0] if action.option_strings else action.dest}")
        for path in COMMANDS
        for action in importlib.import_module(module_name(path)).build_parser()._actions
        if action.dest != "help"
    ]


@pytest.mark.parametrize("path, action", every_option())
def test_every_option_of_every_command_shows_its_help_and_default(path, action):
    """A switch (present or absent) and a required argument have no default to show; an option whose default is None
    says in its help what leaving it unset does ("default: once per epoch")."""
    shown = help_with_default(action)
    assert action.help and "%(default)" not in action.help
    assert action.nargs == 0 or action.required or "default" in shown


def test_an_options_default_is_shown_as_typed_and_a_help_that_states_it_is_left_alone():
    parser = ArgumentParser("tool")
    parser.add_argument("--share", type=float, default=0.5, help="50%% of it")
    parser.add_argument("--compare-base", type=parse_bool, default=True, help="score the base")
    parser.add_argument("--eval-every", type=int, help="steps between validations (default: once per epoch)")
    parser.add_argument("--where", help="a folder")
    parser.add_argument("--ranks", default="4,8", help="values (default: 4,8)")
    parser.add_argument("--name", default="a%b", help="named")
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--mode", default="a", required=True, help="the mode")
    parser.add_argument("--resume", action="store_true", help="continue")
    assert parser.prog == "tool"
    text = " ".join(parser.format_help().split())
    assert "50% of it (default: 0.5)" in text and "score the base (default: true)" in text and "named (default: a%b)" in text
    assert "(default: once per epoch)" in text and "continue (default" not in text and "None" not in text
    shown = {action.dest: help_with_default(action) for action in parser._actions if action.dest != "help"}
    assert shown == {
        "share": "50%% of it (default: 0.5)",
        "compare_base": "score the base (default: true)",
        "eval_every": "steps between validations (default: once per epoch)",
        "where": "a folder",
        "ranks": "values (default: 4,8)",
        "name": "named (default: a%%b)",
        "count": "(default: 3)",
        "mode": "the mode",
        "resume": "continue",
    }


def test_an_options_type_is_its_fields_without_none():
    assert [value_type(hint) for hint in (int | None, Optional[float], str, bool)] == [int, float, str, bool]  # noqa: UP045


def test_a_declared_configuration_is_an_option_per_field_with_its_type_default_help_and_group():
    @dataclass(frozen=True)
    class Declared:  # declared here, not at import: the test sees what setting() makes when it runs
        rate: float = setting(0.1, "a rate", group="training")
        steps: int | None = setting(None, "steps (default: all)")
        fast: bool = setting(True, "go fast")
        resume: bool = setting(False, "continue", switch=True)
        bare: bool = setting(False, "convert too", bare_means_true=True)
        mode: str = setting("a", "the mode", choices=("a", "b"))

    assert [(name, kind, default, declared_as.help) for name, kind, default, declared_as in declared(Declared)] == [
        ("rate", float, 0.1, "a rate"),
        ("steps", int, None, "steps (default: all)"),
        ("fast", bool, True, "go fast"),
        ("resume", bool, False, "continue"),
        ("bare", bool, False, "convert too"),
        ("mode", str, "a", "the mode"),
    ]
    parser = ArgumentParser(prog="tool")
    add_settings(parser, Declared)
    assert vars(parser.parse_args([])) == {"rate": 0.1, "steps": None, "fast": True, "resume": False, "bare": False, "mode": "a"}
    given = parser.parse_args(["--rate", "0.5", "--steps", "3", "--fast", "false", "--resume", "--bare", "--mode", "b"])
    assert vars(given) == {"rate": 0.5, "steps": 3, "fast": False, "resume": True, "bare": True, "mode": "b"}
    assert parser.parse_args(["--bare", "false"]).bare is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])
    assert [group.title for group in parser._action_groups if group._group_actions][-1] == "training"
    assert [action.dest for action in parser._action_groups[-1]._group_actions] == ["rate"]
    assert {action.dest: action.help for action in parser._actions if action.dest != "help"} == {
        "rate": "a rate",
        "steps": "steps (default: all)",
        "fast": "go fast",
        "resume": "continue",
        "bare": "convert too",
        "mode": "the mode",
    }
