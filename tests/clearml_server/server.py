"""Start and stop the API server (port N), the files server (port N+1) and the files
deletion job in threads."""

from __future__ import annotations

import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from . import services  # noqa: F401  (registers the endpoints)
from .api import ApiRequestHandler
from .auth import ACCESS_KEY, SECRET_KEY, Authenticator
from .files import FILES_DIR, FilesRequestHandler, UrlsDeleteJob
from .services.queues import ensure_default_queue
from .store import Store

HOST = "127.0.0.1"
POLL_INTERVAL_S = 0.1  # how soon serve_forever sees a shutdown request (stop() waits for both servers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client process ended with a kept-alive connection open
        super().handle_error(request, client_address)


ENVIRONMENT_VARIABLES = ("CLEARML_API_HOST", "CLEARML_WEB_HOST", "CLEARML_FILES_HOST", "CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY")


class ClearMLTestServer:
    """The test server on ``port`` (API) and ``port + 1`` (files); ``port=0`` picks free ports."""

    def __init__(self, state_dir: Path, port: int = 0):
        self.state_dir = Path(state_dir)
        self.store = Store(self.state_dir)
        ensure_default_queue(self.store)
        files_root = self.state_dir / FILES_DIR
        files_root.mkdir(parents=True, exist_ok=True)
        self._api, self._files = self._bind(port, files_root)
        self._urls_delete_job = UrlsDeleteJob(self.store, files_root, self.files_host)
        self._threads: list[threading.Thread] = []

    def _bind(self, port: int, files_root: Path) -> tuple[_Server, _Server]:
        """Bind both servers; with port 0, retry until two consecutive free ports are found."""
        for _ in range(50):
            api = _Server((HOST, port), type("Api", (ApiRequestHandler,), {}))
            try:
                files = _Server((HOST, api.server_port + 1), type("Files", (FilesRequestHandler,), {}))
            except OSError:
                api.server_close()
                if port:
                    raise
                continue
            api.RequestHandlerClass.store = self.store
            api.RequestHandlerClass.authenticator = Authenticator(self.state_dir)
            files.RequestHandlerClass.store = self.store
            files.RequestHandlerClass.root = files_root
            return api, files
        raise OSError("no two consecutive free ports found for the ClearML test server")

    @property
    def api_host(self) -> str:
        return f"http://{HOST}:{self._api.server_port}"

    @property
    def files_host(self) -> str:
        return f"http://{HOST}:{self._files.server_port}"

    @property
    def web_host(self) -> str:
        """Nothing listens there: the SDK only builds links to the web UI from it."""
        return f"http://{HOST}:{self._files.server_port + 1}"

    def environment(self) -> dict[str, str]:
        """The standard variables that point the SDK and the agent at this server (``ENVIRONMENT_VARIABLES``)."""
        return dict(zip(ENVIRONMENT_VARIABLES, (self.api_host, self.web_host, self.files_host, ACCESS_KEY, SECRET_KEY), strict=True))

    def start(self) -> ClearMLTestServer:
        for server in (self._api, self._files):
            thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL_S,), name=f"clearml-test-{server.server_port}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._urls_delete_job.start()
        return self

    def stop(self) -> None:
        for server in (self._api, self._files):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join()
        self._urls_delete_job.stop()
        self.store.close()

    def __enter__(self) -> ClearMLTestServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
