"""tasks.* (everything but the status changes, see ``task_status.py``):
``apiserver/services/tasks.py``, ``apiserver/bll/task/task_bll.py``,
``apiserver/bll/task/hyperparams.py`` and ``apiserver/bll/task/artifacts.py``.

Tasks are stored as the server stores them; ``execution.artifacts`` is keyed by
``md5(key)_mode`` (``artifacts.py:get_artifact_id``) and returned as a list sorted by key.
"""

from __future__ import annotations

import copy
import hashlib

from .. import errors
from ..query import QueryOptions, get_many
from ..registry import OWN_VALIDATION, Call, endpoint
from ..store import COMPANY_ID, Store, new_id, now
from . import projects, task_params

TASK_TYPES = (
    "training",
    "testing",
    "inference",
    "data_processing",
    "application",
    "monitor",
    "controller",
    "report",
    "optimizer",
    "service",
    "qc",
    "custom",
)
DELETED_PREFIX = "__DELETED__"
# apiserver/database/model/task/task.py: Task.get_all_query_options and exclude_by_default fields
TASK_QUERY = QueryOptions(
    pattern_fields=("name", "comment", "report"),
    list_fields=(
        "id",
        "user",
        "tags",
        "system_tags",
        "type",
        "status",
        "project",
        "parent",
        "hyperparams.*",
        "execution.queue",
        "models.input.model",
    ),
    range_fields=("created", "started", "active_duration", "last_metrics.*", "last_iteration"),
    datetime_fields=("status_changed", "last_update", "last_change"),
    fields=("runtime.*",),
    exclude_by_default=("unique_metrics", "company_origin", "enqueue_status"),
    collation_fields=("execution.parameters.", "last_metrics.", "hyperparams."),
)
GET_ALL_KEYS = ("search_hidden", "include_subprojects", "allow_public")
# apiserver/services/tasks.py: create_fields
CREATE_FIELDS = (
    "name",
    "tags",
    "system_tags",
    "type",
    "comment",
    "parent",
    "project",
    "models",
    "container",
    "output_dest",
    "execution",
    "hyperparams",
    "configuration",
    "script",
    "runtime",
)
EDIT_FIELDS = CREATE_FIELDS + ("status",)


def artifact_id(artifact: dict) -> str:
    """``artifacts.py:get_artifact_id``."""
    return f"{hashlib.md5(artifact['key'].encode()).hexdigest()}_{artifact.get('mode', 'output')}"


def present(task: dict) -> dict:
    """The task as the API returns it (``artifacts_unprepare_from_saved``)."""
    result = copy.deepcopy(task)
    artifacts = (result.get("execution") or {}).get("artifacts")
    if isinstance(artifacts, dict):
        result["execution"]["artifacts"] = sorted(artifacts.values(), key=lambda a: a["key"])
    for field in ("tags", "system_tags"):
        if result.get(field):
            result[field] = sorted(result[field])
    return result


def get_task(store: Store, task_id: str) -> dict:
    """``get_task_with_write_access`` / ``TaskBLL.get_by_id``: an unknown id is 400/101."""
    task = store.tasks.get(task_id)
    if task is None:
        raise errors.invalid_task_id(id=task_id)
    return task


def get_task_for_update(store: Store, task_id: str, force: bool = False, allow_all_statuses: bool = False) -> dict:
    """``bll/task/utils.py:get_task_for_update``: only a created task (or in_progress with force)."""
    task = get_task(store, task_id)
    if allow_all_statuses:
        return task
    allowed = ("created", "in_progress") if force else ("created",)
    if task["status"] not in allowed:
        raise errors.invalid_task_status(expected="created", status=task["status"])
    return task


def touch(task: dict, user: str, last_update: bool = True) -> None:
    """``bll/task/utils.py:update_task``: last_change (and last_update) on every edit."""
    stamp = now()
    task["last_change"] = stamp
    task["last_changed_by"] = user
    if last_update:
        task["last_update"] = stamp


