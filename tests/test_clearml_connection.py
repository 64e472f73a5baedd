"""``clearml_adapter.connection`` in this process: what it reads from each place ClearML's configuration can come
from, and what its server check says to each kind of server (the test server, one that refuses the keys, one that
never answers a given request, a files server that is down). The decision between offline and a server, and the
commands that make it: test_launch_checks.py."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT

from clearml_adapter import connection as clearml_connection
from clearml_adapter.connection import ServerMisconfigured, ServerSettings, ServerUnreachable, server_settings
from components.settings import REQUIREMENTS_FILE
from tests.clearml_server import ClearMLTestServer
from tests.clearml_server.auth import ACCESS_KEY, SECRET_KEY

ENVIRONMENT_KEYS = "CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY"
TIMEOUT_S = 1.0  # the check's timeout in these tests (5 s by default)


@pytest.mark.parametrize(
    "variables, conf, expected",
    [
        ({}, None, ServerSettings("https://api.clear.ml", False, None, "None", False, None)),
        (
            {"CLEARML_API_HOST": "http://h:8008", "CLEARML_API_ACCESS_KEY": "k", "CLEARML_API_SECRET_KEY": "s"},
            None,
            ServerSettings("http://h:8008", True, ("k", "s"), ENVIRONMENT_KEYS, True, None),
        ),
        (
            {},
            'api { api_server: "http://c:8008", credentials { access_key: "ck", secret_key: "cs" } }',
            ServerSettings("http://c:8008", True, ("ck", "cs"), "{conf}", True, "{conf}"),
        ),
        (
            {"CLEARML_API_ACCESS_KEY": "k"},
            'api { api_server: "http://c:8008", credentials { access_key: "ck", secret_key: "cs" } }',
            ServerSettings("http://c:8008", True, ("k", "cs"), "{conf}", True, "{conf}"),
        ),  # one key from each: the file is named
        (
            {"CLEARML_API_ACCESS_KEY": "k"},
            'api { api_server: "http://c:8008" }',
            ServerSettings("http://c:8008", False, None, "{conf}", True, "{conf}"),
        ),  # half a key pair is none
        (
            {"CLEARML_API_SECRET_KEY": "s", "CLEARML_API_HOST": "http://h:8008"},
            None,
            ServerSettings("http://h:8008", False, None, "None", True, None),
        ),
        (
            {"CLEARML_AUTH_TOKEN": "t", "CLEARML_API_ACCESS_KEY": "k", "CLEARML_API_SECRET_KEY": "s"},
            None,
            ServerSettings("https://api.clear.ml", True, None, ENVIRONMENT_KEYS, False, None),
        ),  # a token: no key pair to log in with
        ({"CLEARML_AUTH_TOKEN": "t"}, None, ServerSettings("https://api.clear.ml", True, None, "None", False, None)),
        ({}, 'api { host: "http://old:8008" }', ServerSettings("http://old:8008", False, None, "{conf}", True, "{conf}")),  # the old key
    ],
)
def test_the_settings_are_read_from_the_variables_and_the_file_in_effect(unconfigured_sdk, monkeypatch, variables, conf, expected):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    if conf is not None:
        unconfigured_sdk.write_text(conf)
    named = {field: str(unconfigured_sdk) if value == "{conf}" else value for field, value in vars(expected).items()}
    assert server_settings() == ServerSettings(**named)


def test_reading_the_settings_leaves_the_sdks_own_configuration_unloaded(unconfigured_sdk):
    """So that a later switch to offline still takes configs/clearml-offline.conf (a fresh process: this one's SDK
    may have loaded its configuration in another test)."""
    unconfigured_sdk.write_text('api { api_server: "http://c:8008", credentials { access_key: "ck", secret_key: "cs" } }')
    program = (
        "from clearml_adapter.connection import server_settings; import clearml.config; "
        "settings = server_settings(); print(settings.api_host, clearml.config.ConfigWrapper._config is None)"
    )
    completed = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert completed.stdout.split() == ["http://c:8008", "True"], completed.stderr


@pytest.mark.parametrize("variable, on_agent", [("CLEARML_TASK_ID", True), ("TRAINS_TASK_ID", True), (None, False)])
def test_a_task_id_in_the_environment_means_an_agent_runs_this(unconfigured_sdk, monkeypatch, variable, on_agent):
    if variable:
        monkeypatch.setenv(variable, "abc")
    assert clearml_connection.running_on_agent() is on_agent


def test_offline_mode_is_exported_to_the_processes_this_one_starts(unconfigured_sdk, monkeypatch):
    calls = []
    monkeypatch.setattr("clearml.Task.set_offline", lambda offline_mode: calls.append(offline_mode))
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "")  # undone by monkeypatch after the test, as the next line's variable
    clearml_connection.enter_offline_mode()
    assert calls == [True]
    assert (os.environ["CLEARML_OFFLINE_MODE"], os.environ["CLEARML_CONFIG_FILE"]) == ("1", str(clearml_connection.OFFLINE_CONFIG))
    assert clearml_connection.offline_mode_exported()


def test_with_credentials_the_server_is_checked_and_tasks_record_the_projects_requirements(unconfigured_sdk, monkeypatch):
    unconfigured_sdk.write_text('api { api_server: "http://c:8008", credentials { access_key: "ck", secret_key: "cs" } }')
    checked, frozen = [], []
    monkeypatch.setattr(clearml_connection, "check_server_reachable", lambda config=None: checked.append(config.get("api.api_server")))
    monkeypatch.setattr("clearml.Task.force_requirements_env_freeze", lambda requirements_file: frozen.append(requirements_file))
    assert clearml_connection.prepare_clearml(local_flag=False) is False
    assert (checked, frozen) == (["http://c:8008"], [str(REQUIREMENTS_FILE)])  # the configuration read once, passed on


def test_a_server_address_in_the_environment_without_credentials_names_the_environment(unconfigured_sdk, monkeypatch):
    monkeypatch.setenv("CLEARML_API_HOST", "http://h:8008")
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(unconfigured_sdk.parent / "absent.conf"))
    with pytest.raises(ServerMisconfigured) as refused:
        clearml_connection.prepare_clearml(local_flag=False)
    assert str(refused.value) == (
        "A ClearML server (http://h:8008) is configured in the environment (CLEARML_API_HOST) but no "
        "credentials are; run clearml-init or set CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY, or run with --local."
    )


class FakeServer:
    """An HTTP server that answers each request whose path starts with a given prefix with a given status, or never
    (None: it holds the request until the server stops); it records every request's path."""

    def __init__(self, answers: dict[str, int | None]):
        self.requests: list[str] = []
        stop = self.stop = threading.Event()
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                requests.append(self.path)
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = next((status for prefix, status in answers.items() if self.path.startswith(prefix)), 200)
                if status is None:
                    stop.wait(60)
                    return
                body = b'{"meta": {}, "data": {}}'
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_servers():
    made = []

    def make(answers: dict[str, int | None] | None = None) -> FakeServer:
        made.append(FakeServer(answers or {}))
        return made[-1]

    yield make
    for server in made:
        server.close()


