"""Work in forked copies of the test process: no interpreter or torch start-up, the same objects in memory.

A child computes on one torch thread (a fork of a process whose thread pool ran can deadlock in
it otherwise), ends with ``os._exit`` (0 when the work returned, 1 with the traceback printed when
it raised), and is killed when it outlives its deadline, which fails the test.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable

import torch

CHILD_TIMEOUT_S = 120


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
