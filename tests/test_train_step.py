"""``steps/train.py`` in forked runs (``step_runs``) on the tiny model: every option reaching the training loop and the
adapter, the seed's initialisation, the outputs and what its task holds, resuming, and each refusal."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from clearml.utilities.pyhocon import ConfigFactory
from conftest import ASCII_LOCALE
from forked import run_main
from safetensors.torch import load_file
from step_runs import arguments, artifacts, make_task, model_package, run_step, scalars, task_record
from tolerances import LOSS_RTOL

from components.lora import LoRALayer
from components.modeling import apply_adapter_settings, load_base_model, parameter_stats
from components.settings import AdapterSettings
from components.training import TrainConfig
from steps import preprocess, train
from tests.clearml_server.process import ServerProcess
from tests.e2e.server_api import ServerApi

ADAPTER = {"lora_rank": 3, "lora_alpha": 5.0, "lora_dropout": 0.1, "prompt_length": 4}  # each away from its default
TRAINING = {
    "batch_size": 3,
    "grad_accum_steps": 2,
    "learning_rate": 0.002,
    "weight_decay": 0.5,
    "epochs": 2.0,
    "max_steps": 3,
    "warmup_ratio": 0.25,
    "gradient_checkpointing": False,
    "precision": "fp32",
    "seed": 7,
    "group_by_length": False,
    "eval_every": 2,
    "best_metric": "validation_chrf",
    "early_stopping_patience": 5,
    "generation_eval_samples": 2,
}


def flags(values: dict) -> list[str]:
    return [
        part
        for name, value in values.items()
        for part in (f"--{name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value))
    ]


@pytest.fixture(scope="module")
def tokenized(clearml_home, tmp_path_factory) -> Path:
    """The preprocess step's output for 30 train and 6 validation rows of data/sample (short, for speed)."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("tokenized")
    rows = pd.read_csv("data/sample/train.tsv", sep="\t", dtype=str, keep_default_na=False)
    for name, part in (("train", rows.iloc[:30]), ("validation", rows.iloc[30:36]), ("test", rows.iloc[36:40])):
        part.to_csv(folder / f"{name}.tsv", sep="\t", index=False)
    completed, _ = run_step(
        preprocess.main,
        [
            "--local",
            "--splits-dir",
            str(folder),
            "--model",
            "tiny",
            "--max-input-length",
            "16",
            "--max-target-length",
            "8",
            "--output-dir",
            str(folder / "out"),
        ],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    return folder / "out" / "tokenized"


def run_train(argv: list[str], env: dict, out: Path):
    return run_step(train.main, ["--local", "--model", "tiny", *argv, "--output-dir", str(out)], env)


def test_every_option_reaches_the_training_and_the_adapter(tokenized, clearml_home, tmp_path):
    out = tmp_path / "out"
    completed, result = run_train(["--data-dir", str(tokenized), *flags(ADAPTER), *flags(TRAINING)], clearml_home, out)
    assert completed.returncode == 0, completed.stderr
    summary = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert summary["training"] == asdict(TrainConfig(**TRAINING))
    assert summary["adapter"] == {**ADAPTER, "lora_targets": ["q", "v"]}
    # The input length the data was cut at (the tokenized fixture's --max-input-length 16), for evaluation and the export.
    assert json.loads((out / "adapter" / "adapter_config.json").read_text(encoding="utf-8")) == {
        "base_model": "tiny",
        **summary["adapter"],
        "max_input_length": 16,
    }
    assert (summary["model"], summary["ranks"], summary["resumed_from"]) == ("tiny", 1, None)
    model = apply_adapter_settings(load_base_model("tiny"), AdapterSettings(**ADAPTER))
    assert summary["parameters"] == parameter_stats(model)
    assert (summary["steps"], summary["total_steps"], summary["best_metric"], summary["precision"]) == (3, 3, "validation_chrf", "fp32")
    assert [entry["step"] for entry in summary["history"]] == [2, 3]

    outputs = result["outputs"]
    best = summary["best_step"]
    assert outputs == {
        "adapter_dir": str(out / "adapter"),
        "model_id": None,
        "steps": 3,
        "best_metric": "validation_chrf",
        "best_value": summary["best_value"],
        "best_step": best,
        "stopped_early": False,
        "initial_validation_loss": summary["initial_validation_loss"],
    }
    best_entry = next(entry for entry in summary["history"] if entry["step"] == best)
    assert best_entry["validation_chrf"] == summary["best_value"] == max(entry["validation_chrf"] for entry in summary["history"])
    assert (out / "adapter" / "adapter.safetensors").read_bytes() == (out / "checkpoints" / "best" / "adapter.safetensors").read_bytes()

    stats = summary["parameters"]
    lines = completed.stdout.splitlines()
    assert f"Parameters: {stats['total']:,} total, {stats['trainable']:,} trainable ({stats['trainable_percent']:.2f}%)." in lines
    assert (
        f"Trained 3 of 3 steps; best validation_chrf {summary['best_value']:.4f} at step {best} (validation loss untuned: "
        f"{summary['initial_validation_loss']:.4f}). Adapter in {out / 'adapter'}."
    ) in lines

    assert (task_record(result)["name"], task_record(result)["type"]) == ("train", "training")
    assert arguments(result)["lora_rank"] == "3" and arguments(result)["best_metric"] == "validation_chrf"
    uploaded = artifacts(result["task_id"], clearml_home, tmp_path)
    assert sorted(uploaded) == ["adapter", "checkpoint", "training"]
    assert (uploaded["adapter"] / "adapter.safetensors").read_bytes() == (out / "adapter" / "adapter.safetensors").read_bytes()
    assert json.loads(uploaded["training"].read_text(encoding="utf-8")) == summary
    reported = scalars(Path(result["offline_session"]).with_suffix(""))
    assert reported[("loss", "validation")][0] == (0, pytest.approx(summary["initial_validation_loss"]))


def test_with_a_zero_learning_rate_the_adapter_is_the_seeds_initialisation(tokenized, clearml_home, tmp_path):
    """The seed draws LoRA's A (before any training): recomputed here with the same seed."""
    out = tmp_path / "out"
    completed, result = run_train(
        [
            "--data-dir",
            str(tokenized),
            "--lora-rank",
            "2",
            "--prompt-length",
            "2",
            "--learning-rate",
            "0",
            "--weight-decay",
            "0",
            "--max-steps",
            "1",
            "--seed",
            "13",
        ],
        clearml_home,
        out,
    )
    assert completed.returncode == 0, completed.stderr
    torch.manual_seed(13)
    model = apply_adapter_settings(load_base_model("tiny"), AdapterSettings(lora_rank=2, prompt_length=2))
    expected = {name: parameter.detach() for name, parameter in model.named_parameters() if parameter.requires_grad}
    saved = load_file(str(out / "adapter" / "adapter.safetensors"))
    assert saved.keys() == expected.keys() and all(torch.equal(saved[name], expected[name]) for name in saved)
    assert any(layer.lora_A.abs().sum() > 0 for layer in model.modules() if isinstance(layer, LoRALayer))
    summary = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert (summary["training"]["seed"], summary["training"]["learning_rate"]) == (13, 0.0)
    # Nothing moved, so the evaluation after the step is the untuned one: the same computation, the same number.
    assert summary["history"][0]["validation_loss"] == summary["initial_validation_loss"]


def test_early_stopping_is_said_in_the_last_line(tokenized, clearml_home, tmp_path):
    """With a learning rate that makes validation worse at once, patience 1 stops after the second evaluation."""
    out = tmp_path / "out"
    completed, result = run_train(
        [
            "--data-dir",
            str(tokenized),
            "--learning-rate",
            "0.5",
            "--max-steps",
            "6",
            "--eval-every",
            "1",
            "--early-stopping-patience",
            "1",
            "--grad-accum-steps",
            "1",
            "--batch-size",
            "4",
        ],
        clearml_home,
        out,
    )
    assert completed.returncode == 0, completed.stderr
    outputs = result["outputs"]
    assert outputs["stopped_early"] is True and outputs["steps"] < 6
    assert f"Trained {outputs['steps']} of 6 steps (stopped early); best validation_loss" in completed.stdout


def test_resuming_continues_the_checkpoint_of_the_output_folder_or_of_another_task(tokenized, clearml_home, tmp_path):
    first = tmp_path / "first"
    base = ["--data-dir", str(tokenized), "--max-steps", "4", "--eval-every", "2", "--grad-accum-steps", "1", "--batch-size", "4"]
    completed, interrupted = run_train([*base[:3], "2", *base[4:]], clearml_home, first)
    assert completed.returncode == 0, completed.stderr
    completed, resumed = run_train([*base, "--resume"], clearml_home, first)
    assert completed.returncode == 0, completed.stderr
    assert resumed["outputs"]["steps"] == 4
    assert json.loads((first / "training.json").read_text(encoding="utf-8"))["resumed_from"] == str(first / "checkpoints" / "last")
    # Continued, not started again (which, seeded, would end the same): the resumed task trained steps 3 and 4 only.
    assert [step for step, _ in scalars(Path(resumed["offline_session"]).with_suffix(""))[("loss", "train")]] == [3, 4]

    completed, from_task = run_train([*base, "--resume-from-task-id", interrupted["task_id"]], clearml_home, tmp_path / "second")
    assert completed.returncode == 0, completed.stderr
    assert [step for step, _ in scalars(Path(from_task["offline_session"]).with_suffix(""))[("loss", "train")]] == [3, 4]
    summary = json.loads((tmp_path / "second" / "training.json").read_text(encoding="utf-8"))
    assert summary["resumed_from"] is not None and summary["resumed_from"] != str(first / "checkpoints" / "last")
    assert (tmp_path / "second" / "adapter" / "adapter.safetensors").read_bytes() == (first / "adapter" / "adapter.safetensors").read_bytes()


def test_a_task_that_already_holds_a_checkpoint_continues_from_it_before_any_option(tokenized, clearml_home, tmp_path):
    """As an agent re-running an aborted train task finds it: the task's own artifact wins over --resume-from-task-id, which
    wins over --resume (a task of its own without a checkpoint gets the other task's)."""
    checkpoint = tmp_path / "own-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text('{"step": 2}', encoding="utf-8")
    other = tmp_path / "other-checkpoint"
    other.mkdir()
    (other / "state.json").write_text('{"step": 5}', encoding="utf-8")
    own_id, other_id = (make_task("train", {"checkpoint": folder}, clearml_home, tmp_path) for folder in (checkpoint, other))
    fresh_id = make_task("train", {}, clearml_home, tmp_path)
    found = tmp_path / "found.json"

    def resume(_argv) -> None:
        from clearml import Task

        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(True)
        args = train.build_parser().parse_args(["--resume-from-task-id", other_id, "--resume", "--output-dir", str(tmp_path / "none")])
        args.output_dir = Path(args.output_dir)
        chosen = [train.checkpoint_to_resume(args, Task.get_task(task_id=task_id)) for task_id in (own_id, fresh_id)]
        found.write_text(json.dumps([(path / "state.json").read_text(encoding="utf-8") for path in chosen]), encoding="utf-8")

    completed = run_main(resume, [], clearml_home)
    assert completed.returncode == 0, completed.stderr
    assert json.loads(found.read_text(encoding="utf-8")) == ['{"step": 2}', '{"step": 5}']
    assert completed.stdout.splitlines().count("This task already holds a checkpoint (it was aborted or preempted before): continuing from it.") == 1


def test_a_checkpoint_uploaded_again_is_downloaded_again(clearml_home, tmp_path):
    """On a server a checkpoint uploaded again keeps its URL (every evaluation replaces the last), so ClearML's cache would
    hand back the first one it downloaded: the step's own task (an agent's rerun) and --resume-from-task-id both read the
    newest."""
    folders = [tmp_path / str(step) / "checkpoints" / "last" for step in (2, 4)]  # the folder the training uploads
    for step, folder in zip((2, 4), folders):
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"step": step}), encoding="utf-8")
    seen = tmp_path / "seen.json"

    def resume_twice(_argv) -> None:
        from clearml import Task

        from clearml_adapter import tracking
        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(False)
        holder, fresh = (Task.create(project_name=tracking.CLEARML_PROJECT, task_name=name, task_type="training") for name in ("train", "rerun"))
        own = train.build_parser().parse_args([])
        other = train.build_parser().parse_args(["--resume-from-task-id", holder.id])
        states = []
        for folder in folders:
            tracking.upload_path(holder, train.CHECKPOINT_ARTIFACT, folder)
            holder.reload()
            for args, task in ((own, holder), (other, fresh)):
                states.append(json.loads((train.checkpoint_to_resume(args, task) / "state.json").read_text(encoding="utf-8"))["step"])
        seen.write_text(json.dumps(states), encoding="utf-8")

    with ServerProcess(tmp_path / "state") as server:  # not in this process: the test forks
        completed = run_main(resume_twice, [], {**clearml_home, **server.environment()})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(seen.read_text(encoding="utf-8")) == [2, 2, 4, 4]


