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


HEADER = b"instruction\tinput\toutput\tfull_output\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"instruction\tinput\toutput\n\xd0\xb0\t\t\xd0\xb1\n", "line 1: missing column(s) full_output"),
        (HEADER + "вопрос\t\t\t\n".encode(), "line 2: empty output"),
        (HEADER + "вопрос\t\tответ\t\t\n".encode(), "line 2: expected 4 tab-separated fields, found 5"),
        (HEADER, "the header has no rows under it"),
        (HEADER + "вопрос\t\tответ\t\n".encode("cp1251"), "line 2: not valid UTF-8"),
    ],
    ids=["missing-column", "empty-output", "field-count", "header-only", "not-utf8"],
)
def test_ingest_bad_tsv_fails_with_one_line_naming_the_file(clearml_home, tmp_path, content, message):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(content)
    completed = run_script(clearml_home, "steps/ingest.py", "--local", "--train-tsv", str(bad), "--test-tsv", "data/sample/test.tsv",
                           "--output-dir", str(tmp_path / "out"), check=False)
    assert completed.returncode != 0
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and str(bad) in last_line and message in last_line
    assert "Traceback" not in completed.stderr


def test_ingest_can_skip_invalid_rows_and_records_them(clearml_home, tmp_path):
    train = tmp_path / "train.tsv"
    good = Path("data/sample/train.tsv").read_bytes()
    train.write_bytes(good + "вопрос без ответа\t\t\t\n".encode())
    run_script(clearml_home, "steps/ingest.py", "--local", "--train-tsv", str(train), "--test-tsv", "data/sample/test.tsv",
               "--skip-invalid-rows", "--output-dir", str(tmp_path / "out"))
    outputs = result(tmp_path / "out")["outputs"]
    assert outputs["invalid_rows_skipped"] == 1
    [row] = json.loads((tmp_path / "out" / "invalid_rows.json").read_text())
    assert row["path"] == str(train) and row["line"] == good.count(b"\n") + 1 and row["reason"] == "empty output"


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
    assert [entry["step"] for entry in training["history"]] == [3] and training["history"][0]["validation_loss"] > 0
    assert training["best_step"] == 3 and training["total_steps"] == 3
    from safetensors.torch import load_file

    final = load_file(str(tmp_path / "train" / "adapter" / "adapter.safetensors"))
    best = load_file(str(tmp_path / "train" / "checkpoints" / "best" / "adapter.safetensors"))
    assert final.keys() == best.keys() and all((final[k] == best[k]).all() for k in final)

    run_script(clearml_home, "steps/evaluate.py", "--local", "--model-dir", trained["adapter_dir"], "--test-tsv", "data/sample/test.tsv",
               "--max-samples", "5", "--max-new-tokens", "4", "--compare-base", "false", "--output-dir", str(tmp_path / "eval"))
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["rows"] == 5 and evaluation["decoding"]["description"].startswith("greedy decoding")
    assert evaluation["metrics"]["loss"] > 0  # the test loss, beside the text metrics
    assert evaluation["base_metrics"] is None and evaluation["difference"] is None  # --compare-base false: no base pass
    predictions = (tmp_path / "eval" / "predictions.tsv").read_text(encoding="utf-8")
    assert predictions.splitlines()[0] == "instruction\tinput\toutput\tprediction"


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


def test_train_resumes_another_tasks_checkpoint(ingested, clearml_home, tmp_path):
    run_script(clearml_home, "steps/preprocess.py", "--local", "--splits-dir", str(ingested / "splits"), "--model", "tiny",
               "--output-dir", str(tmp_path / "pre"))
    common = ["--local", "--data-dir", str(tmp_path / "pre" / "tokenized"), "--model", "tiny", "--eval-every", "2"]
    run_script(clearml_home, "steps/train.py", *common, "--max-steps", "4", "--output-dir", str(tmp_path / "first"))
    first = result(tmp_path / "first")
    run_script(clearml_home, "steps/train.py", *common, "--max-steps", "6", "--resume-from-task-id", first["task_id"],
               "--output-dir", str(tmp_path / "second"))
    first_history = json.loads((tmp_path / "first" / "training.json").read_text())["history"]
    second = json.loads((tmp_path / "second" / "training.json").read_text())
    assert second["resumed_from"] and second["steps"] == 6
    assert [e["step"] for e in second["history"]] == [2, 4, 6] and second["history"][:2] == first_history

    completed = run_script(clearml_home, "steps/train.py", *common, "--resume", "--output-dir", str(tmp_path / "empty"), check=False)
    assert completed.returncode != 0 and "--resume: no checkpoint in" in completed.stderr.strip().splitlines()[-1]
