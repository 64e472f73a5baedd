"""``steps/evaluate.py`` in forked runs (``step_runs``) on a random adapter of the tiny model: what it hands generation
and the test loss for the tuned model and the untuned base, the scores it records against the metric computed here,
its files, artifacts and ClearML scalars, where its inputs come from, and each refusal."""

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import random_adapter
from step_runs import artifacts, make_task, run_step, scalars, task_record

from components.comparison import comparison_table
from components.lora import LoRALayer
from components.metrics import compute_metrics
from components.modeling import load_finetuned
from components.settings import AdapterSettings
from steps import evaluate as evaluate_step

TRAINED_INPUT_LENGTH = 13
TEST_ROWS = 24  # the first rows of data/sample/test.tsv scored by --max-samples: more than the 20 rows of the samples table
OPTIONS = [
    "--max-samples",
    str(TEST_ROWS),
    "--batch-size",
    "5",
    "--max-input-length",
    "9",
    "--max-target-length",
    "6",
    "--max-new-tokens",
    "3",
    "--seed",
    "11",
]  # each away from its default


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """An adapter folder trained, as its adapter_config.json records, at another input length than the default."""
    folder = random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"), AdapterSettings(lora_rank=2, prompt_length=3))
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    (folder / "adapter_config.json").write_text(json.dumps({**config, "max_input_length": TRAINED_INPUT_LENGTH}), encoding="utf-8")
    return folder


def recording_main(record: Path):
    """The step's ``main`` with what it passes to generation, the test loss's batches and the loss recorded in ``record``."""
    calls = []

    def tuned(model) -> bool:
        return any(layer.lora_B.abs().sum() > 0 for layer in model.modules() if isinstance(layer, LoRALayer))

    def generate_predictions(model, tokenizer, sources, **options):
        calls.append({"call": "generate", "tuned": tuned(model), "sources": sources, "threads": torch.get_num_threads(), **options})
        return real["generate_predictions"](model, tokenizer, sources, **options)

    def evaluation_loader(model, tokenizer, rows, batch_size):
        calls.append(
            {
                "call": "loader",
                "tuned": tuned(model),
                "rows": len(rows),
                "labels": [len(ids) for ids in rows["labels"]],
                "inputs": [len(ids) for ids in rows["input_ids"]],
                "batch_size": batch_size,
            }
        )
        return real["evaluation_loader"](model, tokenizer, rows, batch_size)

    def validation_loss(model, loader, precision):
        calls.append({"call": "loss", "tuned": tuned(model), "precision": precision})
        return real["validation_loss"](model, loader, precision)

    real = {name: getattr(evaluate_step, name) for name in ("generate_predictions", "evaluation_loader", "validation_loss")}

    def main(argv):
        for name, wrapper in (
            ("generate_predictions", generate_predictions),
            ("evaluation_loader", evaluation_loader),
            ("validation_loss", validation_loss),
        ):
            setattr(evaluate_step, name, wrapper)
        try:
            evaluate_step.main(argv)
        finally:
            record.write_text(json.dumps(calls, ensure_ascii=False), encoding="utf-8")

    return main


