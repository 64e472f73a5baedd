"""queues.*: ``apiserver/services/queues.py`` and ``apiserver/bll/queue/queue_bll.py``."""

from __future__ import annotations

from .. import errors
from ..query import QueryOptions, get_many
from ..registry import OWN_VALIDATION, Call, endpoint
from ..store import COMPANY_ID, Store, new_id, now

# apiserver/database/model/queue.py: Queue.get_all_query_options
QUEUE_QUERY = QueryOptions(pattern_fields=("name",), list_fields=("tags", "system_tags", "id", "metadata.*"), collation_fields=("metadata.",))
GET_ALL_KEYS = ("search_hidden", "max_task_entries")
HIDDEN_TAGS = ("k8s-glue",)  # config/default/services/queues.conf: hidden_tags


def create_queue(store: Store, name: str, system_tags: list[str] | None = None, tags: list[str] | None = None) -> dict:
    """``QueueBLL.create``; the name is unique per company (``unique_with="company"``)."""
    if any(q["name"] == name for q in store.queues.values()):
        raise errors.expected_unique_data(name=name)
    errors.check_min_length("Queue", "name", name)
    stamp = now()
    queue = {
        "id": new_id(),
        "company": COMPANY_ID,
        "name": name.strip(),
        "created": stamp,
        "tags": sorted(tags or []),
        "system_tags": sorted(system_tags or []),
        "entries": [],
        "last_update": stamp,
        "metadata": {},
    }
    store.queues[queue["id"]] = queue
    return queue


def ensure_default_queue(store: Store) -> None:
    """``mongo/initialize/util.py:_ensure_default_queue``: a ``default`` queue tagged ``default``."""
    with store.lock:
        if not any("default" in q["system_tags"] for q in store.queues.values()):
            create_queue(store, "default", system_tags=["default"])


def get_queue(store: Store, queue_id: str) -> dict:
    queue = store.queues.get(queue_id)
    if queue is None:
        raise errors.invalid_queue_id(id=queue_id, company=COMPANY_ID)
    return queue


def queue_by_name(store: Store, name: str) -> dict | None:
    return next((q for q in store.queues.values() if q["name"] == name), None)


def default_queue(store: Store) -> dict:
    """``QueueBLL.get_default``."""
    found = [q for q in store.queues.values() if "default" in q["system_tags"]]
    if not found:
        raise errors.no_default_queue()
    if len(found) > 1:
        raise errors.APIError(400, 708, "More than one queue is tagged as the default queue for this company", queues=[q["id"] for q in found])
    return found[0]


def add_task(store: Store, queue_id: str, task_id: str) -> None:
    """``QueueBLL.add_task``: refused when the task is already in the queue."""
    queue = get_queue(store, queue_id)
    if any(e["task"] == task_id for e in queue["entries"]):
        raise errors.task_already_queued(task=task_id)
    queue["entries"].append({"task": task_id, "added": now()})
    queue["last_update"] = now()


def remove_task(store: Store, queue_id: str, task_id: str) -> int:
    """``QueueBLL.remove_task``: refused when the task is not in the queue."""
    queue = get_queue(store, queue_id)
    removed = [e for e in queue["entries"] if e["task"] == task_id]
    if not removed:
        raise errors.invalid_queue_or_task_not_queued(task=task_id, id=queue_id, company=COMPANY_ID)
    queue["entries"] = [e for e in queue["entries"] if e["task"] != task_id]
    queue["last_update"] = now()
    return len(removed)


def remove_task_from_all_queues(store: Store, task_id: str, exclude: str | None = None) -> int:
    """``TaskBLL.remove_task_from_all_queues``."""
    count = 0
    for queue in store.queues.values():
        if queue["id"] != exclude and any(e["task"] == task_id for e in queue["entries"]):
            queue["entries"] = [e for e in queue["entries"] if e["task"] != task_id]
            queue["last_update"] = now()
            count += 1
    return count


def _with_entries(queue: dict, max_task_entries: int | None) -> dict:
    if max_task_entries:
        return {**queue, "entries": queue["entries"][:max_task_entries]}
    return queue


@endpoint("queues.get_all", fields=OWN_VALIDATION, mutates=False)
def get_all(call: Call) -> dict:
    """``queues.get_all``: ``Queue.get_many`` with ``_hidden_query`` (queues with a system tag of
    ``hidden_tags`` are left out unless ``search_hidden``, ``id`` or ``name`` is given)."""
    query = {k: v for k, v in call.data.items() if k not in GET_ALL_KEYS}
    queues = list(call.store.queues.values())
    if not (call.get("search_hidden") or call.get("id") or call.get("name")):
        queues = [q for q in queues if not set(HIDDEN_TAGS) & set(q["system_tags"])]
    queues = [_with_entries(q, call.get("max_task_entries")) for q in queues]
    return {"queues": get_many(call.endpoint, queues, query, QUEUE_QUERY)}


@endpoint("queues.get_by_id", required=("queue",), fields=("max_task_entries",), mutates=False)
def get_by_id(call: Call) -> dict:
    """``QueueBLL.get_by_id``: an unknown id (or a queue name) is ``InvalidQueueId`` (400/701)."""
    return {"queue": _with_entries(get_queue(call.store, call.data["queue"]), call.get("max_task_entries"))}


@endpoint("queues.get_default", mutates=False)
def get_default(call: Call) -> dict:
    """``QueueBLL.get_default``: the queue tagged ``default``."""
    queue = default_queue(call.store)
    return {"id": queue["id"], "name": queue["name"]}


@endpoint("queues.create", required=("name",), fields=("tags", "system_tags"))
def create(call: Call) -> dict:
    """``QueueBLL.create``."""
    return {"id": create_queue(call.store, call.data["name"], call.get("system_tags"), call.get("tags"))["id"]}


@endpoint("queues.get_next_task", required=("queue",), fields=("get_task_info", "task"))
def get_next_task(call: Call) -> dict:
    """``queues.get_next_task``: pop the first entry; a stopped task is put back to queued."""
    queue = get_queue(call.store, call.data["queue"])
    wanted = call.get("task")
    if not queue["entries"] or (wanted and queue["entries"][0]["task"] != wanted):
        return {}
    entry = queue["entries"].pop(0)
    queue["last_update"] = now()
    data = {"entry": entry}
    task = call.store.tasks.get(entry["task"])
    if task:
        if task["status"] == "stopped":
            task["status"] = "queued"
        if call.get("get_task_info"):
            data["task_info"] = {"company": task["company"], "user": task["user"]}
    return data
