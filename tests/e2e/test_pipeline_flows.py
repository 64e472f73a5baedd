"""The README's pipeline flows on a ClearML server, run by real clearml-agent daemons.

Flow 1 is the session's pipeline launch (``pipeline_run``); flows 2-4 build on its tasks.
Every assertion reads the server's state, as a user would see it in the UI.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.flows import (
    GPU, PROJECT, SERVICES, STEP_QUEUES, STEPS, artifact_names, artifact_uri, clone_and_enqueue, download_json, launch_pipeline,
    pipeline_steps, project_id,
)
from tests.e2e.harness import GitRemote, ProjectRunner


def test_flow1_every_step_completes_on_its_queue_at_the_launch_commit(pipeline_run, clearml_server):
    api, steps = clearml_server.api, pipeline_run["steps"]
    assert pipeline_run["controller"]["execution"]["queue"] == api.queue_id(SERVICES)
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


def test_flow2_a_new_commit_reruns_every_step_and_a_changed_parameter_only_what_it_affects(
        pipeline_run, sweeps, clearml_server, project: ProjectRunner, git_remote: GitRemote):
    """(``sweeps``: flow 5's sweeps run meanwhile.)"""
    readme = Path(git_remote.clone) / "README.md"
    readme.write_text(readme.read_text() + "\n<!-- e2e: a new commit -->\n")
    new_commit = git_remote.commit_and_push("e2e: a new commit")
    second_controller = launch_pipeline(project, clearml_server, "--max-steps 5")
    second = pipeline_steps(clearml_server, second_controller)
    for name in STEPS:
        assert second[name]["id"] != pipeline_run["steps"][name]["id"], f"{name} was reused across commits"
        assert second[name]["script"]["version_num"] == new_commit, name

    third_controller = launch_pipeline(project, clearml_server, "--max-steps 5 --max-new-tokens 6")
    third = pipeline_steps(clearml_server, third_controller)
    reused = {name for name in STEPS if third[name]["id"] == second[name]["id"]}
    assert reused == {"ingest", "preprocess", "train"}  # unchanged code and arguments; evaluate and what follows it ran again
    assert clearml_server.api.hyperparameter(third["evaluate"]["id"], "Args", "max_new_tokens") == "6"
    # The clones made for the cached steps were deleted again (PipelineController deletes them).
    drafts = clearml_server.api.tasks(parent=[third_controller["id"]], status=["created"], only_fields=["name"])
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
    task_id = clone_and_enqueue(project, pipeline_run["steps"]["train"]["id"], "train preempted",
                                {"max_steps": str(steps), "eval_every": str(every)}, GPU)
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
