"""What the human-evaluation tests share: evaluate outputs to rate, and ``steps/rate.py`` run as a user runs it."""

from __future__ import annotations

import html
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = {"system-one": "первый ответ", "system-two": "второй ответ"}  # folder name -> how its answers begin
START_TIMEOUT_S = 60


def write_evaluations(
    folder: Path,
    rows: int = 12,
    systems: dict[str, str] = SYSTEMS,
    answers: dict[str, list[str]] | None = None,
    instructions: list[str] | None = None,
) -> dict[str, Path]:
    """One evaluate output folder per system, its predictions.tsv over the same test rows."""
    paths = {}
    for system, prefix in systems.items():
        frame = pd.DataFrame(
            {
                "instruction": instructions or [f"Инструкция {i}" for i in range(rows)],
                "input": [f"вход {i}" for i in range(rows)],
                "output": [f"эталон {i}" for i in range(rows)],
                "prediction": (answers or {}).get(system) or [f"{prefix} {i}" for i in range(rows)],
            }
        )
        (folder / system).mkdir(parents=True)
        frame.to_csv(folder / system / "predictions.tsv", sep="\t", index=False)
        paths[system] = folder / system / "predictions.tsv"
    return paths


def system_of(answer: str, systems: dict[str, str] = SYSTEMS) -> str:
    return next(system for system, prefix in systems.items() if answer.startswith(prefix))


@contextmanager
def serving(store, port: int = 0, on_vote: Callable[[], None] = lambda: None) -> Iterator[str]:
    """The rating app served in this process (on a free port by default): its base address."""
    from components.human_eval.web import start_server

    server = start_server(store, "127.0.0.1", port, on_vote=on_vote)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=20)


def page(url: str, data: dict | None = None) -> str:
    body = urllib.parse.urlencode(data).encode() if data else None
    with urllib.request.urlopen(url, data=body, timeout=20) as response:
        return response.read().decode()


def shown_item(text: str) -> dict[str, str] | None:
    """The position and texts of the item on a rating page (None on the page that says all are done)."""
    found = {name: re.search(rf'<div class="text" id="{name}">(.*?)</div>', text, re.S) for name in ("instruction", "input", "left", "right")}
    position = re.search(r'name="position" value="(\d+)"', text)
    if position is None:
        return None
    return {"position": position.group(1), **{name: html.unescape(match.group(1)) if match else "" for name, match in found.items()}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RatingCommand:
    """``steps/rate.py`` in a subprocess (or, ``forked``, its ``main`` in a forked copy of this process: no imports to
    wait for), serving: its rater links (and the results link) read from its output."""

    def __init__(self, env: dict, arguments: list[str], forked: bool = False):
        if forked:
            from forked import ForkedProcess

            from steps import rate

            self.process = ForkedProcess(rate.main, arguments, env)
        else:
            self.process = subprocess.Popen(
                [sys.executable, "steps/rate.py", *arguments], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.links: dict[str, str] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:  # the output ended (the command exited) or the deadline passed
                self.kill()
                raise AssertionError(f"steps/rate.py did not start serving (exit status {self.process.returncode}):\n{''.join(self.output)}")
            if line.startswith("  ") and ": http://" in line:
                rater, link = line.strip().split(": ", 1)
                self.links[rater] = link
            elif line.startswith("Results: "):
                self.results = line.split(": ", 1)[1].strip()
            elif line.startswith("Serving"):
                return

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"steps/rate.py still ran after {timeout} s:\n{''.join(self.output)}") from None
        time.sleep(0.2)  # the reader thread takes the last lines
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def rating_commands():
    """Start ``steps/rate.py`` commands (``rating_commands(env, arguments[, forked])``); any still running when the test ends is killed."""
    started: list[RatingCommand] = []

    def start(env: dict, arguments: list[str], forked: bool = False) -> RatingCommand:
        started.append(RatingCommand(env, arguments, forked))
        return started[-1]

    yield start
    for command in started:
        command.kill()
