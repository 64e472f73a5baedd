"""The train step's ``--nproc-per-node N``: this process is rank 0 and starts ranks 1..N-1 on this machine.

Each started rank gets the environment torchrun gives its workers (``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and runs an entry function
(``module:function``) with rank 0's parsed arguments, so a task run by an agent (no command line,
arguments from the task) starts its ranks with the arguments edited in the UI. Their output
(stdout and stderr) is forwarded, line by line and prefixed ``[rank r]``, to this process's
stdout, which ClearML captures into the task's console log. A started rank dies with this process
(``PR_SET_PDEATHSIG``), so a killed rank 0 leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from components.distributed.world import RankLostError

ROOT = Path(__file__).resolve().parents[2]
WORKER_MODULE = "components.distributed.worker"
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on this machine now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _exit_description(code: int) -> str:
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"


class LocalRanks:
    """Ranks 1..N-1 of this machine, started by rank 0; a context manager that stops them on the way out.

    Leaving the block normally waits for every rank and fails if one did; leaving it with an error
    kills the ranks still running and, when one of them had already ended, names it (its end is
    what broke rank 0's collective).
    """

    def __init__(self, nproc_per_node: int, entry: str, arguments: dict, *, node_rank: int = 0, nodes: int = 1):
        world_size = nproc_per_node * nodes
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ.update(WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(nproc_per_node), RANK=str(node_rank * nproc_per_node), LOCAL_RANK="0")
        self.processes: dict[int, subprocess.Popen] = {}
        self.forwarders: list[threading.Thread] = []
        python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        for local_rank in range(1, nproc_per_node):
            rank = node_rank * nproc_per_node + local_rank
            environment = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(local_rank), "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1"}
            process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, entry, json.dumps(arguments, default=str)],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
            self.processes[rank] = process
            forwarder = threading.Thread(target=self._forward, args=(rank, process), daemon=True)
            forwarder.start()
            self.forwarders.append(forwarder)

    @staticmethod
    def _forward(rank: int, process: subprocess.Popen) -> None:
        for line in process.stdout:
            sys.stdout.write(f"[rank {rank}] {line}")
            sys.stdout.flush()

    def ended(self) -> list[str]:
        """'rank r was killed by SIGKILL' for each rank that ended unsuccessfully."""
        return [f"rank {rank} {_exit_description(process.returncode)}" for rank, process in self.processes.items() if process.poll() not in (None, 0)]

    def __enter__(self) -> LocalRanks:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        for process in self.processes.values():
            if error is None:
                process.wait()
            elif isinstance(error, RankLostError):  # a peer's end broke the collective: give it a moment to be seen
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        failed = self.ended()
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for forwarder in self.forwarders:
            forwarder.join(timeout=5)
        if failed and (error is None or isinstance(error, RankLostError)):
            raise RankLostError(
                f"Training stopped: {', '.join(failed)} (its output above says why); rerun with --resume to continue from the last checkpoint."
            ) from None
        return False
