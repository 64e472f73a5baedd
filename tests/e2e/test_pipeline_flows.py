"""The README's pipeline flows on a ClearML server, run by real clearml-agent daemons.

Flow 1 is the session's pipeline launch (``pipeline_run``); flows 2-4 and 7 (the web UI's "New run") build on its tasks.
Every assertion reads the server's state, as a user would see it in the UI.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipelines.definition import PARAMETERS
from pipelines.run_pipeline import build_parser
from tests.e2e.flows import (
    AGENTS,
    CPU,
    GPU,
    PROJECT,
    SERVICES,
    STEP_QUEUES,
    STEPS,
    artifact_names,
    artifact_uri,
    clone_and_enqueue,
    download_json,
    launch_pipeline,
    pipeline_steps,
    project_id,
)
from tests.e2e.harness import GitRemote, ProjectRunner


def test_flow1_every_step_completes_on_its_queue_at_the_launch_commit(pipeline_run, clearml_server):
    api, steps = clearml_server.api, pipeline_run["steps"]
    assert pipeline_run["controller"]["execution"]["queue"] == api.queue_id(SERVICES)
    assert tuple(steps) == STEPS  # no export step: it runs only when asked
    for name, task in steps.items():
        assert task["status"] == "completed", name
        assert task["parent"] == pipeline_run["controller"]["id"], name
        assert task["execution"]["queue"] == api.queue_id(STEP_QUEUES[name]), name
        assert task["last_worker"] == f"e2e-{STEP_QUEUES[name]}", name
        assert task["script"]["version_num"] == pipeline_run["commit"], name
        assert task["project"] == project_id(clearml_server, PROJECT), name  # not among the templates
        assert "template" not in task["tags"], name
    train = steps["train"]["id"]
    assert (api.hyperparameter(train, "Args", "lora_rank"), api.hyperparameter(train, "Args", "max_steps")) == ("8", "")
    assert download_json(artifact_uri(steps["train"], "training"))["steps"] == 395  # the tiny preset: 5 epochs of 79 batches


def test_flow1_the_best_model_is_published_with_its_metrics_on_the_files_server(pipeline_run, clearml_server):
    api, files_host = clearml_server.api, clearml_server.env["CLEARML_FILES_HOST"]
    [registered] = api.models_of(pipeline_run["steps"]["register"]["id"])
    assert registered["ready"] is True  # published
    assert {"best", "by chrf"} <= set(registered["tags"])
    assert registered["uri"].startswith(files_host + "/"), registered["uri"]
    evaluation = download_json(artifact_uri(pipeline_run["steps"]["evaluate"], "evaluation"))
    metadata = {entry["key"]: entry["value"] for entry in registered["metadata"].values()}
    assert float(metadata["test_chrf"]) == pytest.approx(evaluation["metrics"]["chrf"])
    assert metadata["train_task_id"] == pipeline_run["steps"]["train"]["id"]
    [adapter_model] = api.models_of(pipeline_run["steps"]["train"]["id"])
    assert adapter_model["uri"].startswith(files_host + "/") and "lora_rank=8" in adapter_model["tags"]


def test_flow1_the_pipeline_page_shows_every_parameter_with_its_value_and_description(pipeline_run, clearml_server):
    """The controller task's ``Args`` (PipelineController's section for its parameters, beside the launch's options):
    what the UI's "New run" form and the pipeline's details show. Each description is its option's help."""
    section = clearml_server.api.task(pipeline_run["controller"]["id"])["hyperparams"]["Args"]
    described = {action.dest: action.help for action in build_parser()._actions}
    assert {name: section[name].get("description") for name in PARAMETERS} == {name: described[name] for name in PARAMETERS}
    assert (section["lora_rank"]["value"], section["model"]["value"], section["export"]["value"]) == ("8", "tiny", "False")


NEW_REQUIREMENT = "termcolor==3.3.0"  # small, pure Python, and installed nowhere on this machine
VENV_QUEUE = "gpu-venv"


def test_flow2_a_new_commit_reruns_every_step_with_its_requirements_and_a_changed_parameter_only_what_it_affects(
    pipeline_run, sweeps, clearml_server, agents, project: ProjectRunner, git_remote: GitRemote
):
    """A commit adds a package to requirements.txt; its launch runs train and evaluate on a queue of its own,
    served by the README's gpu agent with its default environment build (no CLEARML_AGENT_SKIP_*: a virtualenv
    per task with the task's requirements, as a user's agent does). Every step runs again, at the new commit,
    and train and evaluate with the package installed (their templates were made on the first launch, before
    the package existed). The same launch with one evaluation setting changed then reuses what it does not
    affect (ClearML's step cache keys on code and arguments, not on the queue).
    (``sweeps``: flow 5's sweeps run meanwhile.)"""
    api = clearml_server.api
    agents.start(AGENTS[GPU].replace(f"--queue {GPU} ", f"--queue {VENV_QUEUE} "), builds_venv=True)
    requirements = Path(git_remote.clone) / "requirements.txt"
    requirements.write_text(requirements.read_text() + f"{NEW_REQUIREMENT}\n")
    new_commit = git_remote.commit_and_push(f"e2e: require {NEW_REQUIREMENT}")
    second_controller = launch_pipeline(project, clearml_server, f"--gpu-queue {VENV_QUEUE} --max-steps 5 --max-test-samples 8")
    second = pipeline_steps(clearml_server, second_controller)
    for name in STEPS:
        assert second[name]["id"] != pipeline_run["steps"][name]["id"], f"{name} was reused across commits"
        assert second[name]["script"]["version_num"] == new_commit, name
    for name in ("train", "evaluate"):
        task = api.task(second[name]["id"])
        assert task["last_worker"] == f"e2e-{VENV_QUEUE}", name
        pip = task["script"]["requirements"]["pip"]  # text as the launch set it, a list once the agent recorded what it installed
        assert NEW_REQUIREMENT in (pip if isinstance(pip, list) else pip.splitlines()), name
        log = api.task_log(task["id"])
        assert "created virtual environment" in log or "venvs-cache" in log, f"{name} did not run in a venv of its own:\n{log[-3000:]}"
        assert f"- {NEW_REQUIREMENT}" in log, f"{name}'s venv lacks {NEW_REQUIREMENT}:\n{log[-3000:]}"  # the agent's list of what it installed

    third_controller = launch_pipeline(project, clearml_server, "--max-steps 5 --max-test-samples 8 --max-new-tokens 6")
    third = pipeline_steps(clearml_server, third_controller)
    reused = {name for name in STEPS if third[name]["id"] == second[name]["id"]}
    assert reused == {"ingest", "preprocess", "train"}  # unchanged code and arguments; evaluate and what follows it ran again
    assert api.hyperparameter(third["evaluate"]["id"], "Args", "max_new_tokens") == "6"
    assert third["evaluate"]["last_worker"] == f"e2e-{GPU}"
    # The clones made for the cached steps were deleted again (PipelineController deletes them).
    drafts = api.tasks(parent=[third_controller["id"]], status=["created"], only_fields=["name"])
    assert drafts == [], drafts


