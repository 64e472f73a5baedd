"""Errors as clearml-server reports them: HTTP status = result_code, plus a subcode and a message.

Codes and default messages are those of ``apiserver/apierrors/errors.conf``; the message is
built as ``apiserver/apierrors/base.py:BaseError`` builds it:
``<default message> (<extra>): key=value, key=value``.
"""

from __future__ import annotations

from typing import Any


class APIError(Exception):
    def __init__(self, code: int, subcode: int, default_msg: str, extra: str | None = None, **kwargs: Any):
        message = default_msg
        if extra:
            message += f" ({extra})"
        if kwargs:
            message += ": " + ", ".join(f"{key}={_format(value)}" for key, value in kwargs.items())
        super().__init__(message)
        self.code = code
        self.subcode = subcode
        self.msg = message
        self.error_data = {key: _jsonable(value) for key, value in kwargs.items()}


def _format(value: Any) -> str:
    if isinstance(value, (list, tuple, set)):
        return f"({', '.join(str(v) for v in value)})"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    return value if isinstance(value, (dict, list, str, int, float, bool, type(None))) else str(value)


def _error(code: int, subcode: int, default_msg: str):
    def make(extra: str | None = None, **kwargs: Any) -> APIError:
        return APIError(code, subcode, default_msg, extra, **kwargs)

    return make


# 400 bad_request
validation_error = _error(400, 12, "Validation error")
missing_required_fields = _error(400, 11, "Missing required fields")
fields_value_error = _error(400, 16, "Invalid value for fields")
batch_contains_no_items = _error(400, 17, "Batch request contains no items")
invalid_task_id = _error(400, 101, "Invalid task id")
invalid_task_status = _error(400, 110, "Invalid task status")
missing_task_fields = _error(400, 122, "Task is missing expected fields")
task_cannot_be_deleted = _error(400, 123, "Task cannot be deleted")
events_not_added = _error(400, 131, "Events not added")
invalid_model_id = _error(400, 201, "Invalid model id")
model_is_ready = _error(400, 203, "Model is ready")
invalid_project_id = _error(400, 401, "Invalid project id")
invalid_project_name = _error(400, 407, "Invalid project name")
expected_unique_data = _error(400, 801, "Value combination already exists (unique field already contains this value)")
data_validation_error = _error(400, 800, "Data validation error")
invalid_queue_id = _error(400, 701, "Invalid queue id")
invalid_queue_or_task_not_queued = _error(400, 703, "Invalid queue id or task not in queue")
task_already_queued = _error(400, 706, "Failed adding task to queue since task is already queued")
no_default_queue = _error(400, 707, "No queue is tagged as the default queue for this company")

# 500 server_error
data_error = _error(500, 100, "General data error")

# 401 unauthorized
no_credentials = _error(401, 20, "Unauthorized (missing credentials)")
bad_credentials = _error(401, 21, "Unauthorized (malformed credentials)")
invalid_credentials = _error(401, 22, "Unauthorized (invalid credentials)")
invalid_token = _error(401, 30, "Invalid token")
bad_auth_type = _error(401, 10, "Unauthorized (bad authentication header type)")


def check_min_length(document: str, field: str, value: str, min_length: int = 3) -> None:
    """mongoengine's ``min_length`` check on save, as ``database/errors.py:MongoEngineErrorsHandler``
    reports it (task, model and queue names are ``StrippedStringField(min_length=3)``)."""
    if len((value or "").strip()) < min_length:
        raise data_validation_error(
            f"ValidationError ({document}:None) (String value is too short: ['{field}'])", **{field: "String value is too short"}
        )


def unknown_endpoint(name: str, version: str) -> APIError:
    """``service_repo.py:ServiceRepo._resolve_endpoint_from_call``: 404, subcode 0."""
    return APIError(404, 0, f"Unable to find endpoint for name {name} and version {version}")


def unsupported_field(endpoint: str, field: str) -> APIError:
    """A request field this test server does not implement: refused, never ignored."""
    return validation_error(
        f"the ClearML test server does not implement field {field!r} of {endpoint}; add it to tests/clearml_server with the server's semantics",
        field=field,
    )
