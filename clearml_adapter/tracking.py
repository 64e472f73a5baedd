"""The one place that talks to ClearML about tasks, artifacts, scalars and models.

Every step script runs through :func:`run_step`, which

1. chooses between a server and offline mode before any task exists
   (:mod:`clearml_adapter.connection`);
2. parses the arguments, then creates the step's task, which stores them under ``Args/``
   (on an agent the arguments come from the task: the values edited in the UI);
3. turns every error a user can cause into one line on stderr and exit status 1.

Steps hand results to each other as artifacts of their own task, fetched by task id
with :func:`artifact_path` - the same call offline (``offline-...`` ids) and on a server.
On a server, artifacts and models are uploaded to the task's output destination: the
files server, or ``sdk.development.default_output_uri`` when the user configured one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

from clearml_adapter.connection import prepare_clearml, running_on_agent
from cli.options import exit_if_help_asked
from components import errors
from components.errors import UserError, errors_end_the_process
from components.settings import CLEARML_PROJECT

RESULT_FILE = "result.json"
REMOTE_SCHEMES = ("http://", "https://", "s3://", "gs://", "azure://")


class StepInputError(UserError):
    """A missing upstream input: wrong task id, missing artifact or path."""


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


@_ClearMLClock.measure
def init_task(task_name: str, task_type: str, project: str = CLEARML_PROJECT):
    """The step's task: created here, or the one an agent is executing."""
    from clearml import Task

    # Framework auto-logging is off: it would register every torch/safetensors save
    # (optimizer states, checkpoints) as a model. Models are registered explicitly.
    task = Task.init(
        project_name=project,
        task_name=task_name,
        task_type=task_type,
        reuse_last_task_id=False,
        auto_connect_frameworks=False,
        auto_resource_monitoring=False,
        output_uri=True,
        # Steps report absolute iterations (optimizer steps). On a re-run (an agent running the
        # task again) ClearML would shift them by the task's last iteration; 0 turns that off.
        # (Not a set_initial_iteration() call afterwards: the reporter has copied the offset by then.)
        continue_last_task=0,
    )
    if not task.is_offline() and not task.output_uri:
        # On an agent Task.init ignores output_uri; a task created elsewhere (a UI clone of a
        # task made without one) would otherwise register models as paths on the agent's disk.
        task.output_uri = True
    return task


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
    exit_if_help_asked(parser, argv)
    started = time.perf_counter()
    with failures_end_the_process():
        _ClearMLClock.measure(prepare_clearml)("--local" in argv)  # imports clearml: counted as ClearML time
        args = parse_task_arguments(parser, argv)
        task = init_task(name, task_type)
        if running_on_agent():
            args.output_dir = None  # a path of the machine the task was created on: scratch space here instead
        args.output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix=f"{name}-"))
        args.output_dir.mkdir(parents=True, exist_ok=True)
        outputs = run(args, task)
    result = {"step": name, "task_id": task.id, "offline": bool(task.is_offline()), "outputs": outputs}
    if task.is_offline():
        result["offline_session"] = f"{task.get_offline_mode_folder()}.zip"  # written by close()
    _ClearMLClock.measure(task.close)()
    result["seconds"] = {"step": round(time.perf_counter() - started, 3), "clearml": round(_ClearMLClock.seconds, 3)}
    (args.output_dir / RESULT_FILE).write_text(to_json(result), encoding="utf-8")
    return result


