"""Work in forked copies of the test process: no interpreter or torch start-up, the same objects in memory.

A child computes on one torch thread (a fork of a process whose thread pool ran can deadlock in
it otherwise), ends with ``os._exit`` (0 when the work returned, 1 with the traceback printed when
it raised), and is killed when it outlives its deadline, which fails the test.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import locale
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

CHILD_TIMEOUT_S = 120

# Imported here, in the parent, when installed: in forked children a ClearML thread importing IPython (it looks for a notebook)
# while the step drew a matplotlib figure left the canvas reading a half-imported module ("partially initialized module
# 'IPython' has no attribute 'version_info"; 1 run in 3 of tests/test_rate_step.py, never in the steps run as scripts).
if importlib.util.find_spec("IPython") is not None:
    import IPython  # noqa: F401
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


def _as_a_new_process(env: dict[str, str], stdout: int, stderr: int) -> None:
    """In a forked child: ``env`` as the whole environment (and its locale), the repository root as the working directory,
    ``stdout`` and ``stderr`` as file descriptors 1 and 2 (and ``sys.stdout``, ``sys.stderr``, which pytest's capture replaced)."""
    os.environ.clear()
    os.environ.update(env)
    locale.setlocale(locale.LC_ALL, "")  # the locale env names (the default encoding of open(), as in a new process)
    tempfile.tempdir = None  # TMPDIR as env names it (tempfile keeps the folder it chose first)
    _reread_hub_offline()
    os.chdir(ROOT)
    for number, descriptor in ((1, stdout), (2, stderr)):
        os.dup2(descriptor, number)
    parent_stdout = (sys.stdout, sys.__stdout__)
    io_encoding = os.environ.get("PYTHONIOENCODING", "").split(":")[0] or None  # as in a new process: else the locale's
    sys.stdout, sys.stderr = (open(number, "w", closefd=False, encoding=io_encoding) for number in (1, 2))
    # A library's log handler made in the parent (optuna's) writes to the stream the parent had then (under pytest, its
    # capture; under mutmut, its progress spinner); in a new process it would write to this one's stderr (or stdout).
    # Assigned, not setStream: that flushes the old stream, which may be closed.
    for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values()):
        for handler in getattr(logger, "handlers", ()):
            if type(handler) is logging.StreamHandler:
                handler.stream = sys.stdout if any(handler.stream is stream for stream in parent_stdout) else sys.stderr


def _reread_hub_offline() -> None:
    """``HF_HUB_OFFLINE`` as this environment says: the Hugging Face libraries read it once, when the parent imported them
    (without it, a hub id that cannot load is a minute of retries instead of an error at once)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    for module, attribute in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
        if module in sys.modules:
            setattr(sys.modules[module], attribute, offline)


def _call_main(main: Callable[[list[str]], object], argv: list[str]) -> None:
    """``main(argv)`` as its script runs it: an uncaught ``SystemExit`` is the exit status (start_child ends the child)."""
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


def run_main(main: Callable[[list[str]], object], argv: list[str], env: dict[str, str], timeout_s: float = CHILD_TIMEOUT_S) -> Completed:
    """``main(argv)`` in a forked child with ``env`` as its whole environment, from the repository root, as its script
    would run it, without the seconds of a new interpreter's imports."""
    with tempfile.TemporaryDirectory() as folder:
        outputs = [Path(folder) / "stdout", Path(folder) / "stderr"]

        def work() -> None:
            _as_a_new_process(env, *(os.open(path, os.O_WRONLY | os.O_CREAT) for path in outputs))
            # Where a child that hangs is stuck, every thread's stack, in its stderr before the parent kills it.
            faulthandler.dump_traceback_later(max(timeout_s - 2, 1), file=sys.stderr)
            _call_main(main, argv)

        try:
            [status] = wait_children([start_child(work)], timeout_s)
        except AssertionError as overran:
            raise AssertionError(f"{overran}; its stderr ends:\n{outputs[1].read_text(encoding='utf-8')[-20000:]}") from None
        stdout, stderr = (path.read_text(encoding="utf-8") for path in outputs)
    return Completed(os.waitstatus_to_exitcode(status), stdout, stderr)


class ForkedProcess:
    """``main(argv)`` running in a forked child (as ``run_main`` runs it) with the part of ``subprocess.Popen``'s interface
    that tests of a long-running command use: ``stdout`` (stderr merged) as a text pipe, ``poll``, ``wait``, ``send_signal``."""

    def __init__(self, main: Callable[[list[str]], object], argv: list[str], env: dict[str, str]):
        read, write = os.pipe()

        def work() -> None:
            os.close(read)
            _as_a_new_process(env, write, write)
            _call_main(main, argv)

        self.pid = start_child(work)
        os.close(write)
        self.stdout = open(read, encoding="utf-8")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, signal_number: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal_number)
