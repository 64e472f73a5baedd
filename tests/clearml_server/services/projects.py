"""projects.*: ``apiserver/services/projects.py``, ``apiserver/bll/project/project_bll.py``
and ``apiserver/bll/project/sub_projects.py`` (a name ``a/b`` creates ``a`` as its parent;
every project keeps the ids of its ancestors in ``path``)."""

from __future__ import annotations

from .. import errors
from ..query import QueryOptions, get_many
from ..registry import OWN_VALIDATION, Call, endpoint
from ..store import COMPANY_ID, Store, new_id, now

# apiserver/database/model/project.py: Project.get_all_query_options
PROJECT_QUERY = QueryOptions(
    pattern_fields=("name", "basename", "description"), list_fields=("tags", "system_tags", "id", "parent", "path"), range_fields=("last_update",)
)
GET_ALL_KEYS = ("shallow_search", "search_hidden", "allow_public")
CREATE_FIELDS = ("description", "tags", "system_tags", "default_output_destination")


def clean_name(name: str, raise_if_empty: bool = True) -> tuple[str, str]:
    """``sub_projects.py:_validate_project_name``: (name without extra slashes, its location)."""
    parts = [p.strip() for p in name.split("/") if p]
    if not parts and raise_if_empty:
        raise errors.invalid_project_name(name=name)
    return "/".join(parts), "/".join(parts[:-1])


def _by_name(store: Store, name: str) -> dict | None:
    return next((p for p in store.projects.values() if p["name"] == name), None)


def _new_project(store: Store, user: str, name: str, parent: dict | None, **fields) -> dict:
    stamp = now()
    project = {
        "id": new_id(),
        "company": COMPANY_ID,
        "user": user,
        "name": name,
        "basename": name.split("/")[-1],
        "description": fields.pop("description", ""),
        "created": stamp,
        "last_update": stamp,
        "tags": sorted(fields.pop("tags", None) or []),
        "system_tags": sorted(fields.pop("system_tags", None) or []),
        "parent": parent["id"] if parent else None,
        "path": [*parent["path"], parent["id"]] if parent else [],
        **{k: v for k, v in fields.items() if v is not None},
    }
    store.projects[project["id"]] = project
    if parent:
        parent["last_update"] = stamp
    return project


def ensure_project(store: Store, user: str, name: str) -> dict | None:
    """``sub_projects.py:_ensure_project``: the project and every missing ancestor."""
    name, location = clean_name(name, raise_if_empty=False)
    if not name:
        return None
    existing = _by_name(store, name)
    if existing:
        return existing
    return _new_project(store, user, name, ensure_project(store, user, location))


def create_project(store: Store, user: str, name: str, **fields) -> dict:
    """``ProjectBLL.create``: the name is unique; missing parents are created."""
    name, location = clean_name(name)
    if _by_name(store, name):
        raise errors.APIError(400, 801, "Project with the same name already exists", name=name, company=COMPANY_ID)
    return _new_project(store, user, name, ensure_project(store, user, location), **fields)


def with_children(store: Store, project_ids: list[str]) -> list[str]:
    """``sub_projects.py:_ids_with_children``."""
    children = [p["id"] for p in store.projects.values() if set(p["path"]) & set(project_ids)]
    return list({*project_ids, *children})


def get_project(store: Store, project_id: str) -> dict:
    project = store.projects.get(project_id)
    if project is None:
        raise errors.invalid_project_id(id=project_id)
    return project


@endpoint("projects.get_all", fields=OWN_VALIDATION, mutates=False)
def get_all(call: Call) -> dict:
    """``projects.get_all``: ``_adjust_search_parameters`` (``parent`` matches anywhere in the
    path unless ``shallow_search``; then top level only by default) and ``_hidden_query``."""
    query = {k: v for k, v in call.data.items() if k not in GET_ALL_KEYS}
    query.pop("path", None)
    if not call.get("shallow_search", False):
        if "parent" in query:
            query["path"] = query.pop("parent")
    elif "parent" not in query:
        query["parent"] = [None]
    projects = list(call.store.projects.values())
    if not (call.get("search_hidden") or call.get("id")):
        projects = [p for p in projects if "hidden" not in p["system_tags"]]
    return {"projects": get_many(call.endpoint, projects, query, PROJECT_QUERY)}


@endpoint("projects.get_by_id", required=("project",), mutates=False)
def get_by_id(call: Call) -> dict:
    """``projects.get_by_id``: an unknown id is ``InvalidProjectId`` (400/401)."""
    return {"project": get_project(call.store, call.data["project"])}


@endpoint("projects.create", required=("name",), fields=CREATE_FIELDS)
def create(call: Call) -> dict:
    """``projects.create``: ``ProjectBLL.create``."""
    fields = {k: call.data[k] for k in CREATE_FIELDS if k in call.data}
    return {"id": create_project(call.store, call.user["id"], call.data["name"], **fields)["id"]}


@endpoint("projects.update", required=("project",), fields=CREATE_FIELDS)
def update(call: Call) -> dict:
    """``projects.update`` without renaming (a rename moves subprojects; not needed here)."""
    project = get_project(call.store, call.data["project"])
    fields = {k: call.data[k] for k in CREATE_FIELDS if k in call.data}
    project.update(fields, last_update=now())
    return {"updated": 1, "fields": fields}
