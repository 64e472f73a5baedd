"""Fixtures of the end-to-end tests: a ClearML server (the test double in
``tests/clearml_server``, or a real server when ``CLEARML_E2E_API_HOST`` is set), a git
remote with the project pushed to it, clearml-agent daemons and a runner for the README's
commands. Session-scoped: started once, stopped (with every process) at the end.

    def test_x(clearml_server, agents, project):
        agents.start(AGENTS["cpu"])  # the README's command
        ran = project.run("python steps/ingest.py --train-tsv data/sample/train.tsv --test-tsv data/sample/test.tsv")
        (task_id,) = project.created_task_ids(ran.stdout + ran.stderr)
        clearml_server.api.wait_for_status(task_id, ("completed",))
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.clearml_server import ClearMLTestServer, load_calls, unimplemented_calls
from tests.e2e.flows import AGENTS, CPU, GPU, PROJECT, SERVICES, SWEEP, Sweeps, clone_and_enqueue, launch_pipeline, pipeline_steps, project_id
from tests.e2e.harness import (
    Agents,
    GitRemote,
    Processes,
    ProjectRunner,
    ServerTarget,
    client_environment,
    real_server_from_environment,
    start_git_remote,
)
from tests.e2e.server_api import ServerApi


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def clearml_server(e2e_dir: Path):
    """The server under test: a real one if CLEARML_E2E_API_HOST is set, else the test double."""
    real = real_server_from_environment()
    if real is not None:
        yield real
        return
    server = ClearMLTestServer(e2e_dir / "server-state").start()
    env = server.environment()
    try:
        yield ServerTarget(
            env=env, api=ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"]), state_dir=server.state_dir
        )
    finally:
        server.stop()
    assert_the_double_held(server.state_dir)


def assert_the_double_held(state_dir: Path) -> None:
    """Once, after every flow and agent of the session (agents are stopped before the server): no
    call reached an endpoint or field the double lacks, and no handler of the double failed (its
    500s with a traceback). A flow may pass on a refused call its client tolerates; the double
    must still not be the reason."""
    faults = unimplemented_calls(state_dir) + [call for call in load_calls(state_dir) if "traceback" in call]
    assert not faults, "the ClearML test double refused or failed these calls:\n" + "\n".join(
        f"{call.get('endpoint')}: {call.get('msg')}\n{call.get('traceback', '')}" for call in faults[:20]
    )


@pytest.fixture(scope="session")
def processes(e2e_dir: Path, clearml_server: ServerTarget):
    """Every background process of the session; all killed at the end, pass or fail
    (before the server stops, so that agents do not outlive it)."""
    log_dir = e2e_dir / "logs"
    log_dir.mkdir()
    started = Processes(log_dir)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture(scope="session")
def git_remote(processes: Processes, e2e_dir: Path) -> GitRemote:
    return start_git_remote(processes, e2e_dir)


@pytest.fixture(scope="session")
def agents(processes: Processes, clearml_server: ServerTarget, e2e_dir: Path, git_remote: GitRemote) -> Agents:
    return Agents(processes, clearml_server, e2e_dir)


@pytest.fixture(scope="session")
def project(clearml_server: ServerTarget, git_remote: GitRemote, e2e_dir: Path) -> ProjectRunner:
    home = e2e_dir / "user-home"
    home.mkdir()
    return ProjectRunner(git_remote.clone, client_environment(clearml_server, home))


@pytest.fixture(scope="session")
def pipeline_run(clearml_server: ServerTarget, agents: Agents, project: ProjectRunner, git_remote: GitRemote) -> dict:
    """The README's first launch (the tiny preset) on the server, verbatim, with the README's agent
    on every queue, each started with the README's command; later flows clone its tasks."""
    for queue in (GPU, CPU, SERVICES):
        agents.start(AGENTS[queue])
    controller = launch_pipeline(project, clearml_server)
    return {"controller": controller, "steps": pipeline_steps(clearml_server, controller), "commit": git_remote.head()}


@pytest.fixture(scope="session")
def sweeps(pipeline_run: dict, clearml_server: ServerTarget, project: ProjectRunner) -> Iterator[Sweeps]:
    """Flow 5 in the background: the sweep enqueued on ``services`` over the session pipeline's
    train task, then, once it completed, a UI clone of it sweeping a 2 x 2 grid, ``lora_ranks``
    "[4, 8]" by ``prompt_lengths`` "[2, 4]", in 4 trials (both at the default ``--concurrent``).
    Flow 2 asks for it first, so that the sweeps' trials run while flows 2-4 do (one step at a
    time leaves a core of this 2-core machine idle).

    Rank 0 makes a trial fail (the train step refuses it). Before the launch, a user's edit
    of the evaluate template in the UI, which the sweep's evaluate run must keep.
    """
    api = clearml_server.api
    [evaluate_template] = api.tasks(name="^evaluate$", tags=["template"], project=[project_id(clearml_server, f"{PROJECT}/templates")])
    project.python(f"from clearml import Task\nTask.get_task({evaluate_template['id']!r}).set_parameter('Args/max_new_tokens', '7')\n")
    template = pipeline_run["steps"]["train"]["id"]
    ran = project.run(f"{SWEEP} --template-task-id {template} --lora-ranks 0,2,4 --trials 3")
    [optimizer_id] = project.created_task_ids(ran.stdout + ran.stderr)

    def clone_when_completed() -> str:
        api.wait_for_status(optimizer_id, ("completed",), timeout_s=900)
        clone_id = clone_and_enqueue(
            project, optimizer_id, "HPO (UI clone)", {"lora_ranks": "[4, 8]", "prompt_lengths": "[2, 4]", "trials": "4"}, SERVICES
        )
        api.wait_for_status(clone_id, ("completed",), timeout_s=900)
        return clone_id

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        yield Sweeps(optimizer_id=optimizer_id, ui_clone=pool.submit(clone_when_completed))
    finally:
        # the thread's calls fail once the server stops, so it never outlives the session
        pool.shutdown(wait=False, cancel_futures=True)
