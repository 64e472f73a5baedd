"""events.*: ``apiserver/services/events.py``, ``apiserver/bll/event/event_bll.py``
(``add_events``: events of a task update its ``last_metrics`` and ``last_iteration`` through
``bll/task/task_bll.py:update_statistics`` and ``bll/task/utils.py:get_last_metric_updates``),
``apiserver/bll/event/event_metrics.py`` (scalar histograms) and
``apiserver/bll/event/events_iterator.py`` (log pages, task events by iteration)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections import defaultdict

from .. import errors
from ..registry import Call, endpoint
from ..store import Store, now, timestamp_ms
from .tasks import get_task

EVENT_TYPES = ("training_stats_scalar", "training_stats_vector", "training_debug_image", "plot", "log")
ALL_EVENT_TYPES = "*"  # bll/event/event_common.py: EventType.all
LOCKED_STATUSES = ("publishing", "published")
MAX_LONG = 2**63 - 1
SINGLE_SCALAR_ITERATION = -(2**31)
EVENT_ID_FIELDS = ("task", "iter", "metric", "variant", "key")
MAX_RAW_SCALARS_SIZE = 200_000  # events.conf: events_retrieval.max_raw_scalars_size, get_task_events' cap
ES_MAX_RESULT_WINDOW = 10_000  # Elasticsearch's index.max_result_window; the event index templates keep it
# config/default/services/events.conf: ignore_iteration.metrics (machine monitoring does not move a task's iteration)
IGNORE_ITERATION_METRICS = (":monitor:machine", ":monitor:gpu")


def field_hash(name: str) -> str:
    """``database/utils.py:hash_field_name``: last_metrics keys are md5 hashes."""
    return hashlib.md5(name.encode()).hexdigest()


def _event_id(event: dict) -> str:
    """``EventBLL._get_event_id``: a second event with the same id replaces the first."""
    return hashlib.md5("-".join(str(event[f]) for f in EVENT_ID_FIELDS if f in event).encode()).hexdigest()


def _summarize_scalars(summary: dict, event: dict) -> None:
    """``EventBLL._update_last_scalar_events_for_task`` over one batch."""
    value = event.get("value")
    if value is None:
        return
    last = summary[field_hash(event["metric"])].setdefault(field_hash(event["variant"]), {})
    last["metric"], last["variant"] = event["metric"], event["variant"]
    last["count"] = last.get("count", 0) + 1
    last["total"] = last.get("total", 0) + value
    iteration, stamp = event.get("iter", 0), event.get("timestamp", 0)
    if (iteration, stamp) >= (last.get("iter", iteration), last.get("timestamp", stamp)):
        last.update(value=value, iter=iteration, timestamp=stamp)
    if last.get("first_value_iter") is None or iteration < last["first_value_iter"]:
        last.update(first_value=value, first_value_iter=iteration)
    if last.get("min_value") is None or value < last["min_value"]:
        last.update(min_value=value, min_value_iter=iteration)
    if last.get("max_value") is None or value > last["max_value"]:
        last.update(max_value=value, max_value_iter=iteration)


def _apply_last_metrics(task: dict, summary: dict) -> None:
    """``get_last_metric_updates``: value/metric/variant are set from the batch; min and max
    replace the stored ones only when beyond them; first only when unset; mean over all
    values, rounded to 2 decimals."""
    for metric_key, variants in summary.items():
        for variant_key, data in variants.items():
            stored = task.setdefault("last_metrics", {}).setdefault(metric_key, {}).setdefault(variant_key, {})
            stored.update(metric=data["metric"], variant=data["variant"], value=data["value"])
            if stored.get("min_value") is None or stored["min_value"] > data["min_value"]:
                stored.update(min_value=data["min_value"], min_value_iteration=data["min_value_iter"])
            if stored.get("max_value") is None or stored["max_value"] < data["max_value"]:
                stored.update(max_value=data["max_value"], max_value_iteration=data["max_value_iter"])
            if stored.get("first_value") is None:
                stored.update(first_value=data["first_value"], first_value_iteration=data["first_value_iter"])
            count = stored.get("count") or 0
            stored["mean_value"] = round(((stored.get("mean_value") or 0) * count + data["total"]) / (count + data["count"]), 2)
            stored["count"] = count + data["count"]


def _allow_locked_by_task(events: list[dict]) -> dict[str, bool]:
    """``add_events``: ``allow_locked`` (popped from the events) lets events be added to a
    published task; all the events of a task must agree on it."""
    allowed: dict[str, bool] = {}
    for event in events:
        flag = event.pop("allow_locked", False)
        task_id = event.get("task")
        if task_id and allowed.setdefault(task_id, flag) != flag:
            raise errors.validation_error(f"Inconsistent allow_locked setting in the passed events for {task_id}")
    return allowed


def add_events(call: Call, events: list[dict]) -> dict:
    """``EventBLL.add_events`` for task events (model events are refused: not implemented)."""
    store = call.store
    problems: dict[str, int] = defaultdict(int)
    accepted = []
    iterations: dict[str, int] = {}
    summaries: dict[str, dict] = defaultdict(lambda: defaultdict(dict))
    events = [dict(event) for event in events]
    allow_locked = _allow_locked_by_task(events)
    for event in events:
        if event.get("model_event"):
            raise errors.unsupported_field(call.endpoint, "model_event")
        event["model_event"] = False
        x_axis_label = event.pop("x_axis_label", None)
        if x_axis_label is not None:
            raise errors.unsupported_field(call.endpoint, "x_axis_label")
        event_type = (event.get("type") or "").replace(" ", "_")
        task = store.tasks.get(event.get("task") or "")
        if not event.get("type"):
            problems["Event must have a 'type' field"] += 1
            continue
        if event_type not in EVENT_TYPES:
            problems[f"Invalid event type {event_type}"] += 1
            continue
        if not event.get("task"):
            problems["Event must have a 'task' field"] += 1
            continue
        if task is None or (task["status"] in LOCKED_STATUSES and not allow_locked[task["id"]]):
            problems[f"Invalid task id {event['task']}"] += 1
            continue
        event["type"] = event_type
        event["@timestamp"] = now()
        if "ts" in event:
            event["timestamp"] = event.pop("ts")
        event.setdefault("timestamp", timestamp_ms())
        event.setdefault("worker", call.worker)
        if event.get("iter") is not None:
            event["iter"] = int(event["iter"])
            if not -MAX_LONG - 1 <= event["iter"] <= MAX_LONG:
                problems[f"Iteration number should not exceed {MAX_LONG}"] += 1
                continue
        if "values" in event:
            event["value"] = event.pop("values")
        event["metric"] = event.get("metric") or ""
        event["variant"] = event.get("variant") or ""
        if event.get("iter") is not None and event["metric"] not in IGNORE_ITERATION_METRICS:
            iterations[task["id"]] = max(event["iter"], iterations.get(task["id"], 0))
        if event_type == "training_stats_scalar":
            _summarize_scalars(summaries[task["id"]], event)
        accepted.append(event)
    for event in accepted:
        if event["type"] != "log":
            event["_id"] = _event_id(event)
    # An event replaces a stored or earlier one with its id: one pass over the store per batch.
    last_with_id = {event["_id"]: index for index, event in enumerate(accepted) if "_id" in event}
    store.events[:] = [e for e in store.events if e.get("_id") not in last_with_id]
    store.events.extend(e for index, e in enumerate(accepted) if "_id" not in e or last_with_id[e["_id"]] == index)
    for task_id in {e["task"] for e in accepted}:
        task = store.tasks[task_id]
        if task_id in iterations:
            task["last_iteration"] = max(task.get("last_iteration", 0), iterations[task_id])
        if task_id in summaries:
            _apply_last_metrics(task, summaries[task_id])
        task["last_update"] = task["last_change"] = now()
    if not accepted:
        raise errors.events_not_added(**problems)
    return {"added": len(accepted), "errors": sum(problems.values()), "errors_info": dict(problems)}


@endpoint("events.add_batch", batched=True)
def add_batch(call: Call) -> dict:
    """``events.add_batch``: json-lines events, an empty batch refused (``BatchContainsNoItems``)."""
    if not call.batch:
        raise errors.batch_contains_no_items()
    return add_events(call, call.batch)


def _search_size(store: Store, event_type: str, size: int) -> int:
    """``size`` as Elasticsearch takes it: a search past ``index.max_result_window`` is refused
    (its 400 becomes ``DataError``, 500/100, in ``translate_errors_context``) once the index of
    the event type exists (``check_empty_data``; here: once such an event is stored)."""
    if size > ES_MAX_RESULT_WINDOW and any(event_type in (ALL_EVENT_TYPES, e["type"]) for e in store.events):
        raise errors.data_error(
            f"BadRequestError(400, 'search_phase_execution_exception', 'Result window is too large, from + size must be "
            f"less than or equal to: [{ES_MAX_RESULT_WINDOW}] but was [{size}]')"
        )
    return size


def task_events(store: Store, task_id: str, event_type: str) -> list[dict]:
    return [e for e in store.events if e["task"] == task_id and e["type"] == event_type]


@endpoint("events.get_task_log", required=("task",), fields=("batch_size", "navigate_earlier", "from_timestamp", "order"), mutates=False)
def get_task_log(call: Call) -> dict:
    """``events.get_task_log`` (2.9): ``batch_size`` log events from the latest
    (``navigate_earlier``, default) or the earliest, past ``from_timestamp``; events sharing
    the last timestamp all come along; ``order`` reverses the page when it disagrees."""
    get_task(call.store, call.data["task"])
    earlier = call.get("navigate_earlier", True)
    logs = sorted(task_events(call.store, call.data["task"], "log"), key=lambda e: e["timestamp"], reverse=earlier)
    start = call.get("from_timestamp")
    if start:
        logs = [e for e in logs if (e["timestamp"] < start if earlier else e["timestamp"] > start)]
    batch_size = _search_size(call.store, "log", call.get("batch_size", 5000))
    page = logs[:batch_size]
    if page:
        page += [e for e in logs[batch_size:] if e["timestamp"] == page[-1]["timestamp"]]
    order = call.get("order")
    if order and ((earlier and order == "asc") or (not earlier and order == "desc")):
        page.reverse()
    total = len(task_events(call.store, call.data["task"], "log"))
    return {"events": page, "returned": len(page), "total": total}


@endpoint("events.scalar_metrics_iter_histogram", required=("task",), fields=("samples", "key", "metrics", "model_events"), mutates=False)
def scalar_metrics_iter_histogram(call: Call) -> dict:
    """``EventMetrics.get_scalar_metrics_average_per_iter`` by iteration: per variant, fewer
    than ``samples`` points are returned as they are (averaged per iteration), otherwise
    averaged over buckets of ``ceil(range / samples)`` iterations."""
    if call.get("model_events"):
        raise errors.unsupported_field(call.endpoint, "model_events")
    if call.get("key", "iter") != "iter":
        raise errors.unsupported_field(call.endpoint, f"key={call.data['key']}")
    get_task(call.store, call.data["task"])
    samples = call.get("samples", 2000)
    wanted = {m["metric"]: set(m.get("variants") or []) for m in call.get("metrics", [])}
    series: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for event in task_events(call.store, call.data["task"], "training_stats_scalar"):
        if event.get("iter", 0) <= SINGLE_SCALAR_ITERATION:
            continue
        if wanted and (event["metric"] not in wanted or (wanted[event["metric"]] and event["variant"] not in wanted[event["metric"]])):
            continue
        series[(event["metric"], event["variant"])].append(event)
    result: dict[str, dict] = defaultdict(dict)
    for (metric, variant), events in sorted(series.items()):
        iters = [e.get("iter", 0) for e in events]
        interval = 1 if len(events) < samples else max(1, math.ceil((max(iters) - min(iters) + 1) / samples))
        buckets: dict[int, list[float]] = defaultdict(list)
        for event in events:
            buckets[(event.get("iter", 0) // interval) * interval].append(event["value"])
        keys = sorted(buckets)
        result[metric][variant] = {"name": variant, "x": keys, "y": [sum(buckets[k]) / len(buckets[k]) for k in keys]}
    return dict(result)


def _encode_scroll(scroll: dict) -> str:
    """The server signs its scroll state as a JWT (``events_iterator.py:Scroll``); clients
    only hand it back, so an opaque base64 of the same fields serves."""
    return base64.urlsafe_b64encode(json.dumps(scroll).encode()).decode()


def _decode_scroll(scroll_id: str) -> dict:
    try:
        return json.loads(base64.urlsafe_b64decode(scroll_id.encode()))
    except ValueError:
        raise errors.APIError(400, 1104, "Invalid scroll id", scroll_id=scroll_id) from None  # errors.conf: bad_request 1104


def _matches(event: dict, event_type: str, metric_variants: dict | None) -> bool:
    """``event_common.get_metric_variants_condition``: a metric with no variants takes all of its."""
    if event_type != ALL_EVENT_TYPES and event["type"] != event_type:
        return False
    if not metric_variants:
        return True
    return event["metric"] in metric_variants and (not metric_variants[event["metric"]] or event["variant"] in metric_variants[event["metric"]])


@endpoint(
    "events.get_task_events",
    required=("task",),
    fields=("batch_size", "metrics", "event_type", "order", "scroll_id", "count_total", "model_events"),
    mutates=False,
)
def get_task_events(call: Call) -> dict:
    """``services/events.py:get_task_events`` with ``EventsIterator._get_events`` keyed by
    ``iter``: ``batch_size`` events sorted by iteration (``order`` asc by default), the next
    page after the last iteration returned (``search_after``), and every event sharing that
    last iteration brought along. As on the server, a first asc page starts at 0 and a scroll
    whose last iteration is 0 starts over (``if from_key_value:``); events without an
    iteration sort last either way (Elasticsearch's ``missing: _last``)."""
    if call.get("model_events"):
        raise errors.unsupported_field(call.endpoint, "model_events")
    get_task(call.store, call.data["task"])
    request = {key: call.data[key] for key in ("task", "batch_size", "metrics", "event_type", "order", "count_total") if key in call.data}
    scroll_id = call.get("scroll_id")
    if scroll_id:
        scroll = _decode_scroll(scroll_id)
        if scroll["from_key_value"] is None:
            return {"returned": 0, "total": scroll["total"], "scroll_id": scroll_id, "events": []}
        from_key_value, total = int(scroll["from_key_value"]), scroll["total"]
        request = {**scroll["request"], "batch_size": call.get("batch_size") or scroll["request"].get("batch_size")}
    else:
        from_key_value, total = None, None
    event_type = request.get("event_type") or ALL_EVENT_TYPES
    if event_type != ALL_EVENT_TYPES and event_type not in EVENT_TYPES:
        raise errors.validation_error(f"Invalid event type {event_type}")
    descending = request.get("order", "asc") == "desc"
    metric_variants = {m["metric"]: m.get("variants") or [] for m in request.get("metrics") or []} or None
    matching = [e for e in call.store.events if e["task"] == request["task"] and _matches(e, event_type, metric_variants)]
    if request.get("count_total", True) and total is None:
        total = len(matching)

    missing = -math.inf if descending else math.inf
    key = lambda event: event.get("iter", missing)  # noqa: E731
    ordered = sorted(matching, key=key, reverse=descending)
    if from_key_value:
        ordered = [e for e in ordered if (key(e) < from_key_value if descending else key(e) > from_key_value)]
    page = ordered[: _search_size(call.store, event_type, min(request.get("batch_size", 500), MAX_RAW_SCALARS_SIZE))]
    if page:
        page += [e for e in ordered[len(page) :] if key(e) == key(page[-1])]
    last = page[-1].get("iter") if page else None
    next_scroll = {"from_key_value": None if last is None else str(last), "total": total, "request": request}
    return {"returned": len(page), "total": total, "scroll_id": _encode_scroll(next_scroll), "events": page}
