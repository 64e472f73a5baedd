"""get_all queries: filters, ordering, paging and projections as clearml-server builds them.

Follows ``apiserver/database/model/base.py:GetMixin``:
- ``_prepare_query_no_company``: pattern fields are regular expressions (``re.search``, case
  sensitive); list fields take a value or a list, with ``None`` meaning "empty or missing",
  ``-x`` excluding x, and the ``__$not/__$all/__$and/__$any/__$or`` operators
  (``NewListFieldBucketHelper``); range fields take ``[min, max]`` (``get_range_field_query``),
  ``last_metrics.*`` values converted to numbers; datetime fields take ``>=/>/<=/<`` prefixed
  ISO dates (``_get_dates_query``); ``_any_/_all_`` take ``{fields, pattern}`` (case-insensitive).
- ``validate_order_by`` (``-`` for descending, ``id`` appended) and
  ``_get_many_override_none_ordering`` (missing values of the first order field come last;
  a query on or ordered first by a ``_field_collation_overrides`` field, such as
  ``hyperparams.``, orders strings with ICU's numeric ordering collation).
- ``validate_paging`` (``page``/``page_size``, 500 at most) and ``split_projection``
  (``only_fields``/``projection``, ``-field`` excludes, ``id`` always returned; no ``*``).
Any other request key is refused with an error naming it.
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import errors

MAX_PAGE_SIZE = 500  # services._mongo.max_page_size
PAGING_KEYS = ("page", "page_size", "order_by", "only_fields", "projection")
MISSING = object()


@dataclass(frozen=True)
class QueryOptions:
    """``GetMixin.QueryParameterOptions`` of one entity; ``x.*`` matches every field under x."""

    pattern_fields: tuple[str, ...] = ("name",)
    list_fields: tuple[str, ...] = ("tags", "system_tags", "id")
    range_fields: tuple[str, ...] = ()
    datetime_fields: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    exclude_by_default: tuple[str, ...] = ()
    collation_fields: tuple[str, ...] = ()  # _field_collation_overrides: prefixes ordered by _numeric_locale


def get_path(document: dict, path: str) -> Any:
    value: Any = document
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def _matches_pattern(patterns: Sequence[str], field: str) -> bool:
    return any(field == p or (p.endswith("*") and field.startswith(p[:-1])) for p in patterns)


# ---- list fields: NewListFieldBucketHelper --------------------------------------------

_OPERATORS = {"__$all": "and", "__$and": "and", "__$any": "or", "__$or": "or"}
_MODIFIERS = {("and", True): "all", ("and", False): "nin", ("or", True): "in", ("or", False): "nin"}


def _list_actions(field: str, data: Sequence[Any]) -> tuple[str, dict[str, list], bool]:
    """(global operator, {mongo modifier: values}, allow empty) for a list-field filter."""
    context, global_op, allow_empty, legacy, unary = "or", None, False, True, None
    actions: dict[str, list] = {}
    for value in data:
        if value is None:
            unary = None
            global_op = global_op or "and"
            allow_empty = True
            continue
        if not isinstance(value, str):
            raise errors.fields_value_error("invalid value type, string expected", field=field, value=str(value))
        if value == "__$nop":
            unary, context, legacy = None, "or", True
            global_op = global_op or "and"
            continue
        if value.startswith("__$"):
            if unary:
                raise errors.fields_value_error("Value is expected after", field=field, operator=unary)
            if value == "__$not":
                unary = value
                continue
            if value not in _OPERATORS:
                raise errors.fields_value_error("Unsupported operator", field=field, operator=value)
            context, legacy = _OPERATORS[value], False
            global_op = global_op or context
            continue
        global_op = global_op or "and"
        include = True
        if unary:
            include, unary = False, None
        elif legacy and value.startswith("-"):
            value = value[1:]
            if not value:
                raise errors.fields_value_error("Missing value after the exclude prefix -", field=field, value=value)
            include = False
        actions.setdefault(_MODIFIERS[(context, include)], []).append(value)
    if unary:
        raise errors.fields_value_error("Value is expected after", operator=unary)
    return global_op or "and", actions, allow_empty


def _mongo_list_test(stored: Any, modifier: str, values: list) -> bool:
    """Mongo's ``$in/$nin/$all`` on a scalar or an array field (a missing field matches only $nin)."""
    if stored is MISSING or stored is None:
        return modifier == "nin"
    elements = stored if isinstance(stored, list) else [stored]
    if modifier == "in":
        return any(e in values for e in elements)
    if modifier == "nin":
        return not any(e in values for e in elements)
    return all(v in elements for v in values)  # all


def list_filter(field: str, data: Any):
    if not isinstance(data, (list, tuple)):
        data = [data]
    global_op, actions, allow_empty = _list_actions(field, data)
    combine = all if global_op == "and" else any

    def test(document: dict) -> bool:
        stored = get_path(document, field)
        if allow_empty and (stored is MISSING or stored in (None, [])):
            return True
        if not actions:  # only None given: only empty values match; only operators: everything does
            return not allow_empty
        return combine(_mongo_list_test(stored, modifier, values) for modifier, values in actions.items())

    return test


