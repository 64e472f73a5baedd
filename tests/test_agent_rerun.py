"""What agents receive: each entry point launched once, then re-run as clearml-agent runs it.

See tests/agent_simulation.py: ClearML's own "running remotely" branches, against an
offline task instead of a server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from agent_simulation import edit_args, offline_task_file
from conftest import ROOT, run_script


def lines_with(prefix: str, output: str) -> list:
    return [json.loads(line[len(prefix):]) for line in output.splitlines() if line.startswith(prefix)]


def enqueued(output: str) -> list[tuple[str, str]]:
    return [tuple(line.split()[1:3]) for line in output.splitlines() if line.startswith("ENQUEUED ")]


def simulate(env: dict, mode: str, *args: str, task_id: str | None = None):
    if task_id:
        env = {**env, "CLEARML_OFFLINE_MODE": "1", "CLEARML_TASK_ID": task_id}
    return run_script(env, "-m", "tests.agent_simulation", mode, *args)


@pytest.fixture(scope="module")
def controller(clearml_home, tmp_path_factory):
    """A pipeline launched with options, its Args then edited in the UI, and the services agent's re-run."""
    launched = simulate(
        clearml_home, "launch", "pipelines/run_pipeline.py", "--gpu-queue", "a100", "--cpu-queue", "cpu2", "--lora-rank", "16",
        "--max-steps", "100", "--eval-every", "7", "--early-stopping-patience", "2", "--max-test-samples", "5",
        "--train-tsv", str(ROOT / "data/sample/train.tsv"), "--test-tsv", "data/sample/test.tsv", "--project", "MyProj",
    ).stdout
    [(task_id, queue)] = enqueued(launched)
    cache = Path(clearml_home["CLEARML_CACHE_DIR"])
    stored = {k: v["value"] for k, v in json.loads(offline_task_file(cache, task_id).read_text())["hyperparams"]["Args"].items()}
    edit_args(cache, task_id, prompt_length="10")  # a UI edit before enqueueing a clone
    rerun = simulate(clearml_home, "rerun", "pipelines/run_pipeline.py", task_id=task_id).stdout
    [dag] = lines_with("DAG=", rerun)
    [built] = lines_with("CONTROLLER=", rerun)
    return {"queue": queue, "stored": stored, "dag": dag["dag"], "pipeline": dag["pipeline"], "project": built["project"],
            "checked": {"launch": lines_with("QUEUES=", launched), "agent": lines_with("QUEUES=", rerun)}}


def test_the_launch_is_enqueued_on_services_with_every_option_stored(controller):
    assert controller["queue"] == "services"
    stored = controller["stored"]
    assert (stored["gpu_queue"], stored["cpu_queue"], stored["project"]) == ("a100", "cpu2", "MyProj")
    assert (stored["lora_rank"], stored["max_steps"]) == ("16", "100")


def test_the_launch_checks_every_queue_it_uses_and_the_agent_those_of_the_steps(controller):
    steps = [{"name": "cpu2", "kind": "cpu", "option": "--cpu-queue"}, {"name": "a100", "kind": "gpu", "option": "--gpu-queue"}]
    assert controller["checked"]["launch"] == [steps + [{"name": "services", "kind": "services", "option": "--controller-queue"}]]
    assert controller["checked"]["agent"] == [steps]  # the controller already runs on its queue


def test_the_agents_controller_uses_the_launch_options(controller):
    dag = controller["dag"]
    assert {name: node["queue"] for name, node in dag.items()} == {
        "ingest": "cpu2", "preprocess": "cpu2", "train": "a100", "evaluate": "a100", "register": "cpu2"}
    train = dag["train"]["parameters"]
    assert (train["Args/lora_rank"], train["Args/max_steps"], train["Args/eval_every"], train["Args/early_stopping_patience"]) == (16, 100, 7, 2)
    assert dag["evaluate"]["parameters"]["Args/max_samples"] == 5
    assert controller["project"] == "MyProj"


def test_a_ui_edit_of_the_controller_reaches_the_steps(controller):
    assert controller["dag"]["train"]["parameters"]["Args/prompt_length"] == 10


def test_data_paths_reach_agents_relative_to_the_repository(controller):
    ingest = controller["dag"]["ingest"]["parameters"]
    assert (ingest["Args/train_tsv"], ingest["Args/test_tsv"]) == ("data/sample/train.tsv", "data/sample/test.tsv")


def test_a_rerun_train_task_resumes_and_reports_at_its_own_steps(tiny_pipeline, clearml_home, tmp_path):
    """An agent re-running an interrupted train task: it continues from its own checkpoint, and its
    scalars land on the optimizer steps they belong to (not shifted by the task's last iteration)."""
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    run_script(clearml_home, "steps/train.py", "--local", "--preprocess-task-id", summary["task_ids"]["preprocess"], "--model", "tiny",
               "--max-steps", "1", "--eval-every", "1", "--output-dir", str(tmp_path))
    task_id = json.loads((tmp_path / "result.json").read_text())["task_id"]
    cache = Path(clearml_home["CLEARML_CACHE_DIR"])
    # What the server holds after the interrupted run: its last reported iteration (offline sessions don't keep it).
    task_file = offline_task_file(cache, task_id)
    task_file.write_text(json.dumps({**json.loads(task_file.read_text()), "last_iteration": 1}))
    edit_args(cache, task_id, max_steps="2")
    output = simulate(clearml_home, "rerun", "steps/train.py", task_id=task_id).stdout
    assert "continuing from it" in output
    [agent_output_dir] = re.findall(r"Adapter in (\S+)/adapter\.", output)
    assert Path(agent_output_dir) != tmp_path  # the --output-dir of the machine that created the task means nothing here
    training = json.loads((Path(agent_output_dir) / "training.json").read_text())
    assert training["resumed_from"] and [entry["step"] for entry in training["history"]] == [1, 2]
    events = [e for batch in (json.loads(line) for line in (task_file.parent / "metrics.jsonl").read_text().splitlines()) for e in batch]
    train_loss_steps = sorted(e["iter"] for e in events if (e["metric"], e["variant"]) == ("loss", "train"))
    assert train_loss_steps == [1, 2]


def test_the_optimizer_reads_lists_edited_in_the_ui(clearml_home):
    """The UI shows a list argument as ``[4, 8, 16, 32]``; a user edits it in that format."""
    launched = simulate(clearml_home, "launch", "pipelines/run_hpo.py", "--run-on", "services", "--lora-ranks", "4,8,16",
                        "--trials", "5").stdout
    [(task_id, queue)] = enqueued(launched)
    assert queue == "services"
    cache = Path(clearml_home["CLEARML_CACHE_DIR"])
    args = json.loads(offline_task_file(cache, task_id).read_text())["hyperparams"]["Args"]
    assert args["lora_ranks"]["value"] == "4,8,16"
    edit_args(cache, task_id, lora_ranks="[4, 8]", prompt_lengths="[20]")
    rerun = simulate(clearml_home, "rerun", "pipelines/run_hpo.py", "pipelines.hpo_server:run_server_sweep", task_id=task_id)
    [call] = lines_with("CALL=", rerun.stdout)
    task, args, space = call["args"]
    assert space == {"lora_rank": [4, 8], "prompt_length": [20]}
    assert (args["trials"], args["run_on"]) == (5, "services")