@_ClearMLClock.measure
def parse_task_arguments(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed with ClearML's argparse patch in place (``import clearml`` installs it).

    Parsed before the task exists, so a mistyped option creates none; ``Task.init`` then stores
    the values under ``Args/``, and under an agent (no argv) the parse returns the task's values,
    as edited in the UI.
    """
    import clearml  # noqa: F401

    return parser.parse_args(argv)


def failures_end_the_process():
    """Any error in the block ends the process at once with exit status 1 and its task (if one exists) failed.

    A user's error is one line (``error: ...``); anything else prints its traceback first.
    """
    return errors_end_the_process(fail_current_task)


@contextmanager
def staying_after_enqueue() -> Iterator[None]:
    """Keep this process alive through ClearML's calls that enqueue its own task and leave (``Task.execute_remotely``,
    ``PipelineController.start``), so that it can follow the task it enqueued.

    clearml 2.1.12 leaves with ``leave_process(0)`` (clearml/utilities/process/mp.py), whose bare ``except`` catches
    its own ``sys.exit`` and calls ``os._exit(0)``: no caller can intercept it. The task is closed and enqueued
    by then; only the exit is skipped.
    """
    import clearml.task

    leave = clearml.task.leave_process
    clearml.task.leave_process = lambda status=0: None
    try:
        yield
    finally:
        clearml.task.leave_process = leave


def exit_with_error(message: str) -> None:
    """``error: message`` on stderr; the current task, if any, failed with ``message``; exit status 1 now."""
    errors.exit_with_error(message, fail_current_task)


def fail_current_task(message: str) -> None:
    """The task this process runs, if any, closed as failed with ``message``."""
    task = _current_task()
    if task is not None:
        close_failed(task, message)
        if running_on_agent():
            # clearml-agent checks the task's status once per poll period and, if it has not seen it
            # change when the process exits, marks it failed again with "worker execution exit code 1",
            # replacing this reason: stay alive one period (its CLEARML_AGENT_QUEUE_POLL_FREQ_SEC, default 5 s).
            time.sleep(float(os.environ.get("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC") or 5) + 1)


def _current_task():
    """The task this process created or runs (None before ``Task.init``; clearml is imported by then)."""
    clearml = sys.modules.get("clearml")
    return clearml.Task.current_task() if clearml else None


@_ClearMLClock.measure
def close_failed(task, reason: str) -> None:
    """End a task whose step failed; on a server it is marked failed with ``reason``.

    On a server the reports are flushed and the task marked failed, not closed: ``close()``
    marks a task run from a shell stopped. Offline, ``close()`` writes the session.
    """
    if task.is_offline():
        task.close()
        return
    task.flush(wait_for_uploads=True)
    task.mark_failed(status_reason=reason, status_message=reason, force=True)


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
def artifact_path(task_id: str, name: str, *, force_download: bool = False) -> Path:
    """Local copy of an upstream task's file or folder artifact.

    ``force_download`` skips ClearML's cache: an artifact uploaded again under the same
    name (a checkpoint) keeps its URL, and the cache would return the old content. For a
    folder (a zip) ClearML's own ``force_download`` is not enough: it downloads the zip again
    but returns the folder it extracted from the first one (clearml 2.1.12), so the zip is
    extracted here, into a folder named by its content.
    """
    task = get_task(task_id)
    if name not in task.artifacts:
        raise StepInputError(f"Task {task_id} ({task.name}) has no artifact {name!r}; it has {sorted(task.artifacts) or 'none'}.")
    artifact = task.artifacts[name]
    if force_download and artifact.type == "archive":
        archive = artifact.get_local_copy(extract_archive=False, force_download=True)
        local = archive and _extracted_by_content(Path(archive))
    else:
        local = artifact.get_local_copy(force_download=force_download)
    if not local:
        raise StepInputError(f"Artifact {name!r} of task {task_id} could not be downloaded; check the storage it was uploaded to.")
    return Path(local)


def _extracted_by_content(archive: Path) -> Path:
    """The zip's files in ClearML's cache folder, under a name that holds the zip's SHA-256: new content, a new folder."""
    from clearml.storage.cache import CacheManager

    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    cache = Path(CacheManager.get_cache_manager().get_cache_folder())
    cache.mkdir(parents=True, exist_ok=True)  # an offline artifact is read in place: nothing may have made the cache yet
    target = cache / f"{archive.stem}.{digest}"
    if not target.is_dir():
        partial = Path(tempfile.mkdtemp(dir=cache, prefix=f"{target.name}.partial-"))
        shutil.unpack_archive(archive, partial, "zip")
        try:
            partial.rename(target)
        except OSError:  # another process extracted the same content first
            shutil.rmtree(partial)
    return target


