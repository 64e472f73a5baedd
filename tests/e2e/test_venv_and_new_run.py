"""The web UI's "New run" of the pipeline (flow 7), and an agent that builds each task's
virtualenv as a user's agent does, on a commit that adds a requirement (flow 8)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.flows import AGENTS, GPU, SERVICES, STEPS, artifact_uri, download_json, launch_pipeline, pipeline_steps
from tests.e2e.harness import GitRemote, ProjectRunner


def test_flow7_a_new_run_from_the_pipeline_page_runs_every_step_with_the_edited_rank(pipeline_run, clearml_server, agents):
    """What the UI's "+ New run" sends (pipelines.start_pipeline): the last run's controller, the
    edited parameters as ``args``, the queue picked in the dialog."""
    api = clearml_server.api
    controller = pipeline_run["controller"]
    started = api.call("pipelines.start_pipeline", task=controller["id"], queue=api.queue_id(SERVICES),
                       args=[{"name": "lora_rank", "value": "16"}, {"name": "max_steps", "value": "5"}])
    assert started["enqueued"] is True
    run = api.wait_for_status(started["pipeline"], ("completed",), timeout_s=600, diagnostics=lambda: agents.log(SERVICES))
    pipeline = api.call("projects.get_by_id", project=run["project"])["project"]["name"].rpartition("/")[2]
    assert run["name"].startswith(f"{pipeline} #") and run["execution"]["queue"] == api.queue_id(SERVICES)
    steps = pipeline_steps(clearml_server, run)
    train, evaluate = steps["train"], steps["evaluate"]
    assert (api.hyperparameter(train["id"], "Args", "lora_rank"), api.hyperparameter(train["id"], "Args", "max_steps")) == ("16", "5")
    training = download_json(artifact_uri(train, "training"))
    assert training["adapter"]["lora_rank"] == 16 and training["steps"] == 5
    assert api.hyperparameter(evaluate["id"], "Args", "train_task_id") == train["id"]  # the new adapter is what was evaluated
    assert {name: task["status"] for name, task in steps.items()} == dict.fromkeys(STEPS, "completed")
    assert train["id"] != pipeline_run["steps"]["train"]["id"]


NEW_REQUIREMENT = "termcolor==3.3.0"  # small, pure Python, and installed nowhere on this machine


def test_flow8_an_agent_building_venvs_installs_the_requirements_of_the_commit_each_step_runs(
        pipeline_run, clearml_server, agents, project: ProjectRunner, git_remote: GitRemote):
    """The README's gpu agent, on a queue of its own, with its default environment build (no
    CLEARML_AGENT_SKIP_*): a virtualenv per task with the task's requirements. A commit adds a
    package to requirements.txt; the next launch's train and evaluate steps (templates made on
    the first launch, before the package existed) run with it installed."""
    api, queue = clearml_server.api, "gpu-venv"
    agents.start(AGENTS[GPU].replace(f"--queue {GPU} ", f"--queue {queue} "), builds_venv=True)
    requirements = Path(git_remote.clone) / "requirements.txt"
    requirements.write_text(requirements.read_text() + f"{NEW_REQUIREMENT}\n")
    commit = git_remote.commit_and_push(f"e2e: require {NEW_REQUIREMENT}")
    controller = launch_pipeline(project, clearml_server, f"--gpu-queue {queue} --max-steps 5 --max-test-samples 8")
    steps = pipeline_steps(clearml_server, controller)
    for name in ("train", "evaluate"):
        task = api.task(steps[name]["id"])
        assert task["last_worker"] == f"e2e-{queue}" and task["script"]["version_num"] == commit, name
        pip = task["script"]["requirements"]["pip"]  # text as the launch set it, a list once the agent recorded what it installed
        assert NEW_REQUIREMENT in (pip if isinstance(pip, list) else pip.splitlines()), name
        log = api.task_log(task["id"])
        assert "created virtual environment" in log or "venvs-cache" in log, f"{name} did not run in a venv of its own:\n{log[-3000:]}"
        assert f"- {NEW_REQUIREMENT}" in log, f"{name}'s venv lacks {NEW_REQUIREMENT}:\n{log[-3000:]}"  # the agent's list of what it installed