def _drop_legacy_params(fields: dict, endpoint_name: str) -> None:
    """The SDK sends the pre-2.9 ``execution.parameters`` and ``execution.model_desc`` empty;
    empty, they change nothing on the server either. The server converts non-empty ones into
    "legacy" items of ``hyperparams``/``configuration`` (``param_utils.py:params_prepare_for_save``),
    which is not implemented here: refused."""
    execution = fields.get("execution") or {}
    for legacy in ("parameters", "model_desc"):
        if execution.get(legacy):
            raise errors.unsupported_field(endpoint_name, f"execution.{legacy} (non-empty, legacy)")
        execution.pop(legacy, None)


def _prepare_fields(call: Call, allowed: tuple[str, ...], previous: dict | None = None) -> dict:
    """``prepare_create_fields``: output_dest -> output.destination, artifact lists keyed by
    id, model entries stamped with ``updated``."""
    fields = {k: copy.deepcopy(v) for k, v in call.data.items() if k in allowed}
    if "output_dest" in fields:
        fields["output"] = {**((previous or {}).get("output") or {}), "destination": fields.pop("output_dest")}
    _drop_legacy_params(fields, call.endpoint)
    artifacts = (fields.get("execution") or {}).get("artifacts")
    if isinstance(artifacts, list):
        fields["execution"]["artifacts"] = {artifact_id(a): {"mode": "output", **a} for a in artifacts}
    models = fields.get("models")
    if models:
        stamp = now()
        for kind in ("input", "output"):
            for item in models.get(kind) or []:
                item["updated"] = stamp
    for name in ("tags", "system_tags"):
        if name in fields:
            fields[name] = sorted(set(fields[name] or []))
    if "type" in fields and fields["type"] not in TASK_TYPES:
        raise errors.validation_error(f"type must be one of {list(TASK_TYPES)}", field="type", value=fields["type"])
    if "name" in fields:
        errors.check_min_length("Task", "name", fields["name"])
    _check_params(fields)
    return fields


def _check_params(fields: dict) -> None:
    """``hyperparams`` and ``configuration`` given (not null) as the server takes them (``task_params.py``)."""
    if fields.get("hyperparams") is not None:
        fields["hyperparams"] = task_params.checked_hyperparams(fields["hyperparams"])
    if fields.get("configuration") is not None:
        fields["configuration"] = task_params.checked_configuration(fields["configuration"])


def validate(store: Store, task: dict, parent: bool = True, project: bool = True, models: bool = True) -> None:
    """``TaskBLL.validate``."""
    parent_id = task.get("parent")
    if parent and parent_id and not parent_id.startswith(DELETED_PREFIX) and parent_id not in store.tasks:
        raise errors.invalid_task_id("invalid parent", parent=parent_id)
    if project and task.get("project") and task["project"] not in store.projects:
        raise errors.invalid_project_id(id=task["project"])
    if models:
        missing = {m["model"] for m in (task.get("models") or {}).get("input") or []} - set(store.models)
        if missing:
            raise errors.invalid_model_id(models=sorted(missing))


def new_task(user: str, fields: dict) -> dict:
    """A task with the defaults of ``database/model/task/task.py:Task``."""
    stamp = now()
    task = {
        "id": new_id(),
        "company": COMPANY_ID,
        "user": user,
        "created": stamp,
        "last_update": stamp,
        "last_change": stamp,
        "last_changed_by": user,
        "status": "created",
        "tags": [],
        "system_tags": [],
        "output": {},
        "execution": {"test_split": 0, "parameters": {}, "model_desc": {}, "artifacts": {}},
        "script": {"binary": "python", "repository": "", "entry_point": ""},
        "last_iteration": 0,
        "last_metrics": {},
        "hyperparams": {},
        "configuration": {},
        "runtime": {},
        "models": {"input": [], "output": []},
        "container": {},
    }
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(task.get(key), dict) and key in ("execution", "script", "models", "output"):
            task[key] = {**task[key], **value}
        else:
            task[key] = value
    return task


@endpoint("tasks.create", required=("name", "type"), fields=CREATE_FIELDS)
def create(call: Call) -> dict:
    """``tasks.create``: ``_validate_and_get_task_from_call`` (parent, project and input models must exist)."""
    task = new_task(call.user["id"], _prepare_fields(call, CREATE_FIELDS))
    validate(call.store, task)
    call.store.tasks[task["id"]] = task
    return {"id": task["id"]}


