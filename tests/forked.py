"""Work in forked copies of the test process: no interpreter or torch start-up, the same objects in memory.

A child computes on one torch thread (a fork of a process whose thread pool ran can deadlock in
it otherwise), ends with ``os._exit`` (0 when the work returned, 1 with the traceback printed when
it raised), and is killed when it outlives its deadline, which fails the test.
"""

from __future__ import annotations

import locale
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

CHILD_TIMEOUT_S = 120
ROOT = Path(__file__).resolve().parent.parent


def start_child(work: Callable[[], None]) -> int:
    """Fork a child that runs ``work``; returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            torch.set_num_threads(1)
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_children(pids: list[int], timeout_s: float = CHILD_TIMEOUT_S) -> list[int]:
    """The wait statuses of the children, in order; all are killed, and the test fails, past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[int, int] = {}
    while len(statuses) < len(pids):
        for pid in pids:
            if pid not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[pid] = status
        if time.monotonic() > deadline:
            for pid in set(pids) - statuses.keys():
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            raise AssertionError(f"a forked run took over {timeout_s} s")
        time.sleep(0.005)
    return [statuses[pid] for pid in pids]


def in_child(work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child; returns its wait status."""
    [status] = wait_children([start_child(work)])
    return status


def exited_cleanly(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


@dataclass
class Completed:
    """What a forked entry point left: its exit status and what it printed (as ``subprocess.run`` reports it)."""

    returncode: int
    stdout: str
    stderr: str


def run_main(main: Callable[[list[str]], object], argv: list[str], env: dict[str, str], timeout_s: float = CHILD_TIMEOUT_S) -> Completed:
    """``main(argv)`` in a forked child with ``env`` as its whole environment, from the repository root, as its script
    would run it (an uncaught ``SystemExit`` is the exit status), without the seconds of a new interpreter's imports."""
    with tempfile.TemporaryDirectory() as folder:
        outputs = [Path(folder) / "stdout", Path(folder) / "stderr"]

        def work() -> None:
            os.environ.clear()
            os.environ.update(env)
            locale.setlocale(locale.LC_ALL, "")  # the locale env names (the default encoding of open(), as in a new process)
            os.chdir(ROOT)
            for number, path in enumerate(outputs, start=1):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT), number)
            sys.stdout, sys.stderr = (open(number, "w", closefd=False) for number in (1, 2))  # pytest's capture replaced them
            try:
                main(argv)
            except SystemExit as exit:
                sys.stdout.flush()
                if exit.code not in (None, 0):
                    if not isinstance(exit.code, int):
                        print(exit.code, file=sys.stderr)
                    sys.stderr.flush()
                    os._exit(exit.code if isinstance(exit.code, int) else 1)
            sys.stdout.flush()

        [status] = wait_children([start_child(work)], timeout_s)
        stdout, stderr = (path.read_text(encoding="utf-8") for path in outputs)
    return Completed(os.waitstatus_to_exitcode(status), stdout, stderr)