TORCHRUN_RANK_0 = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    "argv, environment, sentence",
    [
        (["--lora-rank", "0"], {}, "--lora-rank must be at least 1 and --prompt-length at least 0 (0: LoRA only); got 0 and 20."),
        (["--prompt-length", "-1"], {}, "--lora-rank must be at least 1 and --prompt-length at least 0 (0: LoRA only); got 8 and -1."),
        (["--nproc-per-node", "0"], {}, "--nproc-per-node must be at least 1, got 0."),
        (["--nodes", "0"], {}, "--nodes must be at least 1, got 0."),
        (
            ["--nodes", "2"],
            {},
            "--nodes 2 trains on ClearML agents: create the train task, set Args/nodes to 2 and enqueue it on a queue that many "
            "agents serve (docs/distributed.md).",
        ),
        (
            ["--nproc-per-node", "2"],
            TORCHRUN_RANK_0,
            "This process is already rank 0 of 2 (torchrun started it); leave --nproc-per-node at 1 and give torchrun --nproc-per-node instead.",
        ),
        (["--nodes", "2"], TORCHRUN_RANK_0, "--nodes starts ClearML agents' machines; under torchrun give torchrun --nnodes instead."),
        (
            [],
            {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
            "WORLD_SIZE is 2 but MASTER_ADDR, MASTER_PORT is not set; start the ranks with torchrun or the train step's --nproc-per-node.",
        ),
        (
            ["--resume"],
            {},
            "--resume: no checkpoint in OUT/checkpoints; run without --resume to start, or point --output-dir at the interrupted run.",
        ),
        (
            ["--data-dir", "data/sample"],
            {},
            "data/sample holds no tokenization.json; --data-dir must be the tokenized folder written by the preprocess step.",
        ),
        ([], {}, "Give --preprocess-task-id (a ClearML task id) or --data-dir (a folder of tokenized splits)."),
    ],
)
def test_each_wrong_setting_is_one_sentence_before_any_training(argv, environment, sentence, clearml_home, tmp_path):
    out = tmp_path / "out"
    completed, result = run_train(argv, {**clearml_home, **environment}, out)
    assert (completed.returncode, completed.stderr.splitlines()[-1], result) == (1, "error: " + sentence.replace("OUT", str(out)), None)


