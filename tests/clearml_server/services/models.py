"""models.*: ``apiserver/services/models.py``, ``apiserver/bll/model/__init__.py`` and
``apiserver/bll/model/metadata.py``."""

from __future__ import annotations

import copy

from .. import errors
from ..query import QueryOptions, get_many
from ..registry import OWN_VALIDATION, Call, endpoint
from ..store import COMPANY_ID, Store, new_id, now
from . import projects
from .task_status import publish_task
from .tasks import DELETED_PREFIX, get_task

# apiserver/database/model/model.py: Model.get_all_query_options
MODEL_QUERY = QueryOptions(
    pattern_fields=("name", "comment"),
    fields=("ready",),
    list_fields=("tags", "system_tags", "framework", "uri", "id", "user", "project", "task", "parent", "metadata.*"),
    range_fields=("created", "last_metrics.*", "last_iteration"),
    exclude_by_default=("ui_cache", "company_origin"),
    collation_fields=("metadata.", "last_metrics."),
)
GET_ALL_KEYS = ("include_subprojects", "allow_public")
# services/models.py: create_fields (+ ui_cache, public of CreateModelRequest)
CREATE_FIELDS = ("name", "tags", "system_tags", "task", "comment", "uri", "project", "parent", "framework", "design", "labels", "ready", "metadata")
LAST_UPDATE_FIELDS = ("uri", "framework", "design", "labels", "ready", "metadata", "system_tags", "tags")


def get_model(store: Store, model_id: str) -> dict:
    """``ModelBLL.get_company_model_by_id``."""
    model = store.models.get(model_id)
    if model is None:
        raise errors.invalid_model_id(id=model_id, company=COMPANY_ID)
    return model


def _metadata(items) -> dict:
    """``Metadata.metadata_from_api``: a list of {key, type, value} or a dict of them, by key."""
    if not items:
        return {}
    if isinstance(items, dict):
        return {key: dict(value) for key, value in items.items()}
    return {item["key"]: dict(item) for item in items}


def _fields(call: Call) -> dict:
    """``parse_model_fields`` / ``prepare_update_fields``: a task that is gone is dropped; a
    given task must exist; labels map strings to integers."""
    fields = {k: copy.deepcopy(v) for k, v in call.data.items() if k in CREATE_FIELDS}
    if isinstance(fields.get("task"), str) and fields["task"].startswith(DELETED_PREFIX):
        fields.pop("task")
    if fields.get("task"):
        get_task(call.store, fields["task"])
    if fields.get("project"):
        projects.get_project(call.store, fields["project"])
    labels = fields.get("labels") or {}
    if any(not isinstance(v, int) for v in labels.values()):
        raise errors.validation_error("labels values must be integers", values=[v for v in labels.values() if not isinstance(v, int)])
    if "name" in fields:
        errors.check_min_length("Model", "name", fields["name"])
    if "metadata" in fields:
        fields["metadata"] = _metadata(fields["metadata"])
    for name in ("tags", "system_tags"):
        if name in fields:
            fields[name] = sorted(set(fields[name] or []))
    if "uri" in fields:
        fields["ui_cache"] = {}  # prepare_update_fields: a new URI clears the UI cache
    return fields


def raise_task_iteration(store: Store, task_id: str | None, iteration: int | None) -> None:
    """``TaskBLL.update_statistics(last_iteration_max=...)``."""
    task = store.tasks.get(task_id) if task_id else None
    if task is not None and iteration is not None:
        task["last_iteration"] = max(task.get("last_iteration", 0), iteration)


def _stamp(model: dict, fields: dict, user: str) -> None:
    stamp = now()
    model.update(fields, last_change=stamp, last_changed_by=user)
    if any(f in fields for f in LAST_UPDATE_FIELDS):
        model["last_update"] = stamp


@endpoint("models.create", required=("name", "uri"), fields=CREATE_FIELDS + ("public",))
def create(call: Call) -> dict:
    """``models.create``: ``ready`` defaults to true (CreateModelRequest)."""
    if call.get("public"):
        raise errors.unsupported_field(call.endpoint, "public")
    fields = _fields(call)
    stamp = now()
    model = {
        "id": new_id(),
        "company": COMPANY_ID,
        "user": call.user["id"],
        "created": stamp,
        "last_update": stamp,
        "last_change": stamp,
        "last_changed_by": call.user["id"],
        "ready": True,
        "tags": [],
        "system_tags": [],
        "uri": "",
        "ui_cache": {},
        **fields,
    }
    call.store.models[model["id"]] = model
    return {"id": model["id"], "created": True}


