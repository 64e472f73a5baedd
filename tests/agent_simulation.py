"""What an agent's re-run of a task sees, without a server (test support).

ClearML takes its real "running remotely" branches against an offline session when
``CLEARML_OFFLINE_MODE=1`` and ``CLEARML_TASK_ID=<offline task id>`` are set: ``Task.init``
attaches to that task, argparse values come from its ``Args``, a ``PipelineController``
prepares the pipeline as on the ``services`` agent. So a test launches an entry point
once (creating the offline task and storing what a launch stores), optionally edits the
stored task as a user would in the UI, then runs the same entry point again with no
arguments, as ``clearml-agent`` does.

Run as ``python -m tests.agent_simulation launch SCRIPT [ARGS...]`` or
``rerun SCRIPT [MODULE:FUNCTION]``. Only what needs a server is replaced, and only once
the code under test has imported it: enqueueing is recorded (``ENQUEUED <id> <queue>``),
the queue check prints the queues it would look up (``QUEUES=...``), the launch the task it
would follow after enqueuing it (``FOLLOWED=...``), the pipeline's
version lookup gets a fixed version, a controller stops after preparing
its DAG and prints it (``DAG=...``) where on an agent it would launch steps, and
``MODULE:FUNCTION``, where the re-run would go on to need a server, prints its arguments
(``CALL=...``) instead of running.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent


def offline_task_file(cache_dir: Path, task_id: str) -> Path:
    return cache_dir / "offline" / task_id / "task.json"


def edit_args(cache_dir: Path, task_id: str, **values: str) -> None:
    """Edit ``Args/<name>`` of an offline task, as a user does in the UI before enqueueing."""
    path = offline_task_file(cache_dir, task_id)
    task = json.loads(path.read_text())
    for name, value in values.items():
        task["hyperparams"]["Args"][name]["value"] = value
    path.write_text(json.dumps(task))


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Patches a module right after its first import, so the code under test imports ClearML
    itself, when it does (argparse capture depends on that moment)."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]):
        self.patches = patches

    def find_spec(self, name, path, target=None):
        if name not in self.patches:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        execute, patch = spec.loader.exec_module, self.patches.pop(name)

        def execute_and_patch(module: ModuleType) -> None:
            execute(module)
            patch(module)

        spec.loader.exec_module = execute_and_patch
        return spec


def _record_enqueue(module: ModuleType) -> None:
    def enqueue(task, queue_name=None, **_):
        print(f"ENQUEUED {task.id} {queue_name}", flush=True)

    module.Task.enqueue = staticmethod(enqueue)


def _controller_prints_its_dag(module: ModuleType) -> None:
    controller = module.PipelineController
    controller._handle_pipeline_version = lambda self: setattr(self, "_version", self._version or "1.0.0")

    def prepare_and_print(self, *args, **kwargs) -> bool:
        self._prepare_pipeline()
        resolve = lambda value: self._parse_step_ref(value) if str(value).startswith("${pipeline.") else value  # noqa: E731
        dag = {
            name: {
                "queue": resolve(node.queue),
                "parents": node.parents,
                "parameters": {key: resolve(value) for key, value in node.parameters.items()},
            }
            for name, node in self._nodes.items()
        }
        print("DAG=" + json.dumps({"dag": dag, "pipeline": self._pipeline_args}, default=str), flush=True)
        return True

    controller._start = prepare_and_print


def _record_controller_project(module: ModuleType) -> None:
    build = module.build_controller

    def recorded(*args, **kwargs):
        print("CONTROLLER=" + json.dumps({"project": kwargs["project"], "name": kwargs["name"]}), flush=True)
        return build(*args, **kwargs)

    module.build_controller = recorded


def _skip_repository_check(module: ModuleType) -> None:
    """The check is tested on its own; here it passes and names a remote as ClearML would record it."""
    launched = SimpleNamespace(url="git://git.invalid/project.git", branch="main", commit="0" * 40, diff="")
    module.check_repository = lambda *args, **kwargs: launched


def _record_queue_check(module: ModuleType) -> None:
    """The check and the following of an enqueued task ask the server (tested in tests/test_server_errors.py); here
    they print which queues they would ask about (``QUEUES=...``) and which task they would follow (``FOLLOWED=...``)."""
    module.check_queues = lambda uses: print("QUEUES=" + json.dumps([vars(use) for use in uses]), flush=True)
    module.follow_start = lambda task_id, queue, wait_s: print("FOLLOWED=" + json.dumps([task_id, queue, wait_s]), flush=True)


def _server_path(module: ModuleType) -> None:
    """The server is chosen without a check; the SDK settings every process makes are made."""
    module.choose_offline_or_server = lambda local_flag: False


def launch(script: str, argv: list[str]) -> None:
    """The launching machine's run, on an offline session: the server path, with enqueueing recorded."""
    os.environ.update(CLEARML_OFFLINE_MODE="1", CLEARML_CONFIG_FILE=str(ROOT / "configs" / "clearml-offline.conf"))
    _run(script, argv, {"clearml_adapter.connection": _server_path, "pipelines.repository": _skip_repository_check})


def rerun(script: str, stop_at: str | None = None) -> None:
    """The agent's run: no arguments, ``CLEARML_TASK_ID`` set by the caller.

    ``stop_at`` (``module:function``) is replaced by a recorder that prints the arguments it
    was called with (``CALL=...``): where the code would go on to need a server.
    """
    assert os.environ.get("CLEARML_TASK_ID") and os.environ.get("CLEARML_OFFLINE_MODE") == "1"
    patches = {}
    if stop_at:
        module_name, function = stop_at.split(":")
        patches[module_name] = lambda module: setattr(module, function, _record_call)
    _run(script, [], patches)


def _record_call(*args, **kwargs) -> None:
    def describe(value):
        return vars(value) if isinstance(value, argparse.Namespace) else str(value)

    print("CALL=" + json.dumps({"args": args, "kwargs": kwargs}, default=describe), flush=True)


def _run(script: str, argv: list[str], patches: dict[str, Callable[[ModuleType], None]]) -> None:
    sys.path.insert(0, str(ROOT))
    sys.meta_path.insert(
        0,
        _PatchAfterImport(
            {
                "clearml.task": _record_enqueue,
                "clearml.automation.controller": _controller_prints_its_dag,
                "pipelines.controller": _record_controller_project,
                "pipelines.queues": _record_queue_check,
                **patches,
            }
        ),
    )
    sys.argv = [script, *argv]
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    mode, script, *rest = sys.argv[1:]
    if mode == "launch":
        launch(script, rest)
    else:
        rerun(script, *rest)