def test_flow3_a_ui_clone_of_the_train_task_trains_from_scratch_with_the_edited_rank(pipeline_run, clearml_server, project, agents):
    clone_id = clone_and_enqueue(project, pipeline_run["steps"]["train"]["id"], "train rank 16", {"lora_rank": "16", "max_steps": "5"}, GPU)
    clone = clearml_server.api.wait_for_status(clone_id, ("completed",), timeout_s=300, diagnostics=lambda: agents.log(GPU))
    training = download_json(artifact_uri(clone, "training"))
    assert training["adapter"]["lora_rank"] == 16 and training["resumed_from"] is None
    assert "continuing from it" not in clearml_server.api.task_log(clone_id)
    [model] = clearml_server.api.models_of(clone_id)
    assert "lora_rank=16" in model["tags"]


def test_flow4_an_aborted_train_task_enqueued_again_continues_from_its_checkpoint(pipeline_run, clearml_server, project, agents):
    """Abort in the UI (tasks.stop) after the first checkpoint, then Enqueue the aborted task again."""
    api = clearml_server.api
    steps, every = 40, 5
    task_id = clone_and_enqueue(
        project, pipeline_run["steps"]["train"]["id"], "train preempted", {"max_steps": str(steps), "eval_every": str(every)}, GPU
    )
    deadline = time.monotonic() + 300
    while "checkpoint" not in artifact_names(api.task(task_id)):
        assert time.monotonic() < deadline, api.task_log(task_id)[-3000:]
        time.sleep(0.5)
    api.call("tasks.stop", task=task_id)
    stopped = api.wait_for_status(task_id, ("stopped",), timeout_s=120, diagnostics=lambda: agents.log(GPU))
    assert "training" not in artifact_names(stopped), "the run ended before it was aborted: make it longer"

    api.call("tasks.enqueue", task=task_id, queue=api.queue_id(GPU))
    done = api.wait_for_status(task_id, ("completed",), timeout_s=300, diagnostics=lambda: agents.log(GPU))
    training = download_json(artifact_uri(done, "training"))
    assert "This task already holds a checkpoint" in api.task_log(task_id)
    assert training["resumed_from"] and training["steps"] == steps
    assert [entry["step"] for entry in training["history"]] == list(range(every, steps + 1, every))
    # The re-run reports at the steps it trains, after its checkpoint, not shifted by the first run's last
    # iteration. (What the first run had not yet sent when it was killed is lost, as after any kill.)
    trained = api.scalar_iterations(task_id, "loss", "train")
    assert min(trained) == 1 and max(trained) == steps and set(range(every + 1, steps + 1)) <= set(trained)
    assert max(api.scalar_iterations(task_id, "loss", "validation")) == steps


def test_flow7_a_new_run_from_the_pipeline_page_runs_every_step_with_the_edited_rank_and_exports(pipeline_run, clearml_server, agents):
    """What the UI's "+ New run" sends (pipelines.start_pipeline): the last run's controller, the
    edited parameters as ``args``, the queue picked in the dialog. ``export`` set there adds the
    export step, which the first run did not have."""
    api = clearml_server.api
    controller = pipeline_run["controller"]
    started = api.call(
        "pipelines.start_pipeline",
        task=controller["id"],
        queue=api.queue_id(SERVICES),
        args=[{"name": "lora_rank", "value": "16"}, {"name": "max_steps", "value": "5"}, {"name": "export", "value": "true"}],
    )
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
    assert {name: task["status"] for name, task in steps.items()} == dict.fromkeys((*STEPS, "export"), "completed")
    assert train["id"] != pipeline_run["steps"]["train"]["id"]
    # The export of the model this run registered: on the cpu queue, registered as its own model, the adapter its parent.
    export, register = steps["export"], steps["register"]
    assert (export["execution"]["queue"], api.hyperparameter(export["id"], "Args", "register_task_id")) == (api.queue_id(CPU), register["id"])
    [adapter], [plain] = api.models_of(register["id"]), api.models_of(export["id"])
    assert (plain["parent"], plain["tags"], plain["ready"]) == (adapter["id"], ["plain checkpoint"], adapter["ready"])
    assert plain["uri"].startswith(clearml_server.env["CLEARML_FILES_HOST"] + "/"), plain["uri"]