@endpoint("tasks.edit", required=("task",), fields=EDIT_FIELDS + ("force",))
def edit(call: Call) -> dict:
    """``tasks.edit``: only a created task unless ``force``; embedded documents are merged
    (``d.update(value)``), everything else replaced."""
    task = get_task(call.store, call.data["task"])
    if not call.get("force", False) and task["status"] != "created":
        raise errors.invalid_task_status(expected="created", status=task["status"])
    fields = _prepare_fields(call, EDIT_FIELDS, previous=task)
    merged = {}
    for key, value in fields.items():
        if isinstance(value, dict) and key in ("execution", "script", "models", "output"):
            merged[key] = {**(task.get(key) or {}), **value}
        else:
            merged[key] = value
    validate(call.store, {**task, **merged})
    task.update(merged)
    touch(task, call.user["id"])
    return {"updated": 1, "fields": present(merged)}


@endpoint("tasks.get_by_id", required=("task",), mutates=False)
def get_by_id(call: Call) -> dict:
    """``tasks.get_by_id``: ``TaskBLL.assert_exists``."""
    return {"task": present(get_task(call.store, call.data["task"]))}


@endpoint("tasks.get_all", fields=OWN_VALIDATION, mutates=False)
def get_all(call: Call) -> dict:
    """``tasks.get_all``: ``process_include_subprojects`` and ``_hidden_query`` (tasks tagged
    ``hidden`` are left out unless ``search_hidden`` or ``id`` is given)."""
    query = {k: v for k, v in call.data.items() if k not in GET_ALL_KEYS}
    if call.get("include_subprojects") and query.get("project"):
        ids = query["project"] if isinstance(query["project"], list) else [query["project"]]
        query["project"] = projects.with_children(call.store, ids)
    tasks = list(call.store.tasks.values())
    if not (call.get("search_hidden") or call.get("id")):
        tasks = [t for t in tasks if "hidden" not in t.get("system_tags", [])]
    return {"tasks": [present(t) for t in get_many(call.endpoint, tasks, query, TASK_QUERY)]}


CLONE_FIELDS = (
    "new_task_name",
    "new_task_comment",
    "new_task_tags",
    "new_task_system_tags",
    "new_task_parent",
    "new_task_project",
    "new_task_hyperparams",
    "new_task_configuration",
    "new_task_container",
    "new_task_input_models",
    "validate_references",
    "new_project_name",
    "execution_overrides",
)


@endpoint("tasks.clone", required=("task",), fields=CLONE_FIELDS)
def clone(call: Call) -> dict:
    """``services/tasks.py:clone_task``: ``TaskBLL.clone_task`` with the request's overrides."""
    data = call.data
    task, new_project = clone_task(
        call,
        data["task"],
        name=data.get("new_task_name"),
        comment=data.get("new_task_comment"),
        parent=data.get("new_task_parent"),
        project=data.get("new_task_project"),
        tags=data.get("new_task_tags"),
        system_tags=data.get("new_task_system_tags"),
        hyperparams=data.get("new_task_hyperparams"),
        configuration=data.get("new_task_configuration"),
        container=data.get("new_task_container"),
        execution_overrides=data.get("execution_overrides"),
        input_models=data.get("new_task_input_models"),
        validate_references=bool(data.get("validate_references")),
        new_project_name=data.get("new_project_name"),
    )
    return {"id": task["id"], **({"new_project": new_project} if new_project else {})}


