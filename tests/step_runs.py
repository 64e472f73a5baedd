"""A step's ``main`` run in a forked copy of the test process (no interpreter start, the libraries already imported), in
the environment ``clearml_home`` gives the step scripts, and what its offline ClearML task recorded.

The scripts themselves run as a user runs them in ``tests/test_launch_checks.py`` and the end-to-end flows; these runs let
a test call a step many times in seconds (and let the mutation run measure the steps' modules).
"""

from __future__ import annotations

import io
import json
import os
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from forked import Completed, run_main

from clearml_adapter.tracking import to_json


def run_step(main, argv: list[str], env: dict[str, str]) -> tuple[Completed, dict | None]:
    """The forked run and its ``result.json`` (None when the step wrote none); ``argv`` names ``--output-dir``."""
    completed = run_main(main, argv, env)
    output_dir = Path(argv[argv.index("--output-dir") + 1])
    result_file = output_dir / "result.json"
    return completed, json.loads(result_file.read_text(encoding="utf-8")) if result_file.exists() else None


def stand_in_steps(calls: list, outputs_of):
    """``run_step_locally`` for a runner's own logic, without the steps: each call is recorded in ``calls`` and says
    "(output of <step>)" as a step's subprocess does (past the runner's buffer); its folder is made and its result written
    there as the real step writes it (``result.json``, UTF-8 with its text unescaped), with task id ``<step>-<call number>`` and the outputs
    ``outputs_of(step name, arguments, folder)`` gives (which may write the step's files, or raise as a failing step)."""

    def run(step, arguments: dict, output_dir: Path) -> dict:
        calls.append({"step": step.name, "arguments": arguments, "output_dir": str(output_dir)})
        os.write(1, f"(output of {step.name})\n".encode())
        output_dir.mkdir(parents=True, exist_ok=True)
        task_id = f"{step.name}-{len(calls)}"
        result = {"task_id": task_id, "outputs": outputs_of(step.name, arguments, output_dir), "offline_session": f"/sessions/{task_id}.zip"}
        (output_dir / "result.json").write_text(to_json(result), encoding="utf-8")
        return result

    return run


def task_record(result: dict) -> dict:
    """The task as the offline session stores it (``task.json``: name, type, ``hyperparams``)."""
    return json.loads((Path(result["offline_session"]).with_suffix("") / "task.json").read_text(encoding="utf-8"))


def arguments(result: dict) -> dict[str, str]:
    """The task's ``Args/`` section, name -> value as ClearML stores it (a string)."""
    return {name: entry["value"] for name, entry in task_record(result)["hyperparams"]["Args"].items()}


def artifacts(task_id: str, env: dict[str, str], tmp_path: Path) -> dict[str, Path]:
    """The local copy of each artifact of a task (offline, or on the server ``env`` names), read back by ``Task.get_task``
    as a downstream step reads it."""
    listing = tmp_path / f"artifacts-{task_id}.json"

    def read(_argv) -> None:
        from clearml import Task

        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(False)  # the server env names, else offline
        task = Task.get_task(task_id=task_id)
        listing.write_text(json.dumps({name: artifact.get_local_copy() for name, artifact in task.artifacts.items()}), encoding="utf-8")

    completed = run_main(read, [], env)
    assert completed.returncode == 0, completed.stderr
    return {name: Path(path) for name, path in json.loads(listing.read_text(encoding="utf-8")).items()}


def make_task(name: str, uploads: dict[str, Path], env: dict[str, str], tmp_path: Path, *, local: bool = True) -> str:
    """A completed task of this name holding ``uploads`` (name -> file or folder) as artifacts, as an upstream step leaves
    one (offline with ``local``, else on the server ``env`` names); returns its id.

    On a server the task is made with ``Task.create``, as the UI's "new task" does, not run with ``Task.init``: a running
    task's close waits seconds for its reporting process."""
    id_file = tmp_path / f"task-{name}-{len(list(tmp_path.glob('task-*')))}.id"

    def make(_argv) -> None:
        from clearml import Task

        from clearml_adapter import tracking
        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(local)
        task = tracking.init_task(name, "custom") if local else Task.create(project_name=tracking.CLEARML_PROJECT, task_name=name, task_type="custom")
        for artifact, path in uploads.items():
            tracking.upload_path(task, artifact, path)
        id_file.write_text(task.id, encoding="utf-8")
        if local:
            task.close()
        else:
            task.mark_started(force=True)
            task.mark_completed(force=True)

    completed = run_main(make, [], env)
    assert completed.returncode == 0, completed.stderr
    return id_file.read_text(encoding="utf-8")


def scalars(session: Path) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(title, series) -> [(iteration, value)] of an offline session's scalars, read from its metrics.jsonl."""
    found: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for line in (session / "metrics.jsonl").read_text().splitlines():
        for event in json.loads(line) if line.strip() else []:
            if event.get("type") == "training_stats_scalar":
                found.setdefault((event["metric"], event["variant"]), []).append((event["iter"], event["value"]))
    return found


def model_package(uri: str) -> dict[str, bytes]:
    """The files of a registered model's package (the zip ``register_model`` uploads to the files server), by file name."""
    with urllib.request.urlopen(urllib.parse.quote(uri, safe=":/"), timeout=30) as response:
        package = zipfile.ZipFile(io.BytesIO(response.read()))
    return {Path(name).name: package.read(name) for name in package.namelist() if not name.endswith("/")}
