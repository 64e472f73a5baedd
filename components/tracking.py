"""The one place that talks to ClearML.

Every step script runs through :func:`run_step`, which

1. decides between a server and offline mode *before* ``clearml`` is imported
   (``CLEARML_OFFLINE_MODE`` is read once, at import): offline with ``--local`` or
   when no server is configured, never under an agent;
2. fails within seconds, with one sentence, when a configured server is unreachable
   (ClearML itself would retry silently for hours);
3. creates the step's task, then parses the arguments so that ClearML captures them
   under ``Args/`` (and, on an agent, applies the values edited in the UI);
4. turns every error a user can cause into one line on stderr and exit status 1.

Steps hand results to each other as artifacts of their own task, fetched by task id
with :func:`artifact_path` - the same call offline (``offline-...`` ids) and on a server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any

from components.errors import UserError
from components.settings import CLEARML_PROJECT, PROJECT_ROOT

OFFLINE_CONFIG = PROJECT_ROOT / "configs" / "clearml-offline.conf"
RESULT_FILE = "result.json"
SERVER_CHECK_TIMEOUT_S = 5.0


class StepInputError(UserError):
    """A missing upstream input: wrong task id, missing artifact or path."""


class ServerUnreachable(UserError):
    pass


class _ClearMLClock:
    """Seconds this process spent inside ClearML calls (nested calls counted once), for result.json."""

    seconds = 0.0
    depth = 0

    @classmethod
    def measure(cls, function):
        @wraps(function)
        def timed(*args, **kwargs):
            cls.depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                cls.depth -= 1
                if cls.depth == 0:
                    cls.seconds += time.perf_counter() - start

        return timed


def running_on_agent() -> bool:
    return bool(os.environ.get("CLEARML_TASK_ID") or os.environ.get("TRAINS_TASK_ID"))


def server_configured() -> bool:
    """A ClearML server is configured by environment variables or a clearml.conf file."""
    if os.environ.get("CLEARML_API_HOST") or os.environ.get("CLEARML_API_ACCESS_KEY"):
        return True
    config_file = os.environ.get("CLEARML_CONFIG_FILE")
    if config_file and Path(config_file).resolve() != OFFLINE_CONFIG.resolve():
        return Path(config_file).exists()
    return (Path.home() / "clearml.conf").exists()


def use_offline_mode(local_flag: bool) -> bool:
    if running_on_agent():
        return False
    return local_flag or not server_configured()


def enter_offline_mode() -> None:
    """Must run before ``import clearml``; child processes inherit it."""
    if "clearml" in sys.modules and os.environ.get("CLEARML_OFFLINE_MODE") != "1":
        from clearml import Task

        Task.set_offline(True)
    os.environ["CLEARML_OFFLINE_MODE"] = "1"
    os.environ["CLEARML_CONFIG_FILE"] = str(OFFLINE_CONFIG)


def check_server_reachable(timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> None:
    """Ping the configured API server once; raise :class:`ServerUnreachable` with the address."""
    from clearml.backend_api import Session

    host = Session.get_api_server_host()
    try:
        urllib.request.urlopen(f"{host}/debug.ping", timeout=timeout_s)
    except urllib.error.HTTPError:
        return  # the server answered
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerUnreachable(
            f"The ClearML server {host} did not answer within {timeout_s:.0f} s ({reason}); "
            "check api.api_server in clearml.conf (or CLEARML_API_HOST), or run with --local."
        ) from None


def prepare_clearml(local_flag: bool) -> bool:
    """Choose offline or server mode; returns True when offline."""
    offline = use_offline_mode(local_flag)
    if offline:
        enter_offline_mode()
    elif not running_on_agent():
        check_server_reachable()
    return offline


@_ClearMLClock.measure
def init_task(task_name: str, task_type: str, project: str = CLEARML_PROJECT):
    from clearml import Task

    # Framework auto-logging is off: it would register every torch/safetensors save
    # (optimizer states, checkpoints) as a model. Models are registered explicitly.
    return Task.init(
        project_name=project,
        task_name=task_name,
        task_type=task_type,
        reuse_last_task_id=False,
        auto_connect_frameworks=False,
        auto_resource_monitoring=False,
    )


def is_offline() -> bool:
    from clearml import Task

    return Task.is_offline()


def run_step(
    name: str,
    task_type: str,
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace, Any], dict],
    argv: Sequence[str] | None = None,
) -> dict:
    """Run one pipeline step as its own ClearML task; see the module docstring."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if any(a in ("-h", "--help") for a in argv):
        parser.parse_args(argv)  # prints help and exits, before any task exists
    started = time.perf_counter()
    task = None
    try:
        prepare_clearml("--local" in argv)
        task = init_task(name, task_type)  # imports clearml: counted as ClearML time
        args = parser.parse_args(argv)
        args.output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix=f"{name}-"))
        args.output_dir.mkdir(parents=True, exist_ok=True)
        outputs = run(args, task)
    except UserError as error:
        if task is not None:
            close_failed(task, str(error))
        sys.exit(f"error: {error}")
    result = {"step": name, "task_id": task.id, "offline": task.is_offline(), "outputs": outputs}
    if task.is_offline():
        result["offline_session"] = f"{task.get_offline_mode_folder()}.zip"  # written by close()
    _ClearMLClock.measure(task.close)()
    result["seconds"] = {"step": round(time.perf_counter() - started, 3), "clearml": round(_ClearMLClock.seconds, 3)}
    (args.output_dir / RESULT_FILE).write_text(to_json(result), encoding="utf-8")
    return result


