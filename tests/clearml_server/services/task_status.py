"""Task status changes: ``apiserver/bll/task/utils.py`` (``ChangeStatusRequest`` and the
``state_machine``), ``apiserver/bll/task/task_operations.py`` (enqueue, dequeue, reset,
stop, publish, delete) and the status endpoints of ``apiserver/services/tasks.py``."""

from __future__ import annotations

from datetime import UTC, datetime

from .. import errors
from ..registry import Call, endpoint
from ..store import Store, now
from . import queues
from .task_cleanup import cleanup_response, cleanup_task, delete_task_events
from .tasks import get_task, present
from .workers import check_for_workers

# bll/task/utils.py: state_machine
STATE_MACHINE = {
    "created": {"queued", "in_progress"},
    "queued": {"created", "in_progress", "stopped"},
    "in_progress": {"stopped", "failed", "created", "completed"},
    "stopped": {"closed", "created", "failed", "queued", "in_progress", "published", "publishing", "completed"},
    "closed": {"created", "failed", "published", "publishing", "stopped"},
    "failed": {"created", "stopped", "published", "queued"},
    "publishing": {"published"},
    "published": set(),
    "completed": {"published", "in_progress", "created"},
}
STATUS_FIELDS = ("force", "status_reason", "status_message")


def change_status(task: dict, new_status: str, user: str, *, force: bool = False, reason: str = "", message: str = "", **updates) -> dict:
    """``ChangeStatusRequest.execute``: refuse a transition the state machine does not allow
    (unless ``force``); a task sent to a queue loses its ``development`` system tag."""
    current = task["status"]
    if not force and new_status != current and new_status not in STATE_MACHINE[current]:
        raise errors.invalid_task_status("Invalid status change", current_status=current, new_status=new_status)
    stamp = now()
    fields = {
        "status": new_status,
        "status_reason": reason,
        "status_message": message,
        "status_changed": stamp,
        "last_update": stamp,
        "last_change": stamp,
        "last_changed_by": user,
    }
    if new_status == "queued":
        task["system_tags"] = [t for t in task.get("system_tags", []) if t != "development"]
    task.update(fields)
    for key, value in updates.items():
        if value is None:
            task.pop(key, None)
        else:
            task[key] = value
            fields[key] = value
    return {"updated": 1, "fields": fields}


def _status_call(call: Call, new_status: str, **updates) -> dict:
    """``set_task_status_from_call``."""
    task = get_task(call.store, call.data["task"])
    return change_status(
        task,
        new_status,
        call.user["id"],
        force=call.get("force", False),
        reason=call.get("status_reason", ""),
        message=call.get("status_message", ""),
        **updates,
    )


@endpoint("tasks.started", required=("task",), fields=STATUS_FIELDS)
def started(call: Call) -> dict:
    """``tasks.started``: in_progress; ``started`` keeps its earliest value."""
    task = get_task(call.store, call.data["task"])
    result = _status_call(call, "in_progress", started=task.get("started") or now())
    return {**result, "started": result["updated"]}


@endpoint("tasks.stopped", required=("task",), fields=STATUS_FIELDS)
def stopped(call: Call) -> dict:
    """``tasks.stopped``: stopped, with ``completed`` stamped."""
    return _status_call(call, "stopped", completed=now())


@endpoint("tasks.failed", required=("task",), fields=STATUS_FIELDS)
def failed(call: Call) -> dict:
    """``tasks.failed``."""
    return _status_call(call, "failed")


@endpoint("tasks.completed", required=("task",), fields=STATUS_FIELDS + ("publish",))
def completed(call: Call) -> dict:
    """``tasks.completed``: completed, then published when asked (with its last output model)."""
    result = {**_status_call(call, "completed", completed=now()), "published": 0}
    if call.get("publish", False):
        published = publish_task(call, call.data["task"], publish_model=True, force=call.get("force", False))
        result["published"] = published["updated"]
        result["fields"]["status"] = published["fields"]["status"]
    return result


