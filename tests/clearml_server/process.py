"""The test server in a process of its own, for tests that fork.

A child forked from a process whose server threads are answering a request inherits the locks those
threads hold, with no thread left to release them: a forked step run beside an in-process
``ClearMLTestServer`` hung once on CI (past its 120 s). ``ServerProcess`` runs
``python -m tests.clearml_server`` instead, so the test process holds no server thread when it forks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .__main__ import STOP_SIGNALS
from .server import ENVIRONMENT_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 10


class ServerProcess:
    """``with ServerProcess(state_dir) as server:`` the server on free ports; ``server.environment()`` points a client at it."""

    def __init__(self, state_dir: Path):
        self._command = [sys.executable, "-m", "tests.clearml_server", "--port", "0", "--state-dir", str(state_dir)]
        self._environment: dict[str, str] = {}

    def __enter__(self) -> ServerProcess:
        self._process = subprocess.Popen(self._command, cwd=ROOT, stdout=subprocess.PIPE, text=True, encoding="utf-8")
        while not self._environment.keys() >= set(ENVIRONMENT_VARIABLES):
            line = self._process.stdout.readline()
            if not line:
                self._stop()
                raise RuntimeError(f"{' '.join(self._command)} exited {self._process.returncode} before it printed its variables")
            name, _, value = line.rstrip("\n").partition("=")
            self._environment[name] = value
        return self

    def environment(self) -> dict[str, str]:
        """What ``ClearMLTestServer.environment`` gives, as the server process printed it."""
        return dict(self._environment)

    @property
    def files_host(self) -> str:
        return self._environment["CLEARML_FILES_HOST"]

    def _stop(self) -> None:
        self._process.send_signal(STOP_SIGNALS[0])
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
            raise
        finally:
            self._process.stdout.close()

    def __exit__(self, *exc) -> None:
        self._stop()
        assert self._process.returncode == 0, f"the test server process exited {self._process.returncode}"