def pointed_at(monkeypatch, api: str, files: str, keys: tuple[str, str] = ("k", "s")) -> None:
    for name, value in {
        "CLEARML_API_HOST": api,
        "CLEARML_FILES_HOST": files,
        "CLEARML_API_ACCESS_KEY": keys[0],
        "CLEARML_API_SECRET_KEY": keys[1],
    }.items():
        monkeypatch.setenv(name, value)


def test_the_test_server_with_its_keys_passes_the_check_and_unknown_keys_are_one_sentence(unconfigured_sdk, monkeypatch, tmp_path):
    with ClearMLTestServer(tmp_path / "state") as server:
        pointed_at(monkeypatch, server.api_host, server.files_host, (ACCESS_KEY, SECRET_KEY))
        clearml_connection.check_server_reachable(timeout_s=TIMEOUT_S)  # answered, keys known: no exception
        monkeypatch.setenv("CLEARML_API_SECRET_KEY", "not-the-secret")
        with pytest.raises(ServerMisconfigured) as refused:
            clearml_connection.check_server_reachable(timeout_s=TIMEOUT_S)
        assert str(refused.value) == (
            f"The ClearML server {server.api_host} refused the key pair in {ENVIRONMENT_KEYS} (invalid credentials); create a key pair "
            "in that server's web UI (Settings -> Workspace) and run clearml-init or set CLEARML_API_ACCESS_KEY and "
            "CLEARML_API_SECRET_KEY, or run with --local."
        )
        for name in ("CLEARML_API_ACCESS_KEY", "CLEARML_API_SECRET_KEY"):
            monkeypatch.delenv(name)
        unconfigured_sdk.write_text(f'api {{ credentials {{ access_key: "{ACCESS_KEY}", secret_key: "wrong" }} }}')
        with pytest.raises(ServerMisconfigured, match=f"refused the key pair in {unconfigured_sdk} "):
            clearml_connection.check_server_reachable(timeout_s=TIMEOUT_S)


