"""Each step script on its own, as a user or an agent runs it, with local paths or task ids."""

import json
from pathlib import Path

import pytest
from conftest import run_script

SAMPLE = ["--train-tsv", "data/sample/train.tsv", "--test-tsv", "data/sample/test.tsv"]


def result(output_dir: Path) -> dict:
    return json.loads((output_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def ingested(clearml_home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ingest")
    run_script(clearml_home, "steps/ingest.py", "--local", *SAMPLE, "--validation-size", "15", "--output-dir", str(out))
    return out


def test_every_step_has_help(clearml_home):
    for step in ("ingest", "preprocess", "train", "evaluate", "register"):
        out = run_script(clearml_home, f"steps/{step}.py", "--help").stdout
        assert "--local" in out and "--output-dir" in out


def test_ingest_carves_validation_from_train_and_keeps_test(ingested):
    from components.data import read_tsv

    outputs = result(ingested)["outputs"]
    train, validation, test = (read_tsv(ingested / "splits" / f"{s}.tsv") for s in ("train", "validation", "test"))
    original_train, original_test = read_tsv("data/sample/train.tsv"), read_tsv("data/sample/test.tsv")
    assert outputs["rows"] == {"train": len(train), "validation": 15, "test": len(original_test)}
    assert len(train) + len(validation) == len(original_train)
    assert not set(train["instruction"]) & set(validation["instruction"])
    assert test.to_dict("records") == original_test.to_dict("records")


def test_ingest_validation_is_scaled_down_for_small_data(clearml_home, tmp_path):
    run_script(clearml_home, "steps/ingest.py", "--local", *SAMPLE, "--output-dir", str(tmp_path))
    rows = result(tmp_path)["outputs"]["rows"]
    assert rows["validation"] == (rows["train"] + rows["validation"]) // 10  # 1,000 requested, a tenth of train given


def test_ingest_bad_tsv_fails_with_one_line_naming_the_file(clearml_home, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("instruction\tinput\toutput\tfull_output\nвопрос\t\t\t\n", encoding="utf-8")
    completed = run_script(clearml_home, "steps/ingest.py", "--local", "--train-tsv", str(bad), "--test-tsv", "data/sample/test.tsv",
                           "--output-dir", str(tmp_path / "out"), check=False)
    assert completed.returncode != 0
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and str(bad) in last_line and "line 2: empty output" in last_line
    assert "Traceback" not in completed.stderr


def test_preprocess_by_task_id_and_by_local_path_agree(ingested, clearml_home, tmp_path):
    by_id, by_path = tmp_path / "by_id", tmp_path / "by_path"
    task_id = result(ingested)["task_id"]
    run_script(clearml_home, "steps/preprocess.py", "--local", "--ingest-task-id", task_id, "--model", "tiny", "--output-dir", str(by_id))
    run_script(clearml_home, "steps/preprocess.py", "--local", "--splits-dir", str(ingested / "splits"), "--model", "tiny",
               "--max-input-length", "100", "--output-dir", str(by_path))
    from datasets import load_from_disk

    for split in ("train", "validation", "test"):
        assert load_from_disk(str(by_id / "tokenized" / split))["input_ids"] == load_from_disk(str(by_path / "tokenized" / split))["input_ids"]


def test_train_then_evaluate_from_local_paths(ingested, clearml_home, tmp_path):
    run_script(clearml_home, "steps/preprocess.py", "--local", "--splits-dir", str(ingested / "splits"), "--model", "tiny",
               "--output-dir", str(tmp_path / "pre"))
    run_script(clearml_home, "steps/train.py", "--local", "--data-dir", str(tmp_path / "pre" / "tokenized"), "--model", "tiny",
               "--max-steps", "3", "--lora-rank", "4", "--prompt-length", "5", "--gradient-checkpointing", "true",
               "--output-dir", str(tmp_path / "train"))
    trained = result(tmp_path / "train")["outputs"]
    assert trained["steps"] == 3
    config = json.loads((tmp_path / "train" / "adapter" / "adapter_config.json").read_text())
    assert (config["base_model"], config["lora_rank"], config["prompt_length"]) == ("tiny", 4, 5)
    training = json.loads((tmp_path / "train" / "training.json").read_text())
    assert training["precision"] == "fp32" and training["training"]["gradient_checkpointing"] is True
    assert len(training["history"]) == 3 and training["validation_loss"] > 0

    run_script(clearml_home, "steps/evaluate.py", "--local", "--model-dir", trained["adapter_dir"], "--test-tsv", "data/sample/test.tsv",
               "--max-samples", "5", "--max-new-tokens", "4", "--output-dir", str(tmp_path / "eval"))
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["rows"] == 5 and evaluation["decoding"]["description"].startswith("greedy decoding")
    predictions = (tmp_path / "eval" / "predictions.tsv").read_text(encoding="utf-8")
    assert predictions.startswith("instruction\tinput\toutput\tprediction")


def test_train_refuses_data_tokenized_for_another_model(ingested, clearml_home, tmp_path):
    run_script(clearml_home, "steps/preprocess.py", "--local", "--splits-dir", str(ingested / "splits"), "--model", "tiny",
               "--output-dir", str(tmp_path / "pre"))
    completed = run_script(clearml_home, "steps/train.py", "--local", "--data-dir", str(tmp_path / "pre" / "tokenized"),
                           "--model", "some/other-model", "--output-dir", str(tmp_path / "train"), check=False)
    assert completed.returncode != 0 and "tokenized for 'tiny'" in completed.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "command, message",
    [
        (["steps/preprocess.py", "--local", "--ingest-task-id", "offline-doesnotexist", "--model", "tiny"], "No ClearML task with id"),
        (["steps/preprocess.py", "--local", "--model", "tiny"], "Give --ingest-task-id"),
        (["steps/register.py", "--local", "--candidates", ""], "--candidates is empty"),
        (["steps/evaluate.py", "--local", "--model-dir", "/nonexistent", "--test-tsv", "data/sample/test.tsv"], "adapter_config.json not found"),
        (["steps/preprocess.py", "--local", "--splits-dir", "data/sample", "--model", "/nonexistent/model"], "Cannot load the tokenizer"),
    ],
)
def test_user_errors_are_one_line_without_traceback(clearml_home, tmp_path, command, message):
    completed = run_script(clearml_home, *command, "--output-dir", str(tmp_path), check=False)
    assert completed.returncode != 0
    assert message in completed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in completed.stderr


def test_missing_artifact_is_named(ingested, clearml_home, tmp_path):
    completed = run_script(clearml_home, "steps/train.py", "--local", "--preprocess-task-id", result(ingested)["task_id"],
                           "--model", "tiny", "--output-dir", str(tmp_path), check=False)
    assert completed.returncode != 0 and "has no artifact 'tokenized'" in completed.stderr
