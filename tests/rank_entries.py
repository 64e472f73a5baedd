"""Entry functions for ranks that ``tests/test_launch.py`` starts with ``LocalRanks`` (``tests.rank_entries:<name>``):
each gets rank 0's arguments as an ``argparse.Namespace``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STARTED_ENVIRONMENT = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PYTHONPATH", "PYTHONUNBUFFERED")


def record(args) -> None:
    """Write this rank's environment and arguments to ``args.folder/rank<RANK>.json``, and print two lines."""
    print(f"рank says {args.word}")
    print("second line", file=sys.stderr)
    values = {"environment": {name: os.environ.get(name) for name in STARTED_ENVIRONMENT}, "arguments": vars(args), "pid": os.getpid()}
    (Path(args.folder) / f"rank{os.environ['RANK']}.json").write_text(json.dumps(values), encoding="utf-8")


def fail(args) -> None:
    sys.exit(args.status)


def undecodable(args) -> None:
    """Write bytes that are not UTF-8, then a line that is."""
    os.write(1, b"\xff\xfe bytes\n")
    print("после")


def stdin_of(args) -> None:
    """Write what this rank's standard input is to ``args.folder/stdin<RANK>``."""
    (Path(args.folder) / f"stdin{os.environ['RANK']}").write_text(os.readlink("/proc/self/fd/0"), encoding="utf-8")


def wait(args) -> None:
    """Write this rank's pid to ``args.folder/pid<RANK>``, then wait until killed."""
    (Path(args.folder) / f"pid{os.environ['RANK']}").write_text(str(os.getpid()), encoding="utf-8")
    time.sleep(600)


def leaves_a_child(args) -> None:
    """Start a process that keeps this rank's output open for two minutes (its pid in ``args.folder/child<RANK>``), then end."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (Path(args.folder) / f"child{os.environ['RANK']}").write_text(str(child.pid), encoding="utf-8")
    print("started")