def test_the_tuned_model_and_the_base_are_scored_on_the_rows_and_options_asked_for(adapter, clearml_home, tmp_path):
    out, record = tmp_path / "out", tmp_path / "calls.json"
    completed, result = run_step(
        recording_main(record),
        [
            "--local",
            "--model-dir",
            str(adapter),
            "--test-tsv",
            "data/sample/test.tsv",
            *OPTIONS,
            "--decoding",
            "sampling",
            "--top-k",
            "7",
            "--output-dir",
            str(out),
        ],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    rows = pd.read_csv("data/sample/test.tsv", sep="\t", dtype=str, keep_default_na=False).head(TEST_ROWS)
    sources = [f"{i.strip()}\n{x.strip()}" if x.strip() else i.strip() for i, x in zip(rows["instruction"], rows["input"])]
    decoding = {"num_beams": 1, "do_sample": True, "temperature": 0.7, "top_k": 7, "top_p": 0.95, "max_new_tokens": 3}
    generation = {"sources": sources, "batch_size": 5, "max_input_length": 9, "seed": 11, "show_progress": True, "threads": 1, **decoding}
    calls = json.loads(record.read_text(encoding="utf-8"))
    tokenizer = load_finetuned(adapter)[1]
    labels, inputs = (
        [len(ids) for ids in tokenizer(**{key: texts})["input_ids"]] for key, texts in (("text_target", rows["output"].tolist()), ("text", sources))
    )
    assert max(labels) > 6 and max(inputs) > 9  # both lengths cut some rows
    loader = {"call": "loader", "rows": TEST_ROWS, "labels": [min(n, 6) for n in labels], "inputs": [min(n, 9) for n in inputs], "batch_size": 5}
    assert calls == [
        {"call": "generate", "tuned": True, **generation},
        {**loader, "tuned": True},
        {"call": "loss", "tuned": True, "precision": "fp32"},
        {"call": "generate", "tuned": False, **generation},
        {**loader, "tuned": False},
        {"call": "loss", "tuned": False, "precision": "fp32"},
    ]

    predictions = pd.read_csv(out / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(predictions.columns) == ["instruction", "input", "output", "prediction", "base_prediction"]
    assert predictions[["instruction", "input", "output"]].to_dict("records") == rows[["instruction", "input", "output"]].to_dict("records")
    evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    references = rows["output"].tolist()
    for key, column in (("metrics", "prediction"), ("base_metrics", "base_prediction")):
        expected = compute_metrics(predictions[column].tolist(), references)
        assert {name: evaluation[key][name] for name in expected} == pytest.approx(expected, abs=1e-12)
        assert set(evaluation[key]) == {*expected, "loss"} and evaluation[key]["loss"] > 0
    assert evaluation["difference"] == {name: evaluation["metrics"][name] - evaluation["base_metrics"][name] for name in evaluation["metrics"]}
    assert evaluation["decoding"] == {
        "preset": "sampling",
        **decoding,
        "description": "sampling (temperature=0.7, top_k=7, top_p=0.95), at most 3 new tokens",
    }
    assert (evaluation["rows"], evaluation["train_task_id"], evaluation["model_dir"]) == (TEST_ROWS, None, str(adapter))
    assert (evaluation["max_input_length"], evaluation["adapter_sha256"]) == (
        9,
        hashlib.sha256((adapter / "adapter.safetensors").read_bytes()).hexdigest(),
    )
    assert "Inputs are cut at 9 tokens." in completed.stdout.splitlines()
    assert result["outputs"] == evaluation

    lines = completed.stdout.splitlines()
    assert f"Evaluating on {TEST_ROWS} test rows with {evaluation['decoding']['description']}." in lines
    assert "The untuned base (adapters at their initial values) on the same rows:" in lines
    assert comparison_table(evaluation["metrics"], evaluation["base_metrics"]) in completed.stdout

    assert (task_record(result)["name"], task_record(result)["type"]) == ("evaluate", "testing")
    uploaded = artifacts(result["task_id"], clearml_home, tmp_path)
    assert sorted(uploaded) == ["evaluation", "predictions"]
    assert uploaded["predictions"].read_bytes() == (out / "predictions.tsv").read_bytes()
    reported = scalars(Path(result["offline_session"]).with_suffix(""))
    assert reported[("loss", "test")] == [(0, pytest.approx(evaluation["metrics"]["loss"]))]
    assert reported[("loss", "base")] == [(0, pytest.approx(evaluation["base_metrics"]["loss"]))]
    [table] = [event for event in session_events(result) if event.get("type") == "plot" and event.get("metric") == "predictions"]
    assert len(json.loads(table["plot_str"])["data"][0]["cells"]["values"][0]) == 20  # the samples: the first 20 rows


def session_events(result: dict) -> list[dict]:
    lines = (Path(result["offline_session"]).with_suffix("") / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [event for line in lines if line.strip() for event in json.loads(line)]


def test_task_ids_come_before_paths_and_without_a_base_nothing_of_it_is_computed(adapter, clearml_home, tmp_path):
    """The train and ingest tasks' artifacts are used when paths are given too (paths to nothing here); every test row
    with --max-samples 0; with --compare-base false no base pass, column or figures."""
    test_rows = pd.read_csv("data/sample/test.tsv", sep="\t", dtype=str, keep_default_na=False).iloc[30:36]
    test_rows.to_csv(tmp_path / "test.tsv", sep="\t", index=False)
    train_id, ingest_id = (
        make_task(name, {artifact: path}, clearml_home, tmp_path)
        for name, artifact, path in (("train", "adapter", adapter), ("ingest", "test", tmp_path / "test.tsv"))
    )
    out, record = tmp_path / "out", tmp_path / "calls.json"
    completed, result = run_step(
        recording_main(record),
        [
            "--local",
            "--train-task-id",
            train_id,
            "--model-dir",
            "/nonexistent",
            "--ingest-task-id",
            ingest_id,
            "--test-tsv",
            "/nonexistent.tsv",
            "--max-samples",
            "0",
            "--max-new-tokens",
            "2",
            "--compare-base",
            "false",
            "--output-dir",
            str(out),
        ],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    calls = json.loads(record.read_text(encoding="utf-8"))
    assert [(call["call"], call["tuned"]) for call in calls] == [("generate", True), ("loader", True), ("loss", True)]
    assert len(calls[0]["sources"]) == 6 and calls[0]["sources"][0].startswith(test_rows["instruction"].iloc[0].strip())
    assert (calls[0]["batch_size"], calls[0]["max_input_length"], calls[0]["seed"], calls[2]["precision"]) == (
        16,
        TRAINED_INPUT_LENGTH,
        0,
        "fp32",
    )  # the defaults; the input length the adapter records
    assert (calls[0]["num_beams"], calls[0]["do_sample"]) == (1, False)  # the greedy preset
    evaluation = result["outputs"]
    assert (evaluation["base_metrics"], evaluation["difference"], evaluation["rows"], evaluation["max_input_length"]) == (
        None,
        None,
        6,
        TRAINED_INPUT_LENGTH,
    )
    assert (evaluation["train_task_id"], evaluation["model_dir"]) == (train_id, None)
    assert evaluation["decoding"]["preset"] == "greedy"
    assert list(pd.read_csv(out / "predictions.tsv", sep="\t").columns) == ["instruction", "input", "output", "prediction"]
    assert "The untuned base" not in completed.stdout
    assert not any(series == "base" for _, series in scalars(Path(result["offline_session"]).with_suffix("")))


@pytest.mark.parametrize(
    "argv, sentence",
    [
        (["--model-dir", "ADAPTER"], "error: Give --ingest-task-id (a ClearML task id) or --test-tsv (a test TSV file)."),
        (["--test-tsv", "data/sample/test.tsv"], "error: Give --train-task-id (a ClearML task id) or --model-dir (an adapter directory)."),
    ],
)
def test_a_missing_input_names_the_two_options_that_give_it(argv, sentence, adapter, clearml_home, tmp_path):
    argv = [str(adapter) if value == "ADAPTER" else value for value in argv]
    completed, result = run_step(evaluate_step.main, ["--local", *argv, "--output-dir", str(tmp_path)], clearml_home)
    assert (completed.returncode, completed.stderr.splitlines()[-1], result) == (1, sentence, None)


def test_on_a_machine_with_a_gpu_both_models_are_moved_to_it(adapter, clearml_home, tmp_path):
    """``torch.cuda.is_available()`` made true and ``Module.to`` recorded (the models stay on this CPU)."""
    record = tmp_path / "devices.json"

    def main(argv):
        moves = []
        real_to = torch.nn.Module.to

        def to(module, *args, **kwargs):
            if isinstance(module, torch.nn.Module) and module.__class__.__name__.startswith("T5"):
                moves.append(str(args[0]) if args else str(kwargs))
                return module
            return real_to(module, *args, **kwargs)

        torch.cuda.is_available = lambda: True
        torch.nn.Module.to = to
        try:
            evaluate_step.main(argv)
        finally:
            record.write_text(json.dumps(moves), encoding="utf-8")

    completed, _ = run_step(
        main,
        [
            "--local",
            "--model-dir",
            str(adapter),
            "--test-tsv",
            "data/sample/test.tsv",
            "--max-samples",
            "2",
            "--max-new-tokens",
            "1",
            "--output-dir",
            str(tmp_path / "out"),
        ],
        clearml_home,
    )
    assert (completed.returncode, json.loads(record.read_text(encoding="utf-8"))) == (0, ["cuda", "cuda"]), completed.stderr[-2000:]
