"""Where ClearML tasks go: a server or offline sessions on this machine.

The decision is made once per process, before the first task exists, from ClearML's own
configuration resolution (environment variables, ``CLEARML_CONFIG_FILE`` with ``~``
expanded, ``~/clearml.conf``), in this order:

1. Under an agent (``CLEARML_TASK_ID`` set): the task runs as the agent configured it;
   nothing is decided or checked here (but for ``SDK_OVERRIDES``, below).
2. ``CLEARML_OFFLINE_MODE`` exported as true: offline, as ClearML itself would be.
3. ``--local``: offline.
4. Credentials configured: the server, pinged once (honouring ``api.verify_certificate``)
   so that an unreachable one fails within seconds instead of ClearML's silent retries
   for hours, and asked once for a token with the key pair, so that keys it does not know
   are one sentence naming where they were read instead of the SDK's LoginError traceback.
5. A server address without credentials: an error naming the file or variable to fix.
6. Nothing configured: offline.

Offline, ``configs/clearml-offline.conf`` replaces the user's configuration (no server
address or credentials are read). On a server, every task this process creates records
``requirements.txt`` as the packages an agent installs for it, not what the SDK detects here:
its analysis of the repository lists the tests' packages (pytest, selenium, peft) and this
machine's builds (``torch == 2.13.0+cpu``, which a package index does not serve). The
controller and the optimizer need them all: they create the steps' templates from the steps'
own parsers. So one virtualenv serves every task.

In every case, under an agent too, ``SDK_OVERRIDES`` then changes two of the SDK's defaults.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from components.errors import UserError
from components.settings import PROJECT_ROOT, REQUIREMENTS_FILE

OFFLINE_CONFIG = PROJECT_ROOT / "configs" / "clearml-offline.conf"
# ClearML settings of every process here, whatever clearml.conf says: with the SDK's defaults (clearml 2.1.12) Task.init
# can hang a process for good or hand it another request's answer. (A server's configuration vault, where it has one,
# replaces them: the SDK keeps one list of overrides.)
SDK_OVERRIDES = {
    "sdk": {
        "development": {
            # Reports are sent from a thread, not from a subprocess that Task.init forks: the subprocess inherits the process's
            # pooled connections to the server and both send on them, so each can read the other's answer (a tasks.get_all call
            # got an answer without tasks; another waited for one past 120 s, the SDK waits 300). Task.close() also no longer
            # waits about 10 s for the subprocess to end.
            "report_use_subprocess": False,
            # The repository is detected in Task.init's thread, not in one of its own: the task's edit lock, a file lock created
            # on first use, is created twice when both threads first use it at once, and one then waits for good on the other's
            # flock (a CI run: Task.init stuck in _reload).
            "vcs_repo_detect_async": False,
        }
    }
}
SERVER_CHECK_TIMEOUT_S = 5.0


class ServerUnreachable(UserError):
    pass


class ServerMisconfigured(UserError):
    pass


@dataclass(frozen=True)
class ServerSettings:
    """What ClearML's configuration says about the server, read the way the SDK reads it."""

    api_host: str
    has_credentials: bool
    key_pair: tuple[str, str] | None  # (access key, secret key) when configured; None with a token instead
    key_pair_source: str  # where the key pair was read: the variables or the clearml.conf in effect
    host_configured: bool  # an address given explicitly (not the SDK's default, app.clear.ml)
    config_file: str | None  # the clearml.conf in effect, if any


def running_on_agent() -> bool:
    return bool(os.environ.get("CLEARML_TASK_ID") or os.environ.get("TRAINS_TASK_ID"))


def offline_mode_exported() -> bool:
    from clearml.backend_api.session.defs import ENV_OFFLINE_MODE

    return bool(ENV_OFFLINE_MODE.get())


def _load_sdk_config():
    """A private copy of ClearML's configuration: reading it leaves the SDK's own unloaded,
    so a later switch to offline still takes ``OFFLINE_CONFIG``."""
    import clearml.config
    from clearml.backend_api import load_config

    return load_config(Path(clearml.config.__file__).parent)


def server_settings(config=None) -> ServerSettings:
    from clearml.backend_api import Session
    from clearml.backend_api.session.defs import ENV_ACCESS_KEY, ENV_AUTH_TOKEN, ENV_HOST, ENV_SECRET_KEY
    from clearml.backend_config.defs import get_active_config_file

    config = config or _load_sdk_config()
    access_key = ENV_ACCESS_KEY.get(default=config.get("api.credentials.access_key", None))
    secret_key = ENV_SECRET_KEY.get(default=config.get("api.credentials.secret_key", None))
    explicit_host = ENV_HOST.get() or config.get("api.api_server", None) or config.get("api.host", None)
    key_pair = (access_key, secret_key) if access_key and secret_key else None
    return ServerSettings(
        api_host=Session.get_api_server_host(config),
        has_credentials=bool(key_pair or ENV_AUTH_TOKEN.get()),
        key_pair=None if ENV_AUTH_TOKEN.get() else key_pair,
        key_pair_source="CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY"
        if ENV_ACCESS_KEY.get() and ENV_SECRET_KEY.get()
        else str(get_active_config_file()),
        host_configured=bool(explicit_host),
        config_file=get_active_config_file(),
    )