@_ClearMLClock.measure
def close_failed(task, reason: str) -> None:
    """Close a task whose step failed, marked failed on a server, so its log ends with our message."""
    if not task.is_offline():
        task.mark_failed(status_reason=reason, status_message=reason, force=True)
    task.close()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--local", action="store_true", help="run offline on this machine (ClearML offline mode), even if a server is configured")
    parser.add_argument("--output-dir", default=None, help="where this step writes its local outputs (default: a temporary directory)")


@_ClearMLClock.measure
def get_task(task_id: str):
    from clearml import Task

    try:
        task = Task.get_task(task_id=task_id)
    except Exception:  # ClearML raises ValueError, APIError, ... depending on the mode
        task = None
    if task is None or not task.name:  # offline, an unknown id yields an empty task
        where = "in the offline sessions of this machine" if Task.is_offline() else "on the ClearML server"
        raise StepInputError(f"No ClearML task with id {task_id!r} {where}; check the *-task-id argument.")
    return task


@_ClearMLClock.measure
def artifact_path(task_id: str, name: str) -> Path:
    """Local copy of an upstream task's file or folder artifact."""
    task = get_task(task_id)
    if name not in task.artifacts:
        raise StepInputError(f"Task {task_id} ({task.name}) has no artifact {name!r}; it has {sorted(task.artifacts) or 'none'}.")
    local = task.artifacts[name].get_local_copy()
    if not local:
        raise StepInputError(f"Artifact {name!r} of task {task_id} could not be downloaded; check the storage it was uploaded to.")
    return Path(local)


def upstream_input(task_id: str | None, artifact: str, local_path: str | None, flags: tuple[str, str], what: str) -> Path:
    """A step's input: an upstream task's artifact (by id, as on a server) or a local path."""
    if task_id:
        return artifact_path(task_id, artifact)
    if local_path:
        return Path(local_path)
    raise StepInputError(f"Give {flags[0]} (a ClearML task id) or {flags[1]} ({what}).")


def artifact_object(task_id: str, name: str) -> Any:
    """An upstream task's JSON-like artifact (a dict or list), read as JSON."""
    path = artifact_path(task_id, name)
    return json.loads(path.read_text(encoding="utf-8"))


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n"


def upload_json(task, name: str, value: Any, output_dir: Path) -> Path:
    """Write ``value`` as JSON next to the step's outputs and upload it as an artifact."""
    path = output_dir / f"{name}.json"
    path.write_text(to_json(value), encoding="utf-8")
    task.upload_artifact(name, artifact_object=path, wait_on_upload=True)
    return path


@_ClearMLClock.measure
def upload_path(task, name: str, path: Path) -> None:
    task.upload_artifact(name, artifact_object=path, wait_on_upload=True)


def reporter(task) -> Callable[[str, str, float, int], None]:
    logger = task.get_logger()

    @_ClearMLClock.measure
    def report(title: str, series: str, value: float, iteration: int) -> None:
        logger.report_scalar(title=title, series=series, value=value, iteration=iteration)

    return report


@_ClearMLClock.measure
def report_metrics(task, metrics: dict[str, float], samples) -> None:
    """Test metrics as single values and as a ``test`` scalar series, plus a table of samples."""
    logger = task.get_logger()
    for name, value in metrics.items():
        logger.report_single_value(name, value)
        logger.report_scalar(title=name, series="test", value=value, iteration=0)
    logger.report_table(title="predictions", series="samples", iteration=0, table_plot=samples)


def metrics_table(metrics: dict[str, float]) -> str:
    width = max(map(len, metrics))
    return "\n".join(f"{name:<{width}}  {value:.4f}" for name, value in metrics.items())


@_ClearMLClock.measure
def register_model(task, name: str, folder: Path, *, tags: list[str], metadata: dict[str, Any], publish: bool = False) -> str | None:
    """Register ``folder`` as an output model of ``task`` on the server (offline: skipped, returns None).

    Offline ``OutputModel.update_weights`` fails inside ClearML (see ../shared/FACTS.md);
    the folder is an artifact of the task either way.
    """
    if task.is_offline():
        return None
    from clearml import OutputModel

    model = OutputModel(task=task, name=name, framework="PyTorch", tags=tags, config_dict=metadata.get("config"))
    model.update_weights_package(weights_path=str(folder), auto_delete_file=False)
    for key, value in metadata.items():
        if key != "config":
            model.set_metadata(key, str(value), v_type=type(value).__name__)
    if publish:
        model.publish()
    return model.id