def test_the_smallest_adapter_is_accepted():
    """The refusals above stop at their bounds: rank 1 without a prompt (LoRA only) is an adapter."""
    args = argparse.Namespace(lora_rank=1, lora_alpha=2.0, lora_dropout=0.0, prompt_length=0)
    assert train.adapter_settings(args) == AdapterSettings(lora_rank=1, lora_alpha=2.0, lora_dropout=0.0, prompt_length=0)


def test_the_tokenization_summary_is_read_as_utf_8_whatever_the_locale(tokenized, clearml_home, tmp_path):
    """A model folder with a Russian name, as the preprocess step writes it (UTF-8), read under a locale that is not."""
    data = Path(shutil.copytree(tokenized, tmp_path / "data"))
    summary = data / train.TOKENIZATION_FILE
    summary.write_text(json.dumps({**json.loads(summary.read_text(encoding="utf-8")), "model": "модель"}, ensure_ascii=False), encoding="utf-8")

    def rows(_argv) -> None:
        train_split, validation_split, max_input_length = train.load_splits(data, "модель")
        print(train_split.num_rows, validation_split.num_rows, max_input_length)

    completed = run_main(rows, [], {**clearml_home, **ASCII_LOCALE})
    cut_at = json.loads(summary.read_text(encoding="utf-8"))["max_input_length"]
    assert (completed.returncode, completed.stdout.split()) == (0, ["30", "6", str(cut_at)]), completed.stderr[-3000:]


