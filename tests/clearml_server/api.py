"""The API server: HTTP transport, the response envelope, dispatch and the call log.

Follows ``apiserver/server_init/request_handlers.py`` (request data from the JSON body,
query string arguments merged in, ``application/json-lines`` bodies as batches) and
``apiserver/service_repo/service_repo.py:handle_call`` / ``apicall.py:get_response``
(``{"meta": {..., "result_code", "result_subcode", "result_msg"}, "data": ...}`` with the
HTTP status equal to ``result_code``; an unknown endpoint is a 404 with subcode 0).
"""

from __future__ import annotations

import json
import re
import traceback
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import errors
from .auth import API_VERSION, Authenticator
from .registry import ENDPOINTS, Call
from .store import new_id

# apiserver/service_repo/service_repo.py: ServiceRepo._endpoint_exp (version optional)
PATH_RE = re.compile(r"^/?(v(?P<version>\d+\.?\d+)/)?(?P<name>[a-zA-Z_]\w+\.[a-zA-Z_]\w+)/?$")
WORKER_HEADERS = ("X-ClearML-Worker", "X-Trains-Worker")


def _convert_query_value(value: str) -> Any:
    """``request_handlers.py:_apply_multi_dict``: numbers and booleans in query strings."""
    if value.replace(".", "", 1).isdigit():
        return float(value) if "." in value else int(value)
    if value in ("true", "True", "TRUE"):
        return True
    if value in ("false", "False", "FALSE"):
        return False
    return value


class ApiRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "clearml"
    sys_version = ""

    # set by ClearMLTestServer on a subclass
    store = None
    authenticator: Authenticator = None

    def log_message(self, format: str, *args: Any) -> None:  # the call log replaces the access log
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_GET

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        match = PATH_RE.match(url.path)
        name = match.group("name") if match else url.path
        version = (match.group("version") if match else None) or API_VERSION
        record: dict[str, Any] = {
            "endpoint": name,
            "version": version,
            "method": self.command,
            "client": self.headers.get("X-ClearML-Client") or self.headers.get("X-ClearML-Agent"),
        }
        data: Any = None
        error_data: dict = {}
        try:
            if not match:
                raise errors.APIError(400, 0, f"Invalid request path {url.path}")
            endpoint = ENDPOINTS.get(name)
            if endpoint is None:
                raise errors.unknown_endpoint(name, version)
            user = self.authenticator.authenticate(self.headers.get("Authorization"), endpoint.authorize)
            request, batch = self._parse(body, url.query)
            record["keys"] = sorted(request) if batch is None else sorted({k for item in batch for k in item})
            if endpoint.batched and batch is None:
                raise errors.batch_contains_no_items()
            endpoint.validate(request)
            call = Call(
                endpoint=name,
                data=request,
                batch=batch,
                user=user,
                worker=next((self.headers[h] for h in WORKER_HEADERS if self.headers.get(h)), "<unknown>"),
                store=self.store,
                authenticator=self.authenticator,
            )
            with self.store.lock:
                data = endpoint.handler(call)
                if endpoint.mutates:
                    self.store.mark_dirty()
            code, subcode, msg = 200, 0, "OK"
        except errors.APIError as error:
            code, subcode, msg, error_data = error.code, error.subcode, error.msg, error.error_data
        except Exception as error:  # a bug in the test server: answer as the server does (500), and log it
            code, subcode, msg = 500, 0, f"{type(error).__name__}: {error}"
            record["traceback"] = traceback.format_exc()
        record.update(code=code, subcode=subcode)
        if code != 200:
            record["msg"] = msg
            record["error_data"] = error_data
        self.store.log_call(record)
        self._respond(name, version, (code, subcode, msg, error_data), data)

    def _parse(self, body: bytes, query: str) -> tuple[dict, list[dict] | None]:
        if self.headers.get("Content-Type", "").startswith("application/json-lines"):
            # bytes.splitlines, as the server's req.data.splitlines(): only \n and \r end a line
            batch = [json.loads(line) for line in body.splitlines() if line.strip()]
            if not all(isinstance(item, dict) for item in batch):
                raise errors.APIError(400, 0, "json lines must contain objects")
            return {}, batch
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError as error:
            raise errors.APIError(400, 0, f"Failed to decode JSON object: {error}") from None
        if not isinstance(request, dict):
            request = {}
        for key, value in parse_qsl(query):
            request[key] = _convert_query_value(value)
        # The SDK serializes its Request.method property ("get") into every body; the
        # server's request schemas let it through and nothing reads it.
        request.pop("method", None)
        return request, None

    def _respond(self, name: str, version: str, result: tuple[int, int, str, dict], data: Any) -> None:
        code, subcode, msg, error_data = result
        envelope = {
            "meta": {
                "id": new_id(),
                "trx": new_id(),
                "endpoint": {"name": name, "requested_version": version, "actual_version": version},
                "result_code": code,
                "result_subcode": subcode,
                "result_msg": msg,
                "error_stack": None,
                "error_data": error_data,
            },
            "data": data if data is not None else {},
        }
        payload = json.dumps(envelope).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
