"""What the end-to-end flows share: queue and project names, the README's pipeline launch,
and reading a run back from the server."""

from __future__ import annotations

import json
import re
import urllib.request
from concurrent.futures import Future
from dataclasses import dataclass

from components.settings import CLEARML_PROJECT
from tests.e2e.harness import ProjectRunner, ServerTarget
from tests.readme_commands import agent_commands, the_command

# The README's commands, verbatim: its agents (one per queue), its first launch, its sweep.
AGENTS = agent_commands()
CPU, GPU, SERVICES = "cpu", "gpu", "services"  # the launch's default queue names, which the README's agents serve
PROJECT = CLEARML_PROJECT  # the launch's default project
STEPS = ("ingest", "preprocess", "train", "evaluate", "register")  # a run's steps; "export" follows register when asked
STEP_QUEUES = {"ingest": CPU, "preprocess": CPU, "train": GPU, "evaluate": GPU, "register": CPU, "export": CPU}
LAUNCH = the_command("python pipelines/run_pipeline.py", "--preset tiny")
# The README's sweep at its default concurrency, with what keeps a flow short (tests/test_harness_settings.py holds
# the flows to these: the README's commands, and only these options added, each with its reason).
SWEEP_OPTIONS = {
    "--max-steps 1": "one optimizer step per trial: the flow checks the sweep on agents, not what training learns",
    "--prompt-lengths 4": "one prompt length in the first sweep (its UI clone sweeps two): fewer trials",
}
SWEEP = " ".join([the_command("python pipelines/run_hpo.py", "--run-on"), *SWEEP_OPTIONS])


def launch_pipeline(project: ProjectRunner, server: ServerTarget, extra: str = "") -> dict:
    """Launch as the README says (with ``extra`` options, a flow's own); wait for the controller to complete on the services agent."""
    ran = project.run(f"{LAUNCH} {extra}")
    [controller_id] = project.created_task_ids(ran.stdout + ran.stderr)
    assert f"Task {controller_id} started on agent e2e-{SERVICES}" in ran.stdout, ran.stdout  # the launch followed it to its agent
    return server.api.wait_for_status(controller_id, ("completed",), timeout_s=600)


def pipeline_steps(server: ServerTarget, controller: dict) -> dict[str, dict]:
    """The task each step of a run used (a new one, or an earlier run's when cached), by step name."""
    dag = json.loads(server.api.task(controller["id"])["configuration"]["Pipeline"]["value"])
    return {name: server.api.task(node["executed"]) for name, node in dag.items()}


def project_id(server: ServerTarget, name: str) -> str:
    [found] = server.api.call("projects.get_all", name=f"^{re.escape(name)}$")["projects"]
    return found["id"]


@dataclass
class Sweeps:
    """Flow 5's optimizer task, and the id of its UI clone once that completed."""

    optimizer_id: str
    ui_clone: Future


def artifact_uris(task: dict) -> dict[str, str]:
    """A task's output artifacts, by name."""
    return {a["key"]: a["uri"] for a in task["execution"].get("artifacts") or []}


def artifact_uri(task: dict, name: str) -> str:
    return artifact_uris(task)[name]


def artifact_names(task: dict) -> set[str]:
    return set(artifact_uris(task))


def download(uri: str) -> str:
    with urllib.request.urlopen(uri, timeout=30) as response:
        return response.read().decode("utf-8")


def download_json(uri: str) -> dict:
    return json.loads(download(uri))


def clone_and_enqueue(project: ProjectRunner, source_id: str, name: str, args: dict[str, str], queue: str) -> str:
    """What a user does in the UI: clone a task, edit its Args, enqueue the clone; returns the clone's id."""
    edits = "".join(f"task.set_parameter('Args/{key}', {value!r})\n" for key, value in args.items())
    return project.python(
        "from clearml import Task\n"
        f"task = Task.clone(source_task={source_id!r}, name={name!r})\n"
        f"{edits}"
        f"Task.enqueue(task, queue_name={queue!r})\n"
        "print(task.id)\n"
    ).split()[-1]
