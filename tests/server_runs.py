"""Code that uses the ClearML SDK, run against the test ClearML server in a forked copy of the test process
(``tests/forked.py``: the SDK is never imported by the test process itself, whose later forks it would hang)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from forked import run_main

from tests.clearml_server.process import ServerProcess
from tests.e2e.server_api import ServerApi


@contextmanager
def running_server(clearml_home: dict, state_dir: Path) -> Iterator[SimpleNamespace]:
    """A test server in its own process; ``env`` sets the SDK up for it (its default configuration otherwise),
    ``api`` calls it directly."""
    with ServerProcess(state_dir) as running:
        env = {**clearml_home, **running.environment()}
        yield SimpleNamespace(env=env, api=ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"]))


@pytest.fixture
def server(clearml_home, tmp_path):
    """A test server for one test (imported by the test files that use it)."""
    with running_server(clearml_home, tmp_path / "state") as running:  # not in this process: the tests fork
        yield running


def arguments_of(task: dict) -> dict[str, str]:
    """A task's ``Args/`` section as the server holds it (``tasks.get_by_id``), name -> value."""
    return {name: entry["value"] for name, entry in task["hyperparams"].get("Args", {}).items()}


def on_server(server: SimpleNamespace, tmp_path: Path, work: Callable[[], object]) -> object:
    """``work()``'s JSON value, computed in a forked run with the SDK set up for ``server``."""
    output = tmp_path / f"work-{len(list(tmp_path.glob('work-*')))}.json"

    def main(_argv) -> None:
        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(False)
        output.write_text(json.dumps(work()), encoding="utf-8")

    completed = run_main(main, [], server.env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(output.read_text(encoding="utf-8"))