def enter_offline_mode() -> None:
    """ClearML offline from here on, in this process and the processes it starts."""
    os.environ["CLEARML_OFFLINE_MODE"] = "1"
    os.environ["CLEARML_CONFIG_FILE"] = str(OFFLINE_CONFIG)
    from clearml import Task

    Task.set_offline(True)


@contextmanager
def _answering(what: str, setting: str, timeout_s: float) -> Iterator[None]:
    """A request to ``what`` (a server and its address) that fails is one sentence naming ``setting``, where its address is set."""
    import requests

    try:
        yield
    except requests.exceptions.SSLError as error:
        raise ServerUnreachable(
            f"{what} has a certificate this machine does not trust ({error.__class__.__name__}); "
            "set api.verify_certificate (or CLEARML_API_HOST_VERIFY_CERT) to false or to a CA bundle path, or run with --local."
        ) from None
    except requests.exceptions.RequestException as error:
        raise ServerUnreachable(
            f"{what} did not answer within {timeout_s:.0f} s ({error.__class__.__name__}); check {setting}, or run with --local."
        ) from None


def check_server_reachable(config=None, timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """Ping the configured API server once, with ClearML's own HTTP session (certificate settings included), log in
    once with the configured key pair (clearml-server answers keys it does not know with 401), and ping the files
    server where the tasks' artifacts and models go (unless ``sdk.development.default_output_uri`` sends them elsewhere)."""
    from clearml.backend_api import Session
    from clearml.backend_api.utils import get_http_session_with_retry

    config = config or _load_sdk_config()
    host = Session.get_api_server_host(config)
    session = get_http_session_with_retry(total=0, config=config)
    with _answering(f"The ClearML server {host}", "api.api_server in clearml.conf (or CLEARML_API_HOST)", timeout_s):
        # verify= again per request: requests would otherwise let REQUESTS_CA_BUNDLE override the session's setting.
        session.get(f"{host}/debug.ping", timeout=timeout_s, verify=session.verify)
        settings = server_settings(config)
        if settings.key_pair is not None:
            login = session.post(f"{host}/auth.login", json={}, auth=settings.key_pair, timeout=timeout_s, verify=session.verify)
            if login.status_code == 401:
                raise ServerMisconfigured(
                    f"The ClearML server {host} refused the key pair in {settings.key_pair_source} (invalid credentials); "
                    "create a key pair in that server's web UI (Settings -> Workspace) and run clearml-init or set "
                    "CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY, or run with --local."
                )
    if config.get("sdk.development.default_output_uri", None):
        return
    try:
        files = Session.get_files_server_host(config)
    except ValueError:  # neither configured nor derivable from the API address: the SDK names that itself when it uploads
        return
    setting = (
        "api.files_server in clearml.conf (or CLEARML_FILES_HOST), where every task uploads its artifacts and models "
        "(or send them to a bucket with sdk.development.default_output_uri)"
    )
    with _answering(f"The ClearML files server {files}", setting, timeout_s):
        session.get(files, timeout=timeout_s, verify=session.verify)


def prepare_clearml(local_flag: bool) -> bool:
    """Choose offline or server mode before any task exists, and set ``SDK_OVERRIDES``; returns True when offline
    (see the module docstring)."""
    offline = False if running_on_agent() else choose_offline_or_server(local_flag)
    from clearml.config import ConfigSDKWrapper, config_obj

    config_obj.set_overrides(SDK_OVERRIDES)  # read after the choice: offline, CLEARML_CONFIG_FILE names OFFLINE_CONFIG
    ConfigSDKWrapper.clear_config_impl()  # it holds the "sdk" section as first read
    return offline


def choose_offline_or_server(local_flag: bool) -> bool:
    """Steps 2 to 6 of the module docstring: True for offline (entered here), False for the server (checked here)."""
    if local_flag or offline_mode_exported():
        enter_offline_mode()
        return True
    config = _load_sdk_config()
    settings = server_settings(config)
    if settings.has_credentials:
        check_server_reachable(config)
        from clearml import Task

        Task.force_requirements_env_freeze(requirements_file=str(REQUIREMENTS_FILE))  # a str: the SDK tests for its own Path class
        return False
    if settings.host_configured:
        where = settings.config_file or "the environment (CLEARML_API_HOST)"
        raise ServerMisconfigured(
            f"A ClearML server ({settings.api_host}) is configured in {where} but no credentials are; "
            "run clearml-init or set CLEARML_API_ACCESS_KEY and CLEARML_API_SECRET_KEY, or run with --local."
        )
    enter_offline_mode()
    return True