def test_the_check_asks_once_with_the_key_pair(unconfigured_sdk, monkeypatch, fake_servers):
    api, files = fake_servers(), fake_servers()
    pointed_at(monkeypatch, api.url, files.url)
    clearml_connection.check_server_reachable(timeout_s=TIMEOUT_S)
    assert (api.requests, files.requests) == (["/debug.ping", "/auth.login"], ["/"])
    monkeypatch.setenv("CLEARML_AUTH_TOKEN", "t")  # a token instead: nothing to log in with
    clearml_connection.check_server_reachable(timeout_s=TIMEOUT_S)
    assert api.requests[2:] == ["/debug.ping"]


# requests names a GET's read timeout ConnectionError (urllib3 retries GETs, zero times here, and gives up with
# MaxRetryError) and a POST's ReadTimeout (a POST is never retried).
@pytest.mark.parametrize(
    "silent, what, error, setting",
    [
        ("/debug.ping", "The ClearML server {api}", "ConnectionError", "api.api_server in clearml.conf (or CLEARML_API_HOST)"),
        ("/auth.login", "The ClearML server {api}", "ReadTimeout", "api.api_server in clearml.conf (or CLEARML_API_HOST)"),
        (
            "/",
            "The ClearML files server {files}",
            "ConnectionError",
            "api.files_server in clearml.conf (or CLEARML_FILES_HOST), where every task uploads "
            "its artifacts and models (or send them to a bucket with sdk.development.default_output_uri)",
        ),
    ],
)
def test_a_request_that_is_never_answered_is_one_sentence_after_the_timeout(
    unconfigured_sdk, monkeypatch, fake_servers, silent, what, error, setting
):
    api = fake_servers({silent: None} if silent != "/" else {})
    files = fake_servers({"/": None} if silent == "/" else {})
    pointed_at(monkeypatch, api.url, files.url)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as refused:
        clearml_connection.check_server_reachable(timeout_s=TIMEOUT_S)
    assert TIMEOUT_S <= time.monotonic() - started < 20
    assert (
        str(refused.value)
        == f"{what.format(api=api.url, files=files.url)} did not answer within 1 s ({error}); check {setting}, or run with --local."
    )
    assert (api.requests + files.requests).count(silent) == 1  # asked once: no retry


def test_a_files_server_that_is_down_is_one_sentence_unless_artifacts_go_elsewhere(unconfigured_sdk, monkeypatch, fake_servers):
    api, files = fake_servers(), fake_servers()
    files.close()  # nothing listens there now
    pointed_at(monkeypatch, api.url, files.url)
    with pytest.raises(ServerUnreachable, match=rf"^The ClearML files server {files.url} did not answer within 1 s \(ConnectionError\); "):
        clearml_connection.check_server_reachable(timeout_s=TIMEOUT_S)
    unconfigured_sdk.write_text('sdk { development { default_output_uri: "s3://bucket/artifacts" } }')
    clearml_connection.check_server_reachable(timeout_s=TIMEOUT_S)  # no exception: the files server is not used