def clone_task(
    call: Call,
    task_id: str,
    *,
    name: str | None = None,
    comment: str | None = None,
    parent: str | None = None,
    project: str | None = None,
    tags: list | None = None,
    system_tags: list | None = None,
    hyperparams: dict | None = None,
    configuration: dict | None = None,
    container: dict | None = None,
    execution_overrides: dict | None = None,
    input_models: list | None = None,
    validate_references: bool = False,
    new_project_name: str | None = None,
    hyperparams_overrides: dict | None = None,
) -> tuple[dict, dict | None]:
    """``TaskBLL.clone_task``: a new created task with the source's script, parameters,
    configuration, container, input models and input artifacts; output artifacts, output
    models, metrics, runtime and the queue are not copied. The parent is the source's parent,
    or the source itself. ``hyperparams_overrides`` (``{section: {name: item}}``) replace
    those items of the source's parameters. Returns the task and the project made for
    ``new_project_name``, if any."""
    store = call.store
    source = get_task(store, task_id)
    overrides = {"hyperparams": hyperparams, "configuration": configuration}
    _check_params(overrides)
    hyperparams, configuration = overrides["hyperparams"], overrides["configuration"]
    new_project = None
    if not project and new_project_name:
        project = _find_or_create_project(call, new_project_name)
        new_project = {"id": project, "name": new_project_name}
    parent_of_source = source.get("parent")
    stamp = now()
    fields = {
        "name": name or source["name"],
        "comment": comment or source.get("comment"),
        "parent": parent or (parent_of_source if parent_of_source and not parent_of_source.startswith(DELETED_PREFIX) else source["id"]),
        "project": project or source.get("project"),
        "tags": tags or list(source.get("tags") or []),
        "system_tags": system_tags or [t for t in source.get("system_tags") or [] if t not in ("development", "archived")],
        "type": source["type"],
        "script": copy.deepcopy(source.get("script")),
        "output": {"destination": source["output"]["destination"]} if (source.get("output") or {}).get("destination") else {},
        "models": {
            "input": [{**m, "updated": stamp} for m in input_models]
            if input_models
            else copy.deepcopy((source.get("models") or {}).get("input") or []),
            "output": [],
        },
        "container": copy.deepcopy(container or source.get("container") or {}),
        "execution": _cloned_execution(source, execution_overrides, call.endpoint),
        "configuration": copy.deepcopy(configuration or source.get("configuration") or {}),
        "hyperparams": _cloned_hyperparams(source, hyperparams, hyperparams_overrides),
    }
    task = new_task(call.user["id"], fields)
    validate(
        store,
        task,
        parent=validate_references or bool(parent),
        project=validate_references or bool(project),
        models=validate_references or bool(input_models),
    )
    store.tasks[task["id"]] = task
    return task, new_project


def _find_or_create_project(call: Call, name: str) -> str:
    """``ProjectBLL.find_or_create``: the id of the project of that name, created when missing."""
    existing = next((p for p in call.store.projects.values() if p["name"] == projects.clean_name(name)[0]), None)
    return existing["id"] if existing else projects.create_project(call.store, call.user["id"], name)["id"]


def _cloned_execution(source: dict, overrides: dict | None, endpoint_name: str) -> dict:
    """The source's execution with ``execution_overrides`` applied, output artifacts and the queue dropped."""
    execution = copy.deepcopy(source.get("execution") or {})
    overrides = copy.deepcopy(overrides or {})
    for legacy in ("model", "docker_cmd", "parameters", "configuration"):
        if legacy in overrides:
            raise errors.unsupported_field(endpoint_name, f"execution_overrides.{legacy}")
    if isinstance(overrides.get("artifacts"), list):
        overrides["artifacts"] = {artifact_id(a): {"mode": "output", **a} for a in overrides["artifacts"]}
    execution.update(overrides)
    execution["artifacts"] = {k: a for k, a in (execution.get("artifacts") or {}).items() if a.get("mode", "output") != "output"}
    execution.pop("queue", None)
    return execution


def _cloned_hyperparams(source: dict, hyperparams: dict | None, overrides: dict | None) -> dict:
    """``hyperparams`` replace the source's whole; ``overrides`` replace single items (``nested_set``)."""
    if hyperparams:
        return copy.deepcopy(hyperparams)
    cloned = copy.deepcopy(source.get("hyperparams") or {})
    for section, items in (overrides or {}).items():
        cloned.setdefault(section, {}).update(copy.deepcopy(items))
    return cloned


@endpoint("tasks.set_requirements", required=("task", "requirements"))
def set_requirements(call: Call) -> dict:
    """``tasks.set_requirements``: any status; the task needs a script."""
    task = get_task(call.store, call.data["task"])
    if not task.get("script"):
        raise errors.missing_task_fields("Task has no script field", task=task["id"])
    task["script"]["requirements"] = call.data["requirements"]
    touch(task, call.user["id"])
    return {"updated": 1, "fields": {"script.requirements": call.data["requirements"]}}


def _params_list(task: dict) -> list[dict]:
    """``HyperParams._get_params_list``: all parameters sorted by (section, name)."""
    items = [p for section in (task.get("hyperparams") or {}).values() for p in section.values()]
    return sorted(items, key=lambda p: (p["section"], p["name"]))