def publish_task(call: Call, task_id: str, publish_model: bool, force: bool) -> dict:
    """``task_operations.py:publish_task``: the task's last output model is published too."""
    from .models import publish_model as publish_model_entity  # models imports this module

    task = get_task(call.store, task_id)
    if not force and "published" not in STATE_MACHINE[task["status"]]:
        raise errors.invalid_task_status("Invalid status change", current_status=task["status"], new_status="published")
    outputs = (task.get("models") or {}).get("output") or []
    if publish_model and outputs:
        model = call.store.models.get(outputs[-1]["model"])
        if model and not model.get("ready"):
            publish_model_entity(call.store, model, call.user["id"])
    return change_status(
        task, "published", call.user["id"], force=force, reason=call.get("status_reason", ""), message=call.get("status_message", ""), published=now()
    )


@endpoint("tasks.publish", required=("task",), fields=STATUS_FIELDS + ("publish_model",))
def publish(call: Call) -> dict:
    """``tasks.publish``: ``publish_task``, with its last output model unless ``publish_model`` is false."""
    return publish_task(call, call.data["task"], call.get("publish_model", True), call.get("force", False))


@endpoint("tasks.enqueue", required=("task",), fields=STATUS_FIELDS + ("queue", "queue_name", "verify_watched_queue", "update_execution_queue"))
def enqueue(call: Call) -> dict:
    """``services/tasks.py:enqueue``: ``enqueue_task``; with ``verify_watched_queue``, whether a
    worker watches the queue the task went to."""
    data = call.data
    update_queue = data.get("update_execution_queue", True)
    if data.get("verify_watched_queue") and not update_queue:
        raise errors.validation_error("verify_watched_queue cannot be used with update_execution_queue=False")
    result = enqueue_task(
        call,
        data["task"],
        data.get("queue"),
        status_message=call.get("status_message", ""),
        status_reason=call.get("status_reason", ""),
        queue_name=data.get("queue_name"),
        force=call.get("force", False),
        update_execution_queue=update_queue,
    )
    if data.get("verify_watched_queue"):
        result.update(queue_watched(call.store, result))
    return {"queued": 1, **result}


def enqueue_task(
    call: Call,
    task_id: str,
    queue_id: str | None,
    *,
    status_message: str,
    status_reason: str,
    queue_name: str | None = None,
    force: bool = False,
    update_execution_queue: bool = True,
) -> dict:
    """``task_operations.py:enqueue_task``: queue by id, by name (created when missing) or the
    default queue; the status before enqueueing is kept in ``enqueue_status``; the task
    leaves every other queue. Returns the status change (``updated``, ``fields``)."""
    store = call.store
    if queue_id and queue_name:
        raise errors.validation_error("Either queue id or queue name should be provided")
    task = get_task(store, task_id)
    if not update_execution_queue and not (task["status"] == "queued" and (task.get("execution") or {}).get("queue")):
        raise errors.validation_error("Cannot skip setting execution queue for a task that is not enqueued or does not have execution queue set")
    if queue_name:
        queue_id = (queues.queue_by_name(store, queue_name) or queues.create_queue(store, queue_name))["id"]
    if not queue_id:
        queue_id = queues.default_queue(store)["id"]
    queues.get_queue(store, queue_id)
    previous = task["status"]
    before = task.get("enqueue_status") if previous == "queued" and task.get("enqueue_status") else previous
    result = change_status(task, "queued", call.user["id"], force=force, reason=status_reason, message=status_message, enqueue_status=before)
    try:
        queues.add_task(store, queue_id, task["id"])
    except errors.APIError:
        # revert to the status the call found (for a task already queued: queued, its enqueue_status lost)
        change_status(task, previous, call.user["id"], force=True, reason="failed enqueueing", enqueue_status=None)
        raise
    if update_execution_queue:
        task.setdefault("execution", {})["queue"] = queue_id
        result["fields"]["execution.queue"] = queue_id
    queues.remove_task_from_all_queues(store, task["id"], exclude=queue_id)
    result["fields"].pop("enqueue_status", None)
    return result