def test_data_tokenized_for_another_model_is_refused(tokenized, clearml_home, tmp_path):
    completed, _ = run_step(
        train.main, ["--local", "--data-dir", str(tokenized), "--model", "some/other-model", "--output-dir", str(tmp_path)], clearml_home
    )
    assert completed.stderr.splitlines()[-1] == (
        "error: The data was tokenized for 'tiny' but --model is 'some/other-model'; preprocess with the same --model."
    )


def test_two_ranks_get_the_fetched_data_and_train_as_one_run(tokenized, clearml_home, tmp_path):
    """--nproc-per-node 2 with the data from a preprocess task: the other rank gets the folder this process fetched."""
    preprocess_id = make_task("preprocess", {"tokenized": tokenized}, clearml_home, tmp_path)
    completed, result = run_train(
        ["--preprocess-task-id", preprocess_id, "--nproc-per-node", "2", "--max-steps", "1", "--batch-size", "2", "--grad-accum-steps", "1"],
        clearml_home,
        tmp_path / "out",
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads((tmp_path / "out" / "training.json").read_text(encoding="utf-8"))
    assert (summary["ranks"], summary["steps"]) == (2, 1)
    assert "; 2 ranks." in completed.stdout
    # The untuned validation loss is the whole split's, as one rank computes it, not rank 0's half (batched otherwise: LOSS_RTOL).
    completed, _ = run_train(
        ["--data-dir", str(tokenized), "--max-steps", "1", "--batch-size", "2", "--grad-accum-steps", "1"], clearml_home, tmp_path / "one"
    )
    assert completed.returncode == 0, completed.stderr
    one_rank = json.loads((tmp_path / "one" / "training.json").read_text(encoding="utf-8"))
    assert summary["initial_validation_loss"] == pytest.approx(one_rank["initial_validation_loss"], rel=LOSS_RTOL)


def test_on_a_server_the_adapter_is_a_model_named_and_tagged_by_its_settings(tokenized, clearml_home, tmp_path):
    with ServerProcess(tmp_path / "state") as server:  # not in this process: the test forks
        env = {**clearml_home, **server.environment()}
        completed, result = run_step(
            train.main,
            [
                "--model",
                "tiny",
                "--data-dir",
                str(tokenized),
                "--lora-rank",
                "2",
                "--prompt-length",
                "3",
                "--max-steps",
                "1",
                "--output-dir",
                str(tmp_path / "out"),
            ],
            env,
        )
        assert completed.returncode == 0, completed.stderr
        api = ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
        model = api.call("models.get_by_id", model=result["outputs"]["model_id"])["model"]
        package = model_package(model["uri"])
    assert package == {path.name: path.read_bytes() for path in (tmp_path / "out" / "adapter").iterdir()}  # the adapter, file by file
    summary = json.loads((tmp_path / "out" / "training.json").read_text(encoding="utf-8"))
    assert (model["name"], model["tags"], model["task"]) == (
        "ruT5 LoRA r2 + prompt 3",
        ["adapter", "lora_rank=2", "prompt_length=3"],
        result["task_id"],
    )
    metadata = {key: entry["value"] for key, entry in model["metadata"].items()}
    assert metadata == {"validation_loss": str(summary["best_value"]), "best_step": str(summary["best_step"])}
    design = ConfigFactory.parse_string(model["design"]["design"]).as_plain_ordered_dict()  # the SDK's text of config_dict
    assert dict(design) == {**summary["adapter"], **summary["training"], "base_model": "tiny"}


@pytest.mark.parametrize("local_rank", [None, "1"])
def test_on_an_agent_nodes_asks_clearml_for_the_machines_and_takes_this_ones_node_rank(local_rank, clearml_home, tmp_path):
    """--nodes 2 --nproc-per-node 3 as the clone for the second machine runs it: ClearML's ``launch_multi_node`` (its real
    signature, ``create_autospec``) is asked for 2 nodes of 3 devices and to wait for them; the answer is the clone's
    configuration. ``LOCAL_RANK`` defaults to 0 (this process is its machine's first rank) and a given one is kept.
    The whole path, on two simulated agents, is ``tests/e2e/test_ranks.py``; this is the step's part, fast enough for mutmut.
    In a fork: once a test process has imported ClearML, the steps it forks later were seen hanging in its git detection."""
    joined = tmp_path / "joined.json"

    def join(_argv) -> None:
        from unittest.mock import create_autospec

        from clearml import Task

        train.running_on_agent = lambda: True
        task = create_autospec(Task, instance=True)
        task.launch_multi_node.return_value = {"master_addr": "10.0.0.5", "master_port": 29511, "node_rank": 1, "wait": True, "devices": 3}
        node_rank = train.join_nodes(train.build_parser().parse_args(["--nodes", "2", "--nproc-per-node", "3"]), task)
        task.launch_multi_node.assert_called_once_with(2, wait=True, devices=3)
        joined.write_text(json.dumps([node_rank, os.environ["LOCAL_RANK"]]), encoding="utf-8")

    completed = run_main(join, [], {**clearml_home, **({} if local_rank is None else {"LOCAL_RANK": local_rank})})
    assert (completed.returncode, completed.stdout) == (0, "Node 1 of 2; rank 0 at 10.0.0.5:29511.\n"), completed.stderr[-3000:]
    assert json.loads(joined.read_text(encoding="utf-8")) == [1, local_rank or "0"]
