"""The sweep on agents (flow 5) and bad input on the server path (flow 6)."""

from __future__ import annotations

from tests.e2e.flows import CPU, GPU, PROJECT, SERVICES, SWEEP, Sweeps, artifact_names, clone_and_enqueue, project_id
from tests.e2e.harness import ServerTarget


def optimizer_children(server: ServerTarget, optimizer_id: str) -> dict[str, list[dict]]:
    """The tasks an optimizer started, by name: its trials ("train") and the final evaluate and register."""
    children: dict[str, list[dict]] = {}
    for task in server.api.tasks(parent=optimizer_id, order_by=["created"]):
        children.setdefault(task["name"].split(":")[0], []).append(task)
    return children


def trial_ranks(server: ServerTarget, trials: list[dict]) -> dict[int, str]:
    return {int(server.api.hyperparameter(t["id"], "Args", "lora_rank")): t["status"] for t in trials}


def trial_pairs(server: ServerTarget, trials: list[dict]) -> list[tuple[tuple[int, int], str]]:
    """Each trial's (lora_rank, prompt_length) and status, in the order they were created."""
    return [
        (
            (int(server.api.hyperparameter(t["id"], "Args", "lora_rank")), int(server.api.hyperparameter(t["id"], "Args", "prompt_length"))),
            t["status"],
        )
        for t in trials
    ]


def test_flow5_the_sweep_runs_on_agents_and_its_ui_clone_sweeps_the_edited_values(sweeps: Sweeps, clearml_server, agents):
    api = clearml_server.api
    optimizer_id = sweeps.optimizer_id
    optimizer = api.wait_for_status(optimizer_id, ("completed",), timeout_s=900, diagnostics=lambda: agents.log(SERVICES))
    assert optimizer["execution"]["queue"] == api.queue_id(SERVICES)
    assert optimizer["last_worker"].startswith(f"e2e-{SERVICES}:")  # a services-mode agent runs it under a worker of its own
    children = optimizer_children(clearml_server, optimizer_id)
    trials = [task for tasks in children.values() for task in tasks if task["type"] == "training"]
    assert trial_ranks(clearml_server, trials) == {0: "failed", 2: "completed", 4: "completed"}  # rank 0 is refused by the train step
    assert "Pruning trial with duplicate parameters" not in api.task_log(optimizer_id)
    [evaluate], [register] = children["evaluate"], children["register"]
    assert (evaluate["status"], register["status"]) == ("completed", "completed")
    best = api.hyperparameter(evaluate["id"], "Args", "train_task_id")
    completed = {t["id"]: t for t in trials if t["status"] == "completed"}
    assert best in completed
    assert best == min(completed, key=lambda tid: objective(api.task(tid)))
    assert api.hyperparameter(evaluate["id"], "Args", "max_new_tokens") == "7"  # the template's other Args survive (update, not set)
    [model] = api.models_of(register["id"])
    assert model["ready"] is True

    try:
        clone_id = sweeps.ui_clone.result(timeout=900)
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{agents.log(SERVICES)}") from None
    # the 2 x 2 grid at the default concurrency (2 trials at a time): every pair once, each trial completed, none pruned
    clone_trials = optimizer_children(clearml_server, clone_id).get("train", [])
    assert api.hyperparameter(clone_id, "Args", "concurrent") == "2"
    assert sorted(trial_pairs(clearml_server, clone_trials)) == [
        ((4, 2), "completed"),
        ((4, 4), "completed"),
        ((8, 2), "completed"),
        ((8, 4), "completed"),
    ]
    assert "Pruning trial" not in api.task_log(clone_id)


def objective(task: dict) -> float:
    """The trial's lowest validation loss, as the server aggregated it (last_metrics)."""
    values = [v for metric in task["last_metrics"].values() for v in metric.values() if (v["metric"], v["variant"]) == ("loss", "validation")]
    return values[0]["min_value"]


def test_flow6_a_wrong_template_task_id_is_one_sentence_and_nothing_on_the_server(pipeline_run, clearml_server, project):
    api = clearml_server.api

    def newest_tasks() -> set[str]:
        return {t["id"] for t in api.tasks(project=[project_id(clearml_server, PROJECT)], order_by=["-created"], page_size=50, only_fields=["id"])}

    before = newest_tasks()
    ran = project.run(f"{SWEEP} --template-task-id 0123456789abcdef0123456789abcdef --lora-ranks 2", check=False)
    assert ran.returncode == 1
    message = ran.stderr.strip().splitlines()[-1]
    assert message.startswith("error: No ClearML task with id '0123456789abcdef0123456789abcdef' on the ClearML server")
    assert newest_tasks() == before  # checked before the optimizer task is created: nothing was


def test_flow6_a_missing_upstream_artifact_fails_the_task_with_that_reason(pipeline_run, clearml_server, project, agents):
    steps = pipeline_run["steps"]
    task_id = clone_and_enqueue(project, steps["preprocess"]["id"], "preprocess (wrong input)", {"ingest_task_id": steps["train"]["id"]}, CPU)
    failed = clearml_server.api.wait_for_status(task_id, ("failed",), timeout_s=300, diagnostics=lambda: agents.log(CPU))
    assert failed["status_reason"].startswith(f"Task {steps['train']['id']} (train) has no artifact 'train'")
    assert not artifact_names(failed) and not clearml_server.api.models_of(task_id)


def test_flow6_bf16_on_an_agent_without_a_gpu_fails_the_task_with_that_reason(pipeline_run, clearml_server, project, agents):
    task_id = clone_and_enqueue(project, pipeline_run["steps"]["train"]["id"], "train bf16", {"precision": "bf16"}, GPU)
    failed = clearml_server.api.wait_for_status(task_id, ("failed",), timeout_s=300, diagnostics=lambda: agents.log(GPU))
    assert failed["status_reason"] == "--precision bf16 needs a CUDA GPU; use --precision fp32 (or auto) on CPU."
    assert "checkpoint" not in artifact_names(failed) and not clearml_server.api.models_of(task_id)