def queue_watched(store: Store, result: dict) -> dict:
    """``QueueBLL.check_for_workers`` on the queue an enqueueing set (``fields.execution.queue``):
    ``{"queue_watched": bool}``, or nothing when the call set no queue."""
    queue_id = result["fields"].get("execution.queue")
    if not queue_id:
        return {}
    return {"queue_watched": check_for_workers(store, queue_id)}


def dequeue(store: Store, task: dict) -> dict | None:
    """``TaskBLL.dequeue`` with ``silent_fail``: only a queued task with a queue."""
    queue_id = (task.get("execution") or {}).get("queue")
    if task["status"] != "queued" or not queue_id:
        return None
    try:
        return {"removed": queues.remove_task(store, queue_id, task["id"])}
    except errors.APIError:
        return None


def dequeue_and_change_status(call: Call, task: dict) -> dict:
    """``TaskBLL.dequeue_and_change_status`` (with every queue cleared)."""
    dequeue(call.store, task)
    queues.remove_task_from_all_queues(call.store, task["id"])
    if task["status"] not in ("queued", "in_progress"):
        return {"updated": 0}
    return change_status(
        task,
        task.get("enqueue_status") or "created",
        call.user["id"],
        force=True,
        reason=call.get("status_reason", ""),
        message=call.get("status_message", ""),
        enqueue_status=None,
    )


@endpoint("tasks.dequeue", required=("task",), fields=STATUS_FIELDS + ("remove_from_all_queues", "new_status"))
def dequeue_endpoint(call: Call) -> dict:
    """``task_operations.py:dequeue_task``: back to the status before enqueueing."""
    new_status = call.get("new_status")
    if new_status and new_status not in STATE_MACHINE:
        raise errors.validation_error(f"Invalid task status: {new_status}")
    task = call.store.tasks.get(call.data["task"])
    if task is None:
        queues.remove_task_from_all_queues(call.store, call.data["task"])
        return {"dequeued": 1, "updated": 0}
    dequeue(call.store, task)
    if call.get("remove_from_all_queues", False):
        queues.remove_task_from_all_queues(call.store, task["id"])
    if task["status"] not in ("queued", "in_progress"):
        return {"dequeued": 1, "updated": 0}
    result = change_status(
        task,
        new_status or task.get("enqueue_status") or "created",
        call.user["id"],
        force=True,
        reason=call.get("status_reason", ""),
        message=call.get("status_message", ""),
        enqueue_status=None,
    )
    return {"dequeued": 1, **result}


@endpoint("tasks.stop", required=("task",), fields=STATUS_FIELDS + ("include_pipeline_steps",))
def stop(call: Call) -> dict:
    """``task_operations.py:stop_task``: a queued task, a development task or one no worker
    reported on in the last 600 s is stopped at once; otherwise only its status message
    becomes "stopping" and the worker running it stops it."""
    task = get_task(call.store, call.data["task"])
    steps = []
    if call.get("include_pipeline_steps", False) and task["type"] == "controller":
        steps = [t for t in call.store.tasks.values() if t.get("parent") == task["id"]]
    for step in steps:
        _stop_one(call, step, force=True)
    return _stop_one(call, task, force=call.get("force", False))


def _run_by_worker(task: dict) -> bool:
    if not task.get("last_worker") or not task.get("last_update"):
        return False
    age = datetime.now(UTC) - datetime.fromisoformat(task["last_update"])
    return age.total_seconds() < 600  # apiserver.workers.task_update_timeout


def _stop_one(call: Call, task: dict, force: bool) -> dict:
    queued = task["status"] == "queued"
    if queued or "development" in task.get("system_tags", []) or not _run_by_worker(task):
        if queued:
            dequeue(call.store, task)
        return change_status(
            task, "stopped", call.user["id"], force=force, reason=call.get("status_reason", ""), message=f"Stopped by {call.user['name']}"
        )
    return change_status(task, task["status"], call.user["id"], force=force, reason=call.get("status_reason", ""), message="stopping")


