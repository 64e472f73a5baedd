"""The files server: upload, download and delete, as ``fileserver/fileserver.py`` does.

``POST /`` takes a multipart form whose field names are the target paths (the SDK's
``_HttpDriver.upload_object_via_stream`` sends one file per request); ``GET /<path>``
returns a file; ``DELETE /<path>`` removes one. Files live under ``<state dir>/files``.
``UrlsDeleteJob`` deletes the files the API server scheduled for deletion.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

FILES_DIR = "files"
JOB_POLL_S = 1.0  # the server's job sleeps 10 s when it finds nothing to delete


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """(field name, content) of each part of a ``multipart/form-data`` body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise ValueError(f"no multipart boundary in Content-Type {content_type!r}")
    delimiter = b"--" + match.group(1).encode("latin-1")
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        headers, _, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', headers)
        if name is None:
            raise ValueError("multipart part without a name")
        parts.append((name.group(1).decode("utf-8"), content.removesuffix(b"\r\n")))
    return parts


class FilesRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "clearml"
    sys_version = ""

    root: Path = None  # set by ClearMLTestServer on a subclass
    store = None

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _target(self) -> Path | None:
        """``werkzeug.security.safe_join``: no path may leave the upload folder."""
        relative = unquote(urlsplit(self.path).path).lstrip("/")
        target = (self.root / relative).resolve()
        return target if target.is_relative_to(self.root.resolve()) and relative else None

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _log(self, **record: Any) -> None:
        self.store.log_call({"files": self.command, **record})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            parts = parse_multipart(body, self.headers.get("Content-Type", ""))
        except ValueError as error:
            self._log(path=self.path, code=400, msg=str(error))
            return self._send(400, str(error).encode(), "text/plain")
        saved = []
        for name, content in parts:
            target = (self.root / name.lstrip("/")).resolve()
            if not target.is_relative_to(self.root.resolve()):
                self._log(path=name, code=404)
                return self._send(404, b"Not Found", "text/plain")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            saved.append(name.lstrip("/"))
        self._log(paths=saved, code=200)
        self._send(200, json.dumps(saved).encode())

    def do_GET(self) -> None:
        if urlsplit(self.path).path == "/":
            return self._send(200, b"OK", "text/plain")  # fileserver.py: ping
        target = self._target()
        if target is None or not target.is_file():
            self._log(path=self.path, code=404)
            return self._send(404, b"Not Found", "text/plain")
        self._log(path=self.path, code=200)
        self._send(200, target.read_bytes(), "application/octet-stream")

    def do_DELETE(self) -> None:
        target = self._target()
        if target is None or not target.is_file():
            self._log(path=self.path, code=404)
            return self._send(404, f"File {self.path} not found".encode(), "text/plain")
        target.unlink()
        self._log(path=self.path, code=200)
        self._send(200, json.dumps(urlsplit(self.path).path.lstrip("/")).encode())


class UrlsDeleteJob:
    """``apiserver/jobs/async_urls_delete.py`` for the fileserver (``FileserverStorage``): each
    ``JOB_POLL_S`` the fileserver URLs in ``store.urls_to_delete`` are resolved against this
    files server's host and deleted as ``fileserver.py:batch_delete`` deletes (the URL path
    unquoted with ``unquote_plus``; a file or a folder), their entries removed. A URL of
    another host is marked failed, as upstream marks it; so is a file that is not there
    (upstream retries it 3 times, a minute apart; a missing local file stays missing).
    The job has no s3/azure/gs storages: their entries stay scheduled. A last pass runs on stop."""

    def __init__(self, store, root: Path, files_host: str):
        self.store, self.root, self.files_host = store, Path(root).resolve(), files_host
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="urls-delete-job", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.run_once()

    def _loop(self) -> None:
        while not self._stop.wait(JOB_POLL_S):
            self.run_once()

    def run_once(self) -> None:
        with self.store.lock:
            pending = [e for e in self.store.urls_to_delete if e["storage_type"] == "fileserver" and e["status"] == "created"]
            for entry in pending:
                failure = self._delete(entry["url"])
                if failure:
                    entry.update(status="failed", last_failure_reason=failure)
                else:
                    self.store.urls_to_delete.remove(entry)
            if pending:
                self.store.mark_dirty()

    def _delete(self, url: str) -> str | None:
        """The file or folder of ``url`` deleted; the reason when it cannot be."""
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != self.files_host:
            return "Invalid Fileserver url or missing Fileserver configuration for account"
        relative = unquote_plus(parts.path).strip("/")
        target = (self.root / relative).resolve()
        if not relative or not target.is_relative_to(self.root):
            return "Empty path not allowed" if not relative else "Not found"
        if target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        else:
            return "Not found"
        return None
