"""The command lines of the ``bash`` code blocks of README.md and its guides (docs/*.md), so that the tests run what a
user copies.

A test that runs the README's agent or launch command reads it from here: a documentation edit that
breaks a command breaks the test, and the two cannot drift apart. A command shown in the README's
brief and again in a guide is one command when the two copies are the same line; copies that differ
are two, and a test asking for the one fails.
"""

from __future__ import annotations

import re
import shlex
from functools import cache
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
DOCUMENTS = (README, *sorted((README.parent / "docs").glob("*.md")))
BASH_BLOCK = re.compile(r"^[ \t]*```bash\n(.*?)^[ \t]*```", re.S | re.M)


@cache
def command_lines() -> tuple[str, ...]:
    """Every command of every ``bash`` block, its trailing ``# comment`` removed, once however many documents show it."""
    lines = []
    for document in DOCUMENTS:
        for block in BASH_BLOCK.findall(document.read_text(encoding="utf-8")):
            for line in block.splitlines():
                command = line.split(" #", 1)[0].strip()
                if command and not command.startswith("#") and command not in lines:
                    lines.append(command)
    return tuple(lines)


def documentation_text() -> str:
    """The README and its guides, one after another."""
    return "\n".join(document.read_text(encoding="utf-8") for document in DOCUMENTS)


def commands_starting(prefix: str) -> list[str]:
    return [line for line in command_lines() if line == prefix or line.startswith(prefix + " ")]


def the_command(prefix: str, containing: str = "") -> str:
    """The one README command that starts with ``prefix`` and contains ``containing``."""
    found = [line for line in commands_starting(prefix) if containing in line]
    if len(found) != 1:
        raise AssertionError(f"README.md and docs/ should have exactly one command starting {prefix!r} with {containing!r}; found {found}")
    return found[0]


def environment_and_argv(command: str) -> tuple[dict[str, str], list[str]]:
    """A shell command line split into its leading ``NAME=value`` assignments and its argv."""
    argv = shlex.split(command)
    assignments = {}
    while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
        name, _, value = argv.pop(0).partition("=")
        assignments[name] = value
    return assignments, argv


def agent_commands() -> dict[str, str]:
    """The README's ``clearml-agent daemon`` commands (with the variables set before them) by the queue each serves."""
    commands = {}
    for line in command_lines():
        if environment_and_argv(line)[1][:2] != ["clearml-agent", "daemon"]:
            continue
        argv = shlex.split(line)
        queue = argv[argv.index("--queue") + 1]
        if commands.setdefault(queue, line) != line:
            raise AssertionError(f"README.md and docs/ start the agent of queue {queue!r} with two commands: {commands[queue]!r} and {line!r}")
    return commands
