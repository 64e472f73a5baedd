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

from pipelines.definition import PARAMETERS, PRESETS
from pipelines.run_pipeline import build_parser, pipeline_parameters


def lines_with(prefix: str, output: str) -> list:
    return [json.loads(line[len(prefix) :]) for line in output.splitlines() if line.startswith(prefix)]


def enqueued(output: str) -> list[tuple[str, str]]:
    return [tuple(line.split()[1:3]) for line in output.splitlines() if line.startswith("ENQUEUED ")]


def simulate(env: dict, mode: str, *args: str, task_id: str | None = None):
    if task_id:
        env = {**env, "CLEARML_OFFLINE_MODE": "1", "CLEARML_TASK_ID": task_id}
    return run_script(env, "-m", "tests.agent_simulation", mode, *args)


# A value away from the published default for every pipeline parameter: given at the launch (command line)
# or edited in the UI on the stored controller task before the agent's run.
LAUNCHED = {
    "model": "org/other-t5",
    "validation_size": 20,
    "max_input_length": 64,
    "max_target_length": 32,
    "lora_rank": 16,
    "lora_alpha": 32.0,
    "lora_dropout": 0.2,
    "batch_size": 4,
    "grad_accum_steps": 2,
    "learning_rate": 0.001,
    "warmup_ratio": 0.25,
    "weight_decay": 0.1,
    "epochs": 3.0,
    "max_steps": 100,
    "gradient_checkpointing": False,
    "eval_every": 7,
    "early_stopping_patience": 2,
    "nproc_per_node": 4,
    "seed": 7,
    "precision": "fp32",
    "decoding": "beam",
    "max_new_tokens": 9,
    "max_test_samples": 5,
    "compare_base": False,
    "metric": "bleu",
}
EDITED_IN_THE_UI = {"prompt_length": 10, "export": True, "export_ctranslate2": True}  # the launch had no export step: the UI edit adds it
DATA = {"train_tsv": "data/sample/train.tsv", "test_tsv": "data/sample/test.tsv"}  # as agents get them: relative to the repository


def flags(values: dict) -> list[str]:
    return [
        part
        for name, value in values.items()
        for part in (f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value))
    ]


@pytest.fixture(scope="module")
def controller(clearml_home, tmp_path_factory):
    """A pipeline launched with options, its Args then edited in the UI, and the services agent's re-run."""
    launched = simulate(
        clearml_home,
        "launch",
        "pipelines/run_pipeline.py",
        "--gpu-queue",
        "a100",
        "--cpu-queue",
        "cpu2",
        "--controller-queue",
        "svc2",
        *flags(LAUNCHED),
        "--train-tsv",
        str(ROOT / DATA["train_tsv"]),
        "--test-tsv",
        DATA["test_tsv"],
        "--project",
        "MyProj",
        "--pipeline-name",
        "My pipe",
    ).stdout
    [(task_id, queue)] = enqueued(launched)
    cache = Path(clearml_home["CLEARML_CACHE_DIR"])
    stored = {k: v["value"] for k, v in json.loads(offline_task_file(cache, task_id).read_text())["hyperparams"]["Args"].items()}
    edit_args(cache, task_id, **{name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in EDITED_IN_THE_UI.items()})
    rerun = simulate(clearml_home, "rerun", "pipelines/run_pipeline.py", task_id=task_id).stdout
    [dag] = lines_with("DAG=", rerun)
    [built] = lines_with("CONTROLLER=", rerun)
    return {
        "queue": queue,
        "stored": stored,
        "dag": dag["dag"],
        "pipeline": dag["pipeline"],
        "built": built,
        "checked": {"launch": lines_with("QUEUES=", launched), "agent": lines_with("QUEUES=", rerun)},
        "followed": {"launch": lines_with("FOLLOWED=", launched), "agent": lines_with("FOLLOWED=", rerun)},
        "task_id": task_id,
    }


def test_the_launch_is_enqueued_on_the_controller_queue_with_every_option_stored(controller):
    assert controller["queue"] == "svc2"
    # the launch follows the controller it enqueued (--wait-for-start's default); the agent's run enqueues nothing to follow
    assert controller["followed"] == {"launch": [[controller["task_id"], "svc2", 60.0]], "agent": []}
    stored = controller["stored"]
    assert (stored["gpu_queue"], stored["cpu_queue"], stored["project"], stored["pipeline_name"]) == ("a100", "cpu2", "MyProj", "My pipe")
    assert (stored["lora_rank"], stored["max_steps"]) == ("16", "100")


