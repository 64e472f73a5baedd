"""``steps/ingest.py`` in forked runs (``step_runs``): the splits carved with the seed and size asked for, the files and
artifacts it leaves, invalid rows failed or skipped and recorded, the hub dataset's one split, and each refusal."""

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from step_runs import arguments, artifacts, run_step, task_record

from steps import ingest

COLUMNS = ["instruction", "input", "output", "full_output"]
HEADER = "\t".join(COLUMNS) + "\n"


def tsv(path: Path) -> pd.DataFrame:
    """A TSV file as the dataset's plain text, read without the project's reader."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def run_ingest(argv: list[str], env: dict, out: Path):
    return run_step(ingest.main, ["--local", *argv, "--output-dir", str(out)], env)


def test_validation_is_carved_from_train_with_the_seed_and_size_asked_for(clearml_home, tmp_path):
    out = tmp_path / "out"
    completed, result = run_ingest(
        ["--train-tsv", "data/sample/train.tsv", "--test-tsv", "data/sample/test.tsv", "--validation-size", "7", "--seed", "3"], clearml_home, out
    )
    assert completed.returncode == 0, completed.stderr
    train, test = tsv("data/sample/train.tsv"), tsv("data/sample/test.tsv")
    validation = train.sample(n=7, random_state=3)
    splits = {name: tsv(out / "splits" / f"{name}.tsv") for name in ("train", "validation", "test")}
    assert splits["validation"].to_dict("records") == validation.to_dict("records")
    assert splits["train"].to_dict("records") == train.drop(validation.index).to_dict("records")
    assert splits["test"].to_dict("records") == test.to_dict("records")
    report = {
        "sources": {"train": "data/sample/train.tsv", "test": "data/sample/test.tsv"},
        "rows": {"train": len(train) - 7, "validation": 7, "test": len(test)},
        "seed": 3,
        "invalid_rows_skipped": 0,
    }
    assert json.loads((out / "ingest_report.json").read_text(encoding="utf-8")) == report
    assert result["outputs"] == {"splits_dir": str(out / "splits"), **report}
    assert f"Splits: {len(train) - 7} train, 7 validation, {len(test)} test rows in {out / 'splits'}." in completed.stdout.splitlines()
    assert not (out / "invalid_rows.json").exists() and "Skipped" not in completed.stdout

    assert (task_record(result)["name"], task_record(result)["type"]) == ("ingest", "data_processing")
    assert arguments(result)["seed"] == "3" and arguments(result)["validation_size"] == "7"
    uploaded = artifacts(result["task_id"], clearml_home, tmp_path)
    assert sorted(uploaded) == ["ingest_report", "test", "train", "validation"]
    for name in ("train", "validation", "test"):
        assert uploaded[name].read_bytes() == (out / "splits" / f"{name}.tsv").read_bytes()
    assert json.loads(uploaded["ingest_report"].read_text(encoding="utf-8")) == report


@pytest.mark.parametrize("train_rows, requested, expected", [(237, 1000, 23), (237, 30, 23), (237, 23, 23), (9, 5, 1), (25, 5, 2)])
def test_validation_is_at_most_a_tenth_of_train_and_at_least_one_row(train_rows, requested, expected, clearml_home, tmp_path):
    tsv("data/sample/train.tsv").iloc[:train_rows].to_csv(tmp_path / "train.tsv", sep="\t", index=False)
    completed, result = run_ingest(
        ["--train-tsv", str(tmp_path / "train.tsv"), "--test-tsv", "data/sample/test.tsv", "--validation-size", str(requested)],
        clearml_home,
        tmp_path / "out",
    )
    assert completed.returncode == 0, completed.stderr
    assert result["outputs"]["rows"]["validation"] == expected and result["outputs"]["rows"]["train"] == train_rows - expected
    assert result["outputs"]["seed"] == 42  # the default


@pytest.fixture
def invalid_files(tmp_path) -> tuple[Path, Path]:
    """A train file with two invalid rows (lines 3 and 5) and a test file with one (line 2)."""
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    rows = [f"вопрос {n}\t\tответ {n}\tполный ответ {n}\n" for n in range(30)]
    rows[1], rows[3] = "вопрос без ответа\t\t\t\n", "\t\tответ без вопроса\t\n"
    train.write_text(HEADER + "".join(rows), encoding="utf-8")
    test.write_text(HEADER + "вопрос\t\t\t\n" + "вопрос\t\tответ\t\n", encoding="utf-8")
    return train, test


def test_invalid_rows_fail_the_step_each_named_by_file_and_line(invalid_files, clearml_home, tmp_path):
    train, test = invalid_files
    completed, result = run_ingest(["--train-tsv", str(train), "--test-tsv", str(test)], clearml_home, tmp_path / "out")
    assert (completed.returncode, result) == (1, None)
    assert completed.stderr.splitlines()[-1] == (
        f"error: 2 invalid row(s): {train} line 3: empty output; {train} line 5: empty instruction. "
        "Fix them, or pass --skip-invalid-rows to skip them."
    )


def test_skipped_invalid_rows_are_recorded_and_counted(invalid_files, clearml_home, tmp_path):
    train, test = invalid_files
    out = tmp_path / "out"
    completed, result = run_ingest(["--train-tsv", str(train), "--test-tsv", str(test), "--skip-invalid-rows"], clearml_home, out)
    assert completed.returncode == 0, completed.stderr
    recorded = [
        {"path": str(train), "line": 3, "reason": "empty output"},
        {"path": str(train), "line": 5, "reason": "empty instruction"},
        {"path": str(test), "line": 2, "reason": "empty output"},
    ]
    assert json.loads((out / "invalid_rows.json").read_text(encoding="utf-8")) == recorded
    assert result["outputs"]["invalid_rows_skipped"] == 3 and result["outputs"]["rows"] == {"train": 26, "validation": 2, "test": 1}
    assert (
        f"Skipped 3 invalid row(s): {train} line 3: empty output; {train} line 5: empty instruction; {test} line 2: empty output."
        in completed.stdout.splitlines()
    )
    uploaded = artifacts(result["task_id"], clearml_home, tmp_path)
    assert json.loads(uploaded["invalid_rows"].read_text(encoding="utf-8")) == recorded


@pytest.mark.parametrize("given", [["--train-tsv", "data/sample/train.tsv"], ["--test-tsv", "data/sample/test.tsv"]])
def test_one_tsv_file_without_the_other_is_refused(given, clearml_home, tmp_path):
    completed, result = run_ingest(given, clearml_home, tmp_path / "out")
    assert (completed.returncode, completed.stderr.splitlines()[-1], result) == (
        1,
        "error: Give both --train-tsv and --test-tsv, or neither to load --dataset-id from the hub.",
        None,
    )


@pytest.mark.parametrize("size, test_rows", [(12_000, 1125), (250, 24)])
def test_the_hub_datasets_one_split_gives_the_published_test_size_and_drops_unusable_rows(size, test_rows, clearml_home, tmp_path):
    """A dataset folder as ``datasets.load_dataset`` resolves a hub id: one split (of 12,000 rows the test split is the
    published 1,125; of 250, a tenth of the 246 usable), an extra column, no ``full_output``, and rows without an
    instruction or an output."""
    rows = pd.DataFrame(
        {
            "instruction": [f"вопрос {n}" for n in range(size)],
            "input": [f"текст {n}" if n % 3 else None for n in range(size)],
            "output": [f"ответ {n}" for n in range(size)],
            "source": "gpt4",
        }
    )
    rows.loc[[5, 17], "instruction"] = ["  ", None]
    rows.loc[[40, 41], "output"] = ["", None]
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    rows.to_parquet(dataset / "train.parquet", index=False)
    out = tmp_path / "out"
    completed, result = run_ingest(["--dataset-id", str(dataset), "--validation-size", "10", "--seed", "5"], clearml_home, out)
    assert completed.returncode == 0, completed.stderr
    usable = rows.drop(index=[5, 17, 40, 41]).reindex(columns=COLUMNS).fillna("")
    test = usable.sample(n=test_rows, random_state=5)
    validation = usable.drop(test.index).sample(n=10, random_state=5)
    splits = {name: tsv(out / "splits" / f"{name}.tsv") for name in ("train", "validation", "test")}
    assert splits["test"].to_dict("records") == test.to_dict("records")
    assert splits["validation"].to_dict("records") == validation.to_dict("records")
    assert splits["train"].to_dict("records") == usable.drop(test.index).drop(validation.index).to_dict("records")
    assert result["outputs"]["sources"] == {"train": str(dataset), "test": str(dataset)}


def test_a_hub_dataset_that_cannot_be_loaded_is_one_sentence_with_the_libraries_error(clearml_home, tmp_path, monkeypatch):
    completed, result = run_ingest(["--dataset-id", "nobody/no-such-dataset"], clearml_home, tmp_path / "out")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as the step ran (clearml_home sets HF_HUB_OFFLINE)
    with pytest.raises(Exception) as raised:
        datasets.load_dataset("nobody/no-such-dataset", split="train")
    assert (completed.returncode, result) == (1, None)
    assert completed.stderr.splitlines()[-1] == (
        f"error: Cannot load the dataset 'nobody/no-such-dataset' from the Hugging Face Hub "
        f"({type(raised.value).__name__}); pass --train-tsv and --test-tsv instead."
    )


def test_ingesting_again_into_the_same_folder_replaces_the_splits(clearml_home, tmp_path):
    out = tmp_path / "out"
    for seed in ("1", "2"):
        completed, result = run_ingest(
            ["--train-tsv", "data/sample/train.tsv", "--test-tsv", "data/sample/test.tsv", "--seed", seed], clearml_home, out
        )
        assert completed.returncode == 0, completed.stderr
    validation = tsv("data/sample/train.tsv").sample(n=result["outputs"]["rows"]["validation"], random_state=2)
    assert tsv(out / "splits" / "validation.tsv").to_dict("records") == validation.to_dict("records")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"instruction\tinput\toutput\n\xd0\xb0\t\t\xd0\xb1\n", "line 1: missing column(s) full_output"),
        (HEADER.encode() + "вопрос\t\t\t\n".encode(), "line 2: empty output"),
        (HEADER.encode() + "вопрос\t\tответ\t\t\n".encode(), "line 2: expected 4 tab-separated fields, found 5"),
        (HEADER.encode(), "the header has no rows under it"),
        (HEADER.encode() + "вопрос\t\tответ\t\n".encode("cp1251"), "line 2: not valid UTF-8"),
    ],
    ids=["missing-column", "empty-output", "field-count", "header-only", "not-utf8"],
)
def test_a_bad_tsv_file_fails_the_step_in_one_line_naming_the_file(content, message, clearml_home, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(content)
    completed, result = run_ingest(["--train-tsv", str(bad), "--test-tsv", "data/sample/test.tsv"], clearml_home, tmp_path / "out")
    last_line = completed.stderr.splitlines()[-1]
    assert (completed.returncode, result) == (1, None)
    assert last_line.startswith("error: ") and str(bad) in last_line and message in last_line and "Traceback" not in completed.stderr