@endpoint(
    "tasks.reset", required=("task",), fields=STATUS_FIELDS + ("clear_all", "delete_output_models", "return_file_urls", "delete_external_artifacts")
)
def reset(call: Call) -> dict:
    """``task_operations.py:reset_task``: back to created, dequeued; metrics, output models,
    output artifacts, runtime, started/completed and the task's events are cleared (with
    ``clear_all`` also the script and execution); ``delete_external_artifacts`` (default true)
    schedules the files of its outputs and events for deletion (``_delete_task_events``)."""
    store, data = call.store, call.data
    task = get_task(store, data["task"])
    force = data.get("force", False)
    if not force and task["status"] == "published":
        raise errors.invalid_task_status(task_id=task["id"], status=task["status"])
    dequeued = dequeue(store, task) or {}
    queues.remove_task_from_all_queues(store, task["id"])
    cleanup = cleanup_task(
        store, task, call.user["id"], force=force, update_children=False, delete_output_models=data.get("delete_output_models", True)
    )
    execution = task.get("execution") or {}
    if data.get("clear_all", False):
        updates = {"execution": {"test_split": 0, "parameters": {}, "model_desc": {}, "artifacts": {}}, "script": None}
    else:
        execution.pop("queue", None)
        execution["artifacts"] = {k: a for k, a in (execution.get("artifacts") or {}).items() if a.get("mode") == "input"}
        updates = {"execution": execution}
    result = change_status(
        task,
        "created",
        call.user["id"],
        force=force,
        reason="reset",
        message="reset",
        last_iteration=0,
        last_metrics={},
        runtime={},
        models={**(task.get("models") or {}), "output": []},
        last_worker=None,
        last_worker_report=None,
        started=None,
        completed=None,
        published=None,
        active_duration=None,
        enqueue_status=None,
        **updates,
    )
    (task.get("output") or {}).pop("result", None)
    (task.get("output") or {}).pop("error", None)
    delete_task_events(store, call.user["id"], task["id"], cleanup, data.get("delete_external_artifacts", True))
    result["fields"] = present(
        {
            k: v
            for k, v in result["fields"].items()
            if k in ("status", "status_reason", "status_message", "status_changed", "last_update", "last_change", "last_changed_by")
        }
    )
    # ResetResponse: no children or models counts, and no urls unless asked for
    urls = {"urls": cleanup["urls"]} if data.get("return_file_urls", False) else {}
    return {**result, "dequeued": dequeued, "deleted_models": cleanup["deleted_models"], **urls}


@endpoint(
    "tasks.delete",
    required=("task",),
    fields=STATUS_FIELDS + ("move_to_trash", "return_file_urls", "delete_output_models", "delete_external_artifacts", "include_pipeline_steps"),
)
def delete(call: Call) -> dict:
    """``task_operations.py:delete_task``: only a created (or archived) task without ``force``;
    its events go too, and its files as in ``tasks.reset``."""
    store, data = call.store, call.data
    task = get_task(store, data["task"])
    force = data.get("force", False)
    if task["status"] != "created" and "archived" not in task.get("system_tags", []) and not force:
        raise errors.task_cannot_be_deleted("due to status, use force=True", task=task["id"], expected="created", current=task["status"])
    steps = []
    if data.get("include_pipeline_steps", False) and task["type"] == "controller":
        steps = [t for t in store.tasks.values() if t.get("parent") == task["id"]]
    for step in steps:
        _delete_one(call, step, force=True)
    # as upstream, the result (and the events deleted) are the controller's only
    cleanup = _delete_one(call, task, force)
    delete_task_events(store, call.user["id"], task["id"], cleanup, data.get("delete_external_artifacts", True))
    return {"deleted": True, **cleanup_response(cleanup, data.get("return_file_urls", False))}


def _delete_one(call: Call, task: dict, force: bool) -> dict:
    """``delete_task_core``: dequeued, its outputs cleaned up, deleted."""
    dequeue_and_change_status(call, task)
    cleanup = cleanup_task(
        call.store, task, call.user["id"], force=force, update_children=True, delete_output_models=call.get("delete_output_models", True)
    )
    del call.store.tasks[task["id"]]
    return cleanup
