"""A small client of ClearML's REST API for end-to-end assertions.

It speaks to the test server and to a real ClearML server alike, so assertions made
through it hold for both (state files exist only for the test server).
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

TERMINAL_STATUSES = ("completed", "failed", "stopped", "published", "closed")


class ApiError(Exception):
    def __init__(self, endpoint: str, code: int, subcode: int, message: str):
        super().__init__(f"{endpoint} failed with {code}/{subcode}: {message}")
        self.code, self.subcode, self.message = code, subcode, message


class ServerApi:
    def __init__(self, api_host: str, access_key: str, secret_key: str):
        self.api_host = api_host.rstrip("/")
        self._basic = "Basic " + base64.b64encode(f"{access_key}:{secret_key}".encode()).decode()
        self._token: str | None = None

    def _post(self, endpoint: str, body: bytes, authorization: str, content_type: str = "application/json") -> dict:
        request = urllib.request.Request(
            f"{self.api_host}/{endpoint}", data=body, method="POST", headers={"Content-Type": content_type, "Authorization": authorization}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        meta = body["meta"]
        if meta["result_code"] != 200:
            raise ApiError(endpoint, meta["result_code"], meta["result_subcode"], meta["result_msg"])
        return body["data"]

    def _authorization(self) -> str:
        if self._token is None:
            self._token = self._post("auth.login", b"{}", self._basic)["token"]
        return f"Bearer {self._token}"

    def call(self, endpoint: str, **data: Any) -> dict:
        """``service.action`` with ``data`` as its request; returns the response data."""
        return self._post(endpoint, json.dumps(data).encode(), self._authorization())

    def call_batch(self, endpoint: str, items: list[dict]) -> dict:
        """A batched call (``events.add_batch``): one JSON object per line."""
        body = "\n".join(json.dumps(item) for item in items).encode()
        return self._post(endpoint, body, self._authorization(), "application/json-lines")

    def task(self, task_id: str) -> dict:
        return self.call("tasks.get_by_id", task=task_id)["task"]

    def tasks(self, **filters: Any) -> list[dict]:
        return self.call("tasks.get_all", **filters)["tasks"]

    def queue_id(self, name: str, create: bool = False) -> str:
        """The id of queue ``name``; ``create``: created when missing (the end-to-end flows never
        create one: the README's agent commands do)."""
        found = self.call("queues.get_all", name=f"^{re.escape(name)}$", only_fields=["id"])["queues"]
        if not found and create:
            return self.call("queues.create", name=name)["id"]
        [queue] = found
        return queue["id"]

    def hyperparameter(self, task_id: str, section: str, name: str) -> str | None:
        params = self.call("tasks.get_hyper_params", tasks=[task_id])["params"][0]["hyperparams"]
        return next((p["value"] for p in params if p["section"] == section and p["name"] == name), None)

    def models_of(self, task_id: str) -> list[dict]:
        """The models a task registered (its output models)."""
        return self.call("models.get_all", task=[task_id])["models"]

    def scalar_iterations(self, task_id: str, metric: str, variant: str) -> list[int]:
        """The iterations at which a task reported ``metric`` / ``variant``, as the UI plots them."""
        histogram = self.call("events.scalar_metrics_iter_histogram", task=task_id, metrics=[{"metric": metric, "variants": [variant]}])
        return [int(x) for x in histogram[metric][variant]["x"]]

    def task_log(self, task_id: str) -> str:
        """The task's console output as the server holds it, oldest line first."""
        events = self.call("events.get_task_log", task=task_id, navigate_earlier=False, batch_size=10000)["events"]
        return "".join(event.get("msg", "") + ("" if event.get("msg", "").endswith("\n") else "\n") for event in events)

    def wait_for_status(
        self, task_id: str, statuses: tuple[str, ...] = ("completed",), timeout_s: float = 120, diagnostics: Callable[[], str] | None = None
    ) -> dict:
        """Wait until the task reaches one of ``statuses``; on a different terminal status or a
        timeout, fail with the task's status, reason and server log (and ``diagnostics()``,
        e.g. an agent's own log, for a task no agent picked up)."""
        deadline = time.monotonic() + timeout_s
        while True:
            task = self.task(task_id)
            if task["status"] in statuses:
                return task
            if task["status"] in TERMINAL_STATUSES or time.monotonic() > deadline:
                problem = "ended" if task["status"] in TERMINAL_STATUSES else f"is still running after {timeout_s:.0f} s"
                raise AssertionError(
                    f"task {task_id} ({task.get('name')}) {problem} with status {task['status']!r} "
                    f"(reason: {task.get('status_reason')!r}, message: {task.get('status_message')!r}), "
                    f"expected {statuses}; its log on the server:\n{self.task_log(task_id)[-6000:]}"
                    + (f"\n{diagnostics()[-3000:]}" if diagnostics else "")
                )
            time.sleep(0.5)
