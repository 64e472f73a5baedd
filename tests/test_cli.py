"""The command-line helpers every step and tool shares: booleans, flags, --help before a task, usage errors."""

import argparse
import importlib
from pathlib import Path

import pytest

from components.cli import COMMANDS, ArgumentParser, exit_if_help_asked, module_name, option_flag, parse_bool, parser_reference


@pytest.mark.parametrize("text, value", [("true", True), (" TRUE ", True), ("1", True), ("yes", True), ("On", True),
                                         ("false", False), ("0", False), ("No", False), ("off", False), (True, True), (False, False)])
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
    assert out == "" and err == "usage: step [-h] [--compare-base COMPARE_BASE]\nstep: error: argument --compare-base: expected true or false, got 'maybe'\n"


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
    rows = ["| `-n`, `--num` | `3` | int | how many (tool: 3) |", "| `--names` |  | text ... | names \\| aliases, many |",
            "| `--where` | `data` | Path | a folder |", "| `--mode` | required | a, b |  |"]
    assert parser_reference("python tool.py", parser, tmp_path) == ["## `python tool.py`", "", "", "", *header, *rows, ""]
    parser.add_argument_group("speed").add_argument("--fast", action="store_true")
    parser.add_argument_group("empty")
    parser.add_argument("texts", nargs="+")
    assert parser_reference("python tool.py", parser, tmp_path) == [  # a table per group, under its title, as --help shows
        "## `python tool.py`", "", "", "",
        "**positional arguments**", "", *header, "| `texts` | required | text ... |  |", "",
        "**options**", "", *header, *rows, "",
        "**speed**", "", *header, "| `--fast` | `False` | flag |  |", ""]


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
