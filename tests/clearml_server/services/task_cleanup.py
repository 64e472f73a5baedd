"""What tasks.reset and tasks.delete do to a task's outputs: ``apiserver/bll/task/task_cleanup.py``
(``cleanup_task``, ``verify_task_children_and_ouptuts``, ``schedule_for_delete``) and
``_delete_task_events`` of ``apiserver/services/tasks.py``."""

from __future__ import annotations

import re

from .. import errors
from ..store import Store, new_id, now
from .tasks import DELETED_PREFIX

# task_cleanup.py: supported_storage_types; http(s) is the fileserver
# (services.async_urls_delete.fileserver.url_prefixes defaults to ["https://", "http://"])
STORAGE_TYPES = (("s3://", "s3"), ("azure://", "azure"), ("gs://", "gs"), ("https://", "fileserver"), ("http://", "fileserver"))
# EventBLL.validate_and_compress_plots: the image sources of a plot ("source": "<scheme>://...")
PLOT_IMAGE_SOURCE = re.compile(r"""["']source["']:\s?["']([a-z][a-z0-9+.-]*://[^"'\n]*)["']""", re.IGNORECASE)


def task_outputs(store: Store, task: dict, force: bool) -> tuple[list[dict], list[dict], set[str]]:
    """``verify_task_children_and_ouptuts``: (published, draft) output models (those linked to
    the task and those in its ``models.output``) and the drafts that other tasks use as input.
    Without ``force``, published children or published output models refuse the cleanup."""
    if not force:
        children = sum(1 for t in store.tasks.values() if t.get("parent") == task["id"] and t["status"] == "published")
        if children:
            raise errors.task_cannot_be_deleted("has children, use force=True", task=task["id"], children=children)
    linked = [m for m in store.models.values() if m.get("task") == task["id"]]
    published = [m for m in linked if m.get("ready")]
    if published and not force:
        raise errors.task_cannot_be_deleted("has output models, use force=True", task=task["id"], models=len(published))
    drafts = [m for m in linked if not m.get("ready")]
    for item in (task.get("models") or {}).get("output") or []:
        model = store.models.get(item["model"])
        if model is None:
            continue
        if model.get("ready") and not force:
            raise errors.task_cannot_be_deleted("has output model, use force=True", task=task["id"], model=model["id"])
        (published if model.get("ready") else drafts).append(model)
    draft_ids = {m["id"] for m in drafts}
    inputs = {m["model"] for t in store.tasks.values() for m in (t.get("models") or {}).get("input") or []}
    return _unique(published), _unique(drafts), draft_ids & inputs


def _unique(models: list[dict]) -> list[dict]:
    return list({m["id"]: m for m in models}.values())


def _stamp(entity: dict, user: str, **updates) -> None:
    entity.update(updates, last_change=now(), last_changed_by=user)


def cleanup_task(store: Store, task: dict, user: str, *, force: bool, update_children: bool, delete_output_models: bool) -> dict:
    """``cleanup_task``: children point at the deleted task (``update_children``); with
    ``delete_output_models`` the draft output models no other task uses are deleted (the used
    ones lose their task link); every other output model (published ones, and drafts kept by
    ``delete_output_models=false``) points at the deleted task on delete and loses its task
    link on reset. Returns ``CleanupResult``: the counts and the ``urls`` of the files left
    behind (draft models deleted or kept, output artifacts)."""
    published, drafts, in_use = task_outputs(store, task, force)
    artifacts = ((task.get("execution") or {}).get("artifacts") or {}).values()
    urls = {
        "model_urls": sorted({m["uri"] for m in drafts if m.get("uri") and m["id"] not in in_use}),
        "artifact_urls": sorted({a["uri"] for a in artifacts if a.get("mode", "output") == "output" and a.get("uri")}),
        "event_urls": [],  # TaskUrls keeps the field for the API; event files are never listed
    }
    deleted_id = DELETED_PREFIX + task["id"]
    updated_children = 0
    if update_children:
        for child in store.tasks.values():
            if child.get("parent") == task["id"]:
                _stamp(child, user, parent=deleted_id)
                updated_children += 1
    deleted_models = updated_models = 0
    for models, deletable in ((drafts, True), (published, False)):
        if delete_output_models and deletable:
            for model in models:
                if model["id"] in in_use:
                    model.pop("task", None)
                    _stamp(model, user)
                else:
                    del store.models[model["id"]]
                    deleted_models += 1
        elif update_children:
            for model in models:
                _stamp(model, user, task=deleted_id)
            updated_models += len(models)
        else:
            for model in models:
                model.pop("task", None)
                _stamp(model, user)
    return {"updated_children": updated_children, "updated_models": updated_models, "deleted_models": deleted_models, "urls": urls}


def cleanup_response(cleanup: dict, return_file_urls: bool) -> dict:
    """``CleanupResult.to_res_dict``: the urls only with ``return_file_urls``, else None."""
    return {**cleanup, "urls": cleanup["urls"] if return_file_urls else None}


def _storage_type(url: str) -> str | None:
    return next((storage for prefix, storage in STORAGE_TYPES if url.startswith(prefix)), None)


def schedule_for_delete(store: Store, user: str, task_id: str, urls: set[str]) -> None:
    """``schedule_for_delete``: every URL of a known storage becomes an ``UrlToDelete`` for the
    server's ``async_urls_delete`` job (``files.py:UrlsDeleteJob`` here); a URL already
    scheduled is scheduled anew. Other URLs (``file://``, bare paths) are left alone."""
    scheduled = {entry["url"]: entry for entry in store.urls_to_delete}
    for url in sorted(urls):
        storage = _storage_type(url)
        if storage is None:
            continue
        entry = scheduled.get(url)
        if entry is None:
            entry = {"id": new_id(), "url": url, "storage_type": storage, "type": "file"}
            store.urls_to_delete.append(entry)
        entry.update(user=user, task=task_id, created=now(), status="created", retry_count=0)
        entry.pop("last_failure_reason", None)


def event_urls(store: Store, task_id: str) -> set[str]:
    """``collect_debug_image_urls`` and ``collect_plot_image_urls``: debug image URLs and the
    image sources of plots."""
    urls = set()
    for event in store.events:
        if event.get("task") != task_id:
            continue
        if event["type"] == "training_debug_image" and event.get("url"):
            urls.add(event["url"])
        elif event["type"] == "plot":
            urls.update(PLOT_IMAGE_SOURCE.findall(event.get("plot_str") or ""))
    return urls


def delete_task_events(store: Store, user: str, task_id: str, cleanup: dict, delete_external_artifacts: bool) -> None:
    """``_delete_task_events`` (``services.async_urls_delete.enabled`` is true): the task's
    events are deleted; with ``delete_external_artifacts`` the files of its deleted models,
    its output artifacts and its events are scheduled for deletion."""
    if delete_external_artifacts:
        schedule_for_delete(store, user, task_id, set(cleanup["urls"]["model_urls"]) | set(cleanup["urls"]["artifact_urls"]))
        schedule_for_delete(store, user, task_id, event_urls(store, task_id))
    store.events[:] = [e for e in store.events if e.get("task") != task_id]
