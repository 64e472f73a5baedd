"""workers.*: ``apiserver/services/workers.py`` and ``apiserver/bll/workers/__init__.py``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .. import errors
from ..registry import Call, endpoint
from ..store import COMPANY_ID, COMPANY_NAME, now
from .queues import get_queue

DEFAULT_TIMEOUT_S = 10 * 60  # default_worker_timeout_sec


def _key(call: Call, worker: str) -> str:
    """``WorkerBLL._get_worker_key``: per company, user and worker id."""
    return f"{COMPANY_ID}_{call.user['id']}_{worker}"


def register_worker(call: Call, worker_id: str, queues: list[str], timeout: int | None = None) -> dict:
    """``WorkerBLL.register_worker``: every queue must exist."""
    missing = [q for q in queues if q not in call.store.queues]
    if missing:
        raise errors.invalid_queue_id(ids=missing)
    stamp = now()
    worker = {
        "id": worker_id,
        "user": {"id": call.user["id"], "name": call.user["name"]},
        "company": {"id": COMPANY_ID, "name": COMPANY_NAME},
        "queues": queues,
        "register_time": stamp,
        "register_timeout": timeout or DEFAULT_TIMEOUT_S,
        "last_activity_time": stamp,
        "tags": call.get("tags", []),
        "system_tags": call.get("system_tags", []),
        "task": None,
        "queue": None,
    }
    call.store.workers[_key(call, worker_id)] = worker
    return worker


def _alive(worker: dict) -> bool:
    """Worker entries expire ``register_timeout`` seconds after their last report (a Redis TTL)."""
    last = datetime.fromisoformat(worker["last_activity_time"])
    return datetime.now(UTC) - last < timedelta(seconds=worker["register_timeout"])


def check_for_workers(store, queue_id: str) -> bool:
    """``QueueBLL.check_for_workers``: a worker whose registration has not expired watches the queue."""
    return any(queue_id in w["queues"] for w in store.workers.values() if _alive(w))


@endpoint("workers.register", required=("worker",), fields=("timeout", "queues", "tags", "system_tags"))
def register(call: Call) -> dict:
    """``workers.register``."""
    register_worker(call, call.data["worker"], call.get("queues", []), call.get("timeout"))
    return {}


# WorkerBLL.unregister_worker reads only the worker; the agent also sends "queues", which
# apimodels/workers.py:WorkerRequest does not have
@endpoint("workers.unregister", required=("worker",), ignored=("queues", "tags", "system_tags"))
def unregister(call: Call) -> dict:
    """``WorkerBLL.unregister_worker``; an unknown worker is fine (``apiserver.workers.auto_unregister``)."""
    call.store.workers.pop(_key(call, call.data["worker"]), None)
    return {}


# apimodels/workers.py: StatusReportRequest has no "is_daemon" (the agent sends it; the server drops it)
@endpoint(
    "workers.status_report",
    required=("worker", "timestamp"),
    fields=("task", "queue", "queues", "machine_stats", "tags", "system_tags"),
    ignored=("is_daemon",),
)
def status_report(call: Call) -> dict:
    """``WorkerBLL.status_report``: the worker's current task and queue; the task records
    ``last_worker``. An unknown worker is registered (``apiserver.workers.auto_register``).
    Machine statistics go to Elasticsearch on the server and are not kept."""
    worker = call.store.workers.get(_key(call, call.data["worker"]))
    if worker is None or not _alive(worker):
        worker = register_worker(call, call.data["worker"], [])
    stamp = now()
    worker.update(last_activity_time=stamp, queue=call.get("queue"))
    for field in ("queues", "tags", "system_tags"):
        if call.data.get(field) is not None:
            worker[field] = call.data[field]
    task_id = call.get("task")
    if not task_id:
        worker["task"] = None
        return {}
    task = call.store.tasks.get(task_id)
    if task is None:
        raise errors.invalid_task_id(id=task_id)
    task.update(last_worker=worker["id"], last_worker_report=stamp, last_update=stamp, last_change=stamp, last_changed_by=call.user["id"])
    worker["task"] = {"id": task["id"], "name": task["name"]}
    return {}


@endpoint("workers.get_all", fields=("last_seen", "tags", "system_tags", "worker_pattern"), mutates=False)
def get_all(call: Call) -> dict:
    """``WorkerBLL.get_all``: workers active in the last ``last_seen`` seconds."""
    workers = [w for w in call.store.workers.values() if _alive(w)]
    if call.get("last_seen"):
        since = datetime.now(UTC) - timedelta(seconds=max(1, call.data["last_seen"]))
        workers = [w for w in workers if datetime.fromisoformat(w["last_activity_time"]) >= since]
    for field in ("tags", "system_tags"):
        if call.get(field):
            workers = [w for w in workers if set(call.data[field]) & set(w.get(field) or [])]
    if call.get("worker_pattern"):
        workers = [w for w in workers if re.search(call.data["worker_pattern"], w["id"])]
    return {"workers": [_response_entry(call, w) for w in workers]}


def _response_entry(call: Call, worker: dict) -> dict:
    """``WorkerBLL.get_all`` / ``_get_worker_response_helper``: queue ids become entries with their
    names; the current ``queue`` is the entry among the worker's queues with the reported id, else None."""
    queues = [{"id": q, "name": get_queue(call.store, q)["name"]} for q in worker["queues"]]
    current = next((entry for entry in queues if entry["id"] == worker["queue"]), None)
    return {**worker, "queues": queues, "queue": current}