@endpoint("tasks.get_hyper_params", required=("tasks",), mutates=False)
def get_hyper_params(call: Call) -> dict:
    """``HyperParams.get_params``: every task must exist."""
    ids = call.data["tasks"]
    missing = [t for t in ids if t not in call.store.tasks]
    if missing:
        raise errors.invalid_task_id(ids=ids)
    return {"params": [{"task": t, "hyperparams": _params_list(call.store.tasks[t])} for t in dict.fromkeys(ids)]}


@endpoint("tasks.edit_hyper_params", required=("task", "hyperparams"), fields=("replace_hyperparams", "force"))
def edit_hyper_params(call: Call) -> dict:
    """``HyperParams.edit_params``: ``replace_hyperparams`` none (merge by name), section
    (replace the sections given) or all; only a created task unless every item is in the
    ``properties`` section (or ``force`` with an in_progress task)."""
    items = call.data["hyperparams"]
    for index, item in enumerate(items):
        task_params.check_item_types(item, ["hyperparams", str(index)], task_params.PARAMS_ITEM_FIELDS)
        if item.get("section", "").lower() == "properties":
            item["section"] = "properties"
    properties_only = all(item.get("section") == "properties" for item in items)
    task = get_task_for_update(call.store, call.data["task"], force=call.get("force", False), allow_all_statuses=properties_only)
    sections: dict[str, dict] = {}
    for item in items:
        unknown = set(item) - set(task_params.PARAMS_ITEM_FIELDS)
        if unknown or not item.get("section") or not item.get("name") or item.get("value") is None:
            raise errors.validation_error("hyperparams items need section, name and value", item=str(item))
        sections.setdefault(item["section"], {})[item["name"]] = {
            key: item[key] for key in task_params.PARAMS_ITEM_FIELDS if item.get(key) is not None
        }
    mode = call.get("replace_hyperparams", "none")
    hyperparams = task.setdefault("hyperparams", {})
    if mode == "all":
        task["hyperparams"] = sections
    elif mode == "section":
        hyperparams.update(sections)
    elif mode == "none":
        for section, params in sections.items():
            hyperparams.setdefault(section, {}).update(params)
    else:
        raise errors.validation_error("replace_hyperparams must be one of none, section, all", value=mode)
    touch(task, call.user["id"], last_update=not properties_only)
    return {"updated": 1}


@endpoint("tasks.add_or_update_artifacts", required=("task", "artifacts"), fields=("force",))
def add_or_update_artifacts(call: Call) -> dict:
    """``Artifacts.add_or_update_artifacts``: always with force, so a created or in_progress task."""
    task = get_task_for_update(call.store, call.data["task"], force=True)
    artifacts = task.setdefault("execution", {}).setdefault("artifacts", {})
    for artifact in call.data["artifacts"]:
        if not artifact.get("key") or not artifact.get("type"):
            raise errors.validation_error("artifacts need key and type", artifact=str(artifact))
        artifact = {"mode": "output", **artifact}
        artifacts[artifact_id(artifact)] = artifact
    touch(task, call.user["id"])
    return {"updated": 1}


@endpoint("tasks.add_or_update_model", required=("task", "name", "model", "type"), fields=("iteration",))
def add_or_update_model(call: Call) -> dict:
    """``tasks.add_or_update_model``: replace the entry of that name or append one; the
    task's last_iteration rises to ``iteration``."""
    task = get_task_for_update(call.store, call.data["task"], force=True)
    kind = call.data["type"]
    if kind not in ("input", "output"):
        raise errors.validation_error("type must be input or output", field="type")
    item = {"name": call.data["name"], "model": call.data["model"], "updated": now()}
    entries = task.setdefault("models", {}).setdefault(kind, [])
    position = next((i for i, e in enumerate(entries) if e["name"] == item["name"]), None)
    if position is None:
        entries.append(item)
    else:
        entries[position] = item
    if call.get("iteration") is not None:
        task["last_iteration"] = max(task.get("last_iteration", 0), call.data["iteration"])
    touch(task, call.user["id"])
    return {"updated": 1}


@endpoint("tasks.ping", required=("task",))
def ping(call: Call) -> dict:
    """``TaskBLL.set_last_update``."""
    task = get_task(call.store, call.data["task"])
    task["last_update"] = task["last_change"] = now()
    return {}