@endpoint("models.get_by_id", required=("model",), mutates=False)
def get_by_id(call: Call) -> dict:
    """``models.get_by_id``: an unknown id is ``InvalidModelId`` (400/201)."""
    model = call.store.models.get(call.data["model"])
    if model is None:
        raise errors.invalid_model_id("no such public or company model", id=call.data["model"], company=COMPANY_ID)
    return {"model": get_many(call.endpoint, [model], {}, MODEL_QUERY)[0]}


@endpoint("models.get_all", fields=OWN_VALIDATION, mutates=False)
def get_all(call: Call) -> dict:
    """``models.get_all``: ``Model.get_many`` with ``process_include_subprojects``."""
    query = {k: v for k, v in call.data.items() if k not in GET_ALL_KEYS}
    if call.get("include_subprojects") and query.get("project"):
        ids = query["project"] if isinstance(query["project"], list) else [query["project"]]
        query["project"] = projects.with_children(call.store, ids)
    return {"models": get_many(call.endpoint, call.store.models.values(), query, MODEL_QUERY)}


@endpoint("models.edit", required=("model",), fields=CREATE_FIELDS + ("iteration",))
def edit(call: Call) -> dict:
    """``models.edit``: the fields given replace the model's; ``iteration`` raises the
    task's last_iteration."""
    model = get_model(call.store, call.data["model"])
    fields = _fields(call)
    raise_task_iteration(call.store, model.get("task") or fields.get("task"), call.get("iteration"))
    if not fields:
        return {"updated": 0}
    _stamp(model, fields, call.user["id"])
    return {"updated": 1, "fields": fields}


@endpoint("models.update", required=("model",), fields=CREATE_FIELDS + ("iteration",))
def update(call: Call) -> dict:
    """``models.update`` (``_update_model``): like edit; the iteration only with a task given."""
    model = get_model(call.store, call.data["model"])
    fields = _fields(call)
    raise_task_iteration(call.store, fields.get("task"), call.get("iteration"))
    if not fields:
        return {"updated": 0, "fields": {}}
    _stamp(model, fields, call.user["id"])
    return {"updated": 1, "fields": fields}


def publish_model(store: Store, model: dict, user: str) -> None:
    stamp = now()
    model.update(ready=True, last_update=stamp, last_change=stamp, last_changed_by=user)


@endpoint("models.set_ready", required=("model",), fields=("force_publish_task", "publish_task"))
def set_ready(call: Call) -> dict:
    """``ModelBLL.publish_model``: refused for a ready model; the model's task is published
    too unless it already is (``publish_task``, default true), without its own last output
    model (``publish_task_func`` is called without a ``publish_model_func``)."""
    model = get_model(call.store, call.data["model"])
    if model.get("ready"):
        raise errors.model_is_ready(company=COMPANY_ID, model=model["id"])
    published_task = None
    task = call.store.tasks.get(model.get("task") or "")
    if task is not None and call.get("publish_task", True) and task["status"] != "published":
        published_task = {"id": task["id"], "data": publish_task(call, task["id"], publish_model=False, force=call.get("force_publish_task", False))}
    publish_model(call.store, model, call.user["id"])
    return {"updated": 1, **({"published_task": published_task} if published_task else {})}


@endpoint("models.add_or_update_metadata", required=("model", "metadata"), fields=("replace_metadata",))
def add_or_update_metadata(call: Call) -> dict:
    """``Metadata.edit_metadata``: merge by key, or replace all."""
    model = get_model(call.store, call.data["model"])
    items = _metadata(call.data["metadata"])
    if call.get("replace_metadata", False):
        model["metadata"] = items
    else:
        model.setdefault("metadata", {}).update(items)
    _stamp(model, {}, call.user["id"])
    model["last_update"] = model["last_change"]
    return {"updated": 1}
