"""The command lines of README.md's ``bash`` code blocks, so that the tests run what a user copies.

A test that runs the README's agent or launch command reads it from here: a README edit that
breaks a command breaks the test, and the two cannot drift apart.
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BASH_BLOCK = re.compile(r"^[ \t]*```bash\n(.*?)^[ \t]*```", re.S | re.M)


@lru_cache(maxsize=None)
def command_lines() -> tuple[str, ...]:
    """Every command of every ``bash`` block, its trailing ``# comment`` removed."""
    lines = []
    for block in BASH_BLOCK.findall(README.read_text(encoding="utf-8")):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return tuple(lines)


def commands_starting(prefix: str) -> list[str]:
    return [line for line in command_lines() if line == prefix or line.startswith(prefix + " ")]


def the_command(prefix: str, containing: str = "") -> str:
    """The one README command that starts with ``prefix`` and contains ``containing``."""
    found = [line for line in commands_starting(prefix) if containing in line]
    if len(found) != 1:
        raise AssertionError(f"README.md should have exactly one command starting {prefix!r} with {containing!r}; found {found}")
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
        commands[argv[argv.index("--queue") + 1]] = line
    return commands