# ---- other filters -------------------------------------------------------------------


def _to_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def range_filter(field: str, data: Any):
    if not isinstance(data, (list, tuple)) or len(data) != 2:
        raise errors.validation_error(f"Min and max values should be specified for range field {field}")
    low, high = data
    if low is None and high is None:
        raise errors.validation_error(f"At least one of min or max values should be provided for field {field}")
    if field.startswith("last_metrics."):
        low, high = _to_number(low), _to_number(high)

    def test(document: dict) -> bool:
        stored = get_path(document, field)
        if stored is MISSING or stored is None:
            return low is None
        try:
            return (low is None or stored >= low) and (high is None or stored <= high)
        except TypeError:
            return False

    return test


_DATE_RE = re.compile(r"^(?P<prefix>>=|>|<=|<)?(?P<value>.*)$")
_DATE_OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, None: lambda a, b: a == b}


def _parse_date(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # naive is UTC, as on the server


def datetime_filter(field: str, data: Any):
    data = data if isinstance(data, list) else [data]
    if len(data) == 2 and not any(d and d[:1] in "<>" for d in data):
        low, high = (None if d is None else _parse_date(d) for d in data)
        conditions = [(">=", low), ("<=", high)]
        conditions = [(op, value) for op, value in conditions if value is not None]
    else:
        conditions = []
        for item in data:
            match = _DATE_RE.match(item)
            try:
                conditions.append((match.group("prefix"), _parse_date(match.group("value"))))
            except (ValueError, OverflowError):
                continue  # the server skips values it cannot parse

    def test(document: dict) -> bool:
        stored = get_path(document, field)
        if stored in (MISSING, None):
            return False
        stored = _parse_date(stored)
        return all(_DATE_OPS[op](stored, value) for op, value in conditions)

    return test


def pattern_filter(field: str, pattern: str, flags: int = 0):
    regex = re.compile(pattern, flags)

    def test(document: dict) -> bool:
        stored = get_path(document, field)
        return isinstance(stored, str) and regex.search(stored) is not None

    return test


def multi_field_filter(key: str, data: Any):
    """``_any_``/``_all_`` with ``{fields: [...], pattern: ...}``: a case-insensitive regex."""
    if not isinstance(data, dict) or set(data) - {"fields", "pattern"} or "pattern" not in data:
        raise errors.unsupported_field(key, "only {fields, pattern} is implemented")
    tests = [pattern_filter(f, data["pattern"], re.IGNORECASE) for f in data.get("fields") or []]
    combine = any if key in ("_any_", "_or_") else all
    return (lambda document: combine(t(document) for t in tests)) if tests else (lambda document: True)


def build_filters(endpoint: str, data: dict, options: QueryOptions) -> list:
    tests = []
    for key, value in data.items():
        if key in PAGING_KEYS:
            continue
        if key.startswith("last_metrics."):
            value = _to_number(value) if not isinstance(value, list) else [_to_number(v) for v in value]
        if key in options.pattern_fields:
            if value:
                tests.append(pattern_filter(key, value))
        elif _matches_pattern(options.list_fields, key):
            if value is not None:
                tests.append(list_filter(key, value))
        elif _matches_pattern(options.range_fields, key):
            if value is not None:
                tests.append(range_filter(key, value))
        elif key in options.datetime_fields:
            if value is not None:
                tests.append(datetime_filter(key, value))
        elif _matches_pattern(options.fields, key):
            if value is not None:
                tests.append(lambda document, key=key, value=value: get_path(document, key) == value)
        elif key in ("_any_", "_or_", "_all_", "_and_"):
            tests.append(multi_field_filter(key, value))
        else:
            raise errors.unsupported_field(endpoint, key)
    return tests


# ---- ordering, paging, projection -----------------------------------------------------

_DIGITS = re.compile(r"[0-9]+|.", re.DOTALL)
# the canonical BSON type order of MongoDB's sort, for the types the stored documents hold
_BSON_RANK = {int: 2, float: 2, str: 3, dict: 4, bool: 8}


def _collation_key(text: str) -> tuple:
    """``_numeric_locale`` (``{"locale": "en_US", "numericOrdering": True}``) approximated as
    ICU orders at its default strength: runs of digits by their value, then letters by their
    base letter (accents second, case third, lower case first); spaces and punctuation come
    before digits, digits before letters (among themselves, punctuation by code point). Not a
    number conversion: "1.25" > "1.5" and "-2" > "-1", as the server sorts them."""
    primary, accents, cases = [], [], []
    for run in _DIGITS.findall(text):
        if run.isdigit() and run.isascii():
            primary.append((1, int(run)))
        elif run.isalpha():
            base, *marks = unicodedata.normalize("NFD", run.casefold())
            primary.append((2, base))
            accents.append("".join(marks))
            cases.append(run.isupper())
        elif not unicodedata.combining(run):
            primary.append((0, ord(run)))
    return tuple(primary), tuple(accents), tuple(cases)


def _sort_key(value: Any, collate: bool) -> tuple:
    """MongoDB's order of values: by BSON type, then within the type; strings by binary
    comparison, or by the collation; embedded documents field by field (type, name, value)."""
    rank = _BSON_RANK.get(type(value))
    if rank is None:
        raise errors.validation_error(f"ordering by a field holding {type(value).__name__} is not implemented by the test server")
    if isinstance(value, str):
        return rank, _collation_key(value) if collate else value
    if isinstance(value, dict):
        items = ((name, _sort_key(item, collate)) for name, item in value.items())
        return rank, tuple((key[0], name, key) for name, key in items)
    return rank, value


def _collation(data: dict, fields: list[str], options: QueryOptions) -> bool:
    """``GetMixin.get_many``: the collation of the first query field that has one
    (``_field_collation_overrides``), else that of the first order field; it then orders every
    string of the query."""
    first_order_field = fields[0].lstrip("-") if fields else ""
    for field in [*data, first_order_field]:
        if any(field.startswith(prefix) for prefix in options.collation_fields):
            return True
    return False


def order(documents: list[dict], data: dict, options: QueryOptions) -> list[dict]:
    order_by = data.get("order_by")
    if not order_by:
        return documents
    fields = list(order_by) if isinstance(order_by, list) else [order_by]
    collate = _collation(data, fields, options)
    if not any(f in ("id", "-id") for f in fields):
        fields.append("id")
    result = documents
    for position, spec in reversed(list(enumerate(fields))):
        descending = spec.startswith("-")
        field = spec.lstrip("-")
        present = [d for d in result if get_path(d, field) not in (MISSING, None)]
        absent = [d for d in result if get_path(d, field) in (MISSING, None)]
        present.sort(key=lambda d: _sort_key(get_path(d, field), collate), reverse=descending)
        if position == 0 and not descending:
            result = present + absent  # the first ascending field puts missing values last
        else:
            result = (absent + present) if not descending else (present + absent)
    return result


def page(documents: list[dict], data: dict) -> list[dict]:
    page_number = data.get("page", 0)
    if page_number is not None and page_number < 0:
        raise errors.validation_error("page must be >=0", field="page")
    size = data.get("page_size", MAX_PAGE_SIZE)
    if size is not None and size < 1:
        raise errors.validation_error("page_size must be >0", field="page_size")
    if size is None:
        if page_number:
            raise errors.missing_required_fields("page_size is required when page is requested", field="page_size")
        return documents
    size = min(size, MAX_PAGE_SIZE)
    start = (page_number or 0) * size
    return documents[start : start + size]


def _path_tree(paths: Iterable[str]) -> dict:
    tree: dict = {}
    for path in paths:
        node = tree
        for part in path.split("."):
            node = node.setdefault(part, {})
    return tree


def _include(value: Any, tree: dict) -> Any:
    """MongoDB's inclusion projection: an embedded document on the way to a projected field is
    kept even when the field itself is missing (``only("runtime.version")`` of a task whose
    runtime has no version returns ``runtime: {}``); arrays are projected element by element."""
    if not tree:
        return copy.deepcopy(value)
    if isinstance(value, list):
        return [_include(item, tree) for item in value if isinstance(item, (dict, list))]
    if not isinstance(value, dict):
        return MISSING
    result = {}
    for key, subtree in tree.items():
        if key in value:
            projected = _include(value[key], subtree)
            if projected is not MISSING:
                result[key] = projected
    return result


def _delete_path(target: dict, path: str) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        target = target.get(part)
        if not isinstance(target, dict):
            return
    target.pop(parts[-1], None)


def project(document: dict, projection: Sequence[str], options: QueryOptions) -> dict:
    include = [p for p in projection if not p.startswith("-")]
    exclude = {p.lstrip("-") for p in projection if p.startswith("-")}
    exclude = (set(options.exclude_by_default) | exclude) - set(include)
    if include:
        result = _include(document, _path_tree([*include, "id"]))
    else:
        result = copy.deepcopy(document)
    for path in exclude:
        _delete_path(result, path)
    return result


def _check_projection(projection: Sequence[str]) -> None:
    """``get_many`` hands the projection to mongoengine's ``only``/``exclude``, which resolve each
    path against the document: ``*`` (a ``get_all_ex`` projection, ``ProjectionHelper``) is no
    field, a ``LookUpError`` the server answers as a general error (500/0)."""
    for path in projection:
        if "*" in path.lstrip("-").split("."):
            raise errors.APIError(500, 0, 'Cannot resolve field "*"')


def get_many(endpoint: str, documents: Iterable[dict], data: dict, options: QueryOptions) -> list[dict]:
    """Filter, order, page and project ``documents`` by the request ``data``."""
    tests = build_filters(endpoint, data, options)
    projection = data.get("projection") or data.get("only_fields") or []
    _check_projection(projection)
    selected = [d for d in documents if all(test(d) for test in tests)]
    selected = page(order(selected, data, options), data)
    return [project(d, projection, options) for d in selected]
