"""The files server: upload, download and delete, as ``fileserver/fileserver.py`` does.

``POST /`` takes a multipart form whose field names are the target paths (the SDK's
``_HttpDriver.upload_object_via_stream`` sends one file per request); ``GET /<path>``
returns a file; ``DELETE /<path>`` removes one. Files live under ``<state dir>/files``.
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

FILES_DIR = "files"


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