def test_the_launch_checks_every_queue_it_uses_and_the_agent_those_of_the_steps(controller):
    steps = [
        {"name": "cpu2", "kind": "cpu", "option": "--cpu-queue", "purpose": "ingest, preprocess, register"},
        {"name": "a100", "kind": "gpu", "option": "--gpu-queue", "purpose": "train, evaluate"},
    ]
    assert controller["checked"]["launch"] == [
        steps + [{"name": "svc2", "kind": "services", "option": "--controller-queue", "purpose": "the pipeline controller"}]
    ]
    # The controller already runs on its queue; the export step, added in the UI, runs on the cpu queue.
    assert controller["checked"]["agent"] == [[{**steps[0], "purpose": "ingest, preprocess, register, export"}, steps[1]]]


def test_the_agents_controller_uses_the_launch_options(controller):
    dag = controller["dag"]
    assert {name: node["queue"] for name, node in dag.items()} == {
        "ingest": "cpu2",
        "preprocess": "cpu2",
        "train": "a100",
        "evaluate": "a100",
        "register": "cpu2",
        "export": "cpu2",
    }
    assert (dag["export"]["parents"], dag["export"]["parameters"]["Args/register_task_id"]) == (["register"], "${register.id}")
    assert controller["built"] == {"project": "MyProj", "name": "My pipe"}


def test_every_pipeline_parameter_reaches_every_step_it_sets(controller):
    """Each pipeline parameter, set away from its default, is the Args value of each of its steps
    (a parameter added there without a value here fails the first assertion)."""
    values = {**LAUNCHED, **EDITED_IN_THE_UI, **DATA}
    assert set(values) == set(PARAMETERS)
    published = pipeline_parameters(PRESETS["published"], build_parser().parse_args([]))
    assert all(published[name] != value for name, value in values.items()), "a value above is the published default"
    dag = controller["dag"]
    got = {(step, name): dag[step]["parameters"][f"Args/{argument}"] for name in PARAMETERS for step, argument in PARAMETERS[name].arguments.items()}
    assert got == {(step, name): values[name] for name in PARAMETERS for step in PARAMETERS[name].arguments}


def test_the_controller_can_run_in_the_launching_shell(clearml_home):
    """--controller-here: nothing is enqueued, the controller's queue is not checked, and it builds the DAG right here."""
    launched = simulate(clearml_home, "launch", "pipelines/run_pipeline.py", "--controller-here", "--max-steps", "3").stdout
    assert enqueued(launched) == []
    assert [use["option"] for use in lines_with("QUEUES=", launched)[0]] == ["--cpu-queue", "--gpu-queue"]
    [dag] = lines_with("DAG=", launched)
    assert dag["dag"]["train"]["parameters"]["Args/max_steps"] == 3


def test_a_ui_edit_of_the_controller_reaches_the_steps(controller):
    assert controller["dag"]["train"]["parameters"]["Args/prompt_length"] == 10


def test_data_paths_reach_agents_relative_to_the_repository(controller):
    ingest = controller["dag"]["ingest"]["parameters"]
    assert (ingest["Args/train_tsv"], ingest["Args/test_tsv"]) == (DATA["train_tsv"], DATA["test_tsv"])


def test_a_rerun_train_task_resumes_and_reports_at_its_own_steps(tiny_pipeline, clearml_home, tmp_path):
    """An agent re-running an interrupted train task: it continues from its own checkpoint, and its
    scalars land on the optimizer steps they belong to (not shifted by the task's last iteration)."""
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    run_script(
        clearml_home,
        "steps/train.py",
        "--local",
        "--preprocess-task-id",
        summary["task_ids"]["preprocess"],
        "--model",
        "tiny",
        "--max-steps",
        "1",
        "--eval-every",
        "1",
        "--output-dir",
        str(tmp_path),
    )
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
    launched = simulate(clearml_home, "launch", "pipelines/run_hpo.py", "--run-on", "services", "--lora-ranks", "4,8,16", "--trials", "5").stdout
    [(task_id, queue)] = enqueued(launched)
    assert queue == "services"
    cache = Path(clearml_home["CLEARML_CACHE_DIR"])
    args = json.loads(offline_task_file(cache, task_id).read_text())["hyperparams"]["Args"]
    assert args["lora_ranks"]["value"] == "4,8,16"
    edit_args(cache, task_id, lora_ranks="[4, 8]", prompt_lengths="[20]")
    rerun = simulate(clearml_home, "rerun", "pipelines/run_hpo.py", "pipelines.sweep.server:run_server_sweep", task_id=task_id)
    [call] = lines_with("CALL=", rerun.stdout)
    task, args, space = call["args"]
    assert space == {"lora_rank": [4, 8], "prompt_length": [20]}
    assert (args["trials"], args["run_on"]) == (5, "services")
