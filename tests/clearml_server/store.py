"""The server's state: entities kept in memory as clearml-server returns them, saved as JSON.

One lock guards everything (requests are served by threads). ``state.json`` in the state
directory holds the entities, the events and the file URLs scheduled for deletion; a server
started on a state directory that has one continues from it, as clearml-server does from its
databases. ``calls.jsonl`` has one line per API call (endpoint, request keys, result code),
so a test can see what a client called.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

COMPANY_ID = "d1bd92a3b039400cbafc60a7a5b1e52b"
COMPANY_NAME = "clearml-test-server"
STATE_FILE = "state.json"
CALLS_FILE = "calls.jsonl"
COLLECTIONS = ("projects", "tasks", "models", "queues", "workers")
FLUSH_INTERVAL_S = 5.0  # state.json while serving (it is written whole, events included); always on stop


def new_id() -> str:
    """``apiserver/database/utils.py:id``: a uuid4 without dashes."""
    return uuid.uuid4().hex


def now() -> str:
    """Dates as the server's JSON encoder writes them: ISO 8601, UTC."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Store:
    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.projects: dict[str, dict] = {}
        self.tasks: dict[str, dict] = {}
        self.models: dict[str, dict] = {}
        self.queues: dict[str, dict] = {}
        self.workers: dict[str, dict] = {}
        self.events: list[dict] = []
        self.urls_to_delete: list[dict] = []  # database/model/url_to_delete.py: UrlToDelete
        if (self.state_dir / STATE_FILE).exists():
            self._restore(load_state(self.state_dir))
        self._dirty = False
        self._closed = threading.Event()
        self._calls = open(self.state_dir / CALLS_FILE, "a", encoding="utf-8")
        self._flusher = threading.Thread(target=self._flush_loop, name="state-flusher", daemon=True)
        self._flusher.start()

    def _restore(self, state: dict[str, Any]) -> None:
        for name in COLLECTIONS:
            self.collection(name).update(state[name])
        self.events = state["events"]
        self.urls_to_delete = state["urls_to_delete"]

    def collection(self, name: str) -> dict[str, dict]:
        return getattr(self, name)

    def mark_dirty(self) -> None:
        self._dirty = True

    def log_call(self, record: dict[str, Any]) -> None:
        with self.lock:
            self._calls.write(json.dumps(record) + "\n")
            self._calls.flush()

    def save(self) -> None:
        with self.lock:
            state = {name: self.collection(name) for name in COLLECTIONS}
            state["events"] = self.events
            state["urls_to_delete"] = self.urls_to_delete
            text = json.dumps(state, indent=1, default=str)
            self._dirty = False
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.state_dir / STATE_FILE)

    def _flush_loop(self) -> None:
        while not self._closed.wait(FLUSH_INTERVAL_S):
            if self._dirty:
                self.save()

    def close(self) -> None:
        self._closed.set()
        self._flusher.join()
        self.save()
        with self.lock:
            self._calls.close()


def load_state(state_dir: Path) -> dict[str, Any]:
    """What a test reads afterwards: the saved entities and events."""
    return json.loads((Path(state_dir) / STATE_FILE).read_text(encoding="utf-8"))


def load_calls(state_dir: Path) -> list[dict[str, Any]]:
    lines = (Path(state_dir) / CALLS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line]


# Calls clearml-server refuses as well, which the clients expect and handle.
EXPECTED_UNKNOWN = {
    # clearml-agent calls these; only the enterprise server has them
    "workers.get_runtime_properties",
    "workers.set_runtime_properties",
}


def unimplemented_calls(state_dir: Path) -> list[dict[str, Any]]:
    """Calls refused because this server lacks an endpoint or a field (not because the
    request was wrong): each one is a gap in the test server to fill."""
    return [
        call
        for call in load_calls(state_dir)
        if (call.get("code") == 404 and "endpoint" in call and call["endpoint"] not in EXPECTED_UNKNOWN)
        or "does not implement" in call.get("msg", "")
    ]


def timestamp_ms() -> int:
    return int(time.time() * 1000)
