"""pipelines.start_pipeline: ``apiserver/services/pipelines.py`` (``start_pipeline``,
``_update_task_name``) with the request model of ``apiserver/apimodels/pipelines.py``
(``StartPipelineRequest``, ``Arg``). This is what the web UI's "New run" of a pipeline calls."""

from __future__ import annotations

import re

from .. import errors
from ..registry import Call, endpoint
from ..store import Store
from .task_status import enqueue_task, queue_watched
from .tasks import clone_task

ARGS_SECTION = "Args"
ARG_FIELDS = ("name", "value")


def _args_overrides(call: Call) -> dict | None:
    """``{"Args": {name: item}}`` of the request's ``args`` (each ``Arg`` needs a string name and value)."""
    args = call.get("args")
    if not args:
        return None
    items = {}
    for arg in args:
        unknown = sorted(set(arg) - set(ARG_FIELDS))
        if unknown:
            raise errors.unsupported_field(call.endpoint, f"args.{unknown[0]}")
        for key in ARG_FIELDS:
            if not isinstance(arg.get(key), str):
                raise errors.validation_error(f"args.{key}: a string is required", field=f"args.{key}", value=str(arg.get(key)))
        items[arg["name"]] = {"section": ARGS_SECTION, "name": arg["name"], "value": arg["value"]}
    return {ARGS_SECTION: items}


def _update_task_name(store: Store, task: dict) -> None:
    """``_update_task_name``: the run is named after the last part of its project's name,
    ``#N`` added where N counts the project's ``pipeline`` tasks whose name already is that
    name or that name ``#M`` (the new run included; a regex search, as Mongo's ``$regex``)."""
    project = store.projects.get(task.get("project") or "")
    if project is None:
        return
    prefix = project["name"].rpartition("/")[2]
    name_mask = re.compile(rf"{re.escape(prefix)}( #\d+)?$")
    count = sum(
        1
        for t in store.tasks.values()
        if t.get("project") == task["project"] and "pipeline" in (t.get("system_tags") or []) and name_mask.search(t["name"])
    )
    task["name"] = f"{prefix} #{count}" if count > 0 else prefix


@endpoint("pipelines.start_pipeline", required=("task", "queue"), fields=("args", "verify_watched_queue"))
def start_pipeline(call: Call) -> dict:
    """``start_pipeline``: the controller task is cloned with the ``args`` replacing items of
    its ``Args`` section, renamed by ``_update_task_name`` and enqueued on ``queue`` with the
    status message "Starting pipeline"."""
    task, _ = clone_task(call, call.data["task"], hyperparams_overrides=_args_overrides(call))
    _update_task_name(call.store, task)
    result = enqueue_task(call, task["id"], call.data["queue"], status_message="Starting pipeline", status_reason="")
    watched = queue_watched(call.store, result) if call.get("verify_watched_queue", False) else {}
    return {"pipeline": task["id"], "enqueued": True, **watched}