@_ClearMLClock.measure
def local_copy(path_or_url: str) -> str:
    """A local path as is; a URL (http, s3, gs, azure) downloaded with ClearML's StorageManager."""
    if not path_or_url.startswith(REMOTE_SCHEMES):
        return path_or_url
    from clearml import StorageManager

    local = StorageManager.get_local_copy(path_or_url, extract_archive=False)
    if not local:
        raise StepInputError(f"Cannot download {path_or_url}; check the URL and the storage credentials in clearml.conf.")
    return local


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


@_ClearMLClock.measure
def flush_reports(task) -> None:
    """Send every scalar reported so far (ClearML batches them) and wait until they are sent.

    Called before a checkpoint is uploaded: a run killed later and resumed from that checkpoint
    then continues curves that the server holds up to the checkpoint's step.
    """
    task.get_logger().flush(wait=True)


def reporter(task) -> Callable[[str, str, float, int], None]:
    logger = task.get_logger()

    @_ClearMLClock.measure
    def report(title: str, series: str, value: float, iteration: int) -> None:
        logger.report_scalar(title=title, series=series, value=value, iteration=iteration)

    return report


@_ClearMLClock.measure
def report_metrics(task, metrics: dict[str, float], samples, base_metrics: dict[str, float] | None = None) -> None:
    """Test metrics as single values and as a ``test`` scalar series, plus a table of samples.

    With ``base_metrics`` (the untuned base on the same rows) also ``base <name>`` and
    ``<name> tuned - base`` single values, and a ``base`` series beside ``test`` in each plot.
    """
    logger = task.get_logger()
    for name, value in metrics.items():
        logger.report_single_value(name, value)
        logger.report_scalar(title=name, series="test", value=value, iteration=0)
        if base_metrics is not None and name in base_metrics:
            logger.report_single_value(f"base {name}", base_metrics[name])
            logger.report_single_value(f"{name} tuned - base", value - base_metrics[name])
            logger.report_scalar(title=name, series="base", value=base_metrics[name], iteration=0)
    logger.report_table(title="predictions", series="samples", iteration=0, table_plot=samples)


@_ClearMLClock.measure
def register_model(
    task, name: str, folder: Path, *, tags: list[str], metadata: dict[str, Any], publish: bool = False, parent_id: str | None = None
) -> str | None:
    """Register ``folder`` as an output model of ``task`` on the server (offline: skipped, returns None).

    The folder is uploaded to the task's output destination before the model is published,
    so a published model always has its weights in storage every machine can reach.
    ClearML's offline mode has no model registry (``OutputModel.update_weights`` fails
    there); offline the folder is an artifact of the task either way. ``parent_id``: the model
    this one was made from (the registry's lineage field; the SDK's OutputModel does not set it).
    """
    if task.is_offline():
        return None
    from clearml import OutputModel

    model = OutputModel(task=task, name=name, framework="PyTorch", tags=tags, config_dict=metadata.get("config"))
    uri = model.update_weights_package(weights_path=str(folder), auto_delete_file=False, async_enable=False)
    if not str(uri).startswith(REMOTE_SCHEMES):
        raise UserError(
            f"Model {name!r} was stored at {uri}, a path on this machine only; set sdk.development.default_output_uri "
            "in clearml.conf (or the task's output destination) to a files server or bucket."
        )
    add_model_metadata(model, {key: value for key, value in metadata.items() if key != "config"})
    if parent_id:
        from clearml.backend_api.session.client import APIClient

        APIClient().models.edit(model=model.id, parent=parent_id)
    if publish:
        model.publish()
    return model.id


@_ClearMLClock.measure
def output_model_of(task_id: str):
    """The model a task registered last (a register step's adapter), or None; server only."""
    models = get_task(task_id).models["output"]
    return models[-1] if models else None


@_ClearMLClock.measure
def registered_models_of(train_task_id: str) -> list:
    """The models the register step registered from a train task's adapter (its ``train_task_id`` metadata); server only."""
    from clearml import Model

    return Model.query_models(project_name=CLEARML_PROJECT, metadata={"train_task_id": train_task_id}, include_archived=False)


@_ClearMLClock.measure
def add_model_metadata(model, metadata: dict[str, Any]) -> None:
    for key, value in metadata.items():
        model.set_metadata(key, str(value), v_type=type(value).__name__)
