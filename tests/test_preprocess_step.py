"""``steps/preprocess.py`` in forked runs (``step_runs``): where the splits come from, the tokenized splits and their
counts against the tokenizer called here, what its task records, and each refusal."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import ASCII_LOCALE
from datasets import load_from_disk
from step_runs import arguments, artifacts, run_step, task_record

from components.data import SPLITS, preprocess, read_tsv
from components.modeling import load_tokenizer
from steps import ingest
from steps import preprocess as preprocess_step

MAX_INPUT, MAX_TARGET = 9, 5  # both away from the defaults (100, 200), short enough that some rows of each split are cut


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    """Split files of different sizes, each with rows longer and shorter than the limits (two with no input)."""
    folder = tmp_path_factory.mktemp("splits")
    rows = read_tsv("data/sample/train.tsv")
    rows.loc[3, "input"] = ""
    rows.loc[4, ["instruction", "input", "output"]] = ["Да?", "", "Да"]
    for name, size in zip(SPLITS, (12, 7, 5)):
        rows.iloc[:size].to_csv(folder / f"{name}.tsv", sep="\t", index=False)
    return folder


@pytest.fixture(scope="module")
def ingested(clearml_home, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("ingest")
    completed, result = run_step(
        ingest.main,
        [
            "--local",
            "--train-tsv",
            "data/sample/train.tsv",
            "--test-tsv",
            "data/sample/test.tsv",
            "--validation-size",
            "15",
            "--output-dir",
            str(out),
        ],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    return result, out / "splits"


def untruncated_lengths(texts, tokenizer) -> list[int]:
    return [len(tokenizer(text)["input_ids"]) for text in texts]


def test_each_split_is_tokenized_at_the_lengths_asked_for_and_its_cut_rows_counted(splits, clearml_home, tmp_path):
    out = tmp_path / "out"
    completed, result = run_step(
        preprocess_step.main,
        [
            "--local",
            "--splits-dir",
            str(splits),
            "--model",
            "tiny",
            "--max-input-length",
            str(MAX_INPUT),
            "--max-target-length",
            str(MAX_TARGET),
            "--output-dir",
            str(out),
        ],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    tokenizer = load_tokenizer("tiny")
    expected = {"model": "tiny", "max_input_length": MAX_INPUT, "max_target_length": MAX_TARGET, "splits": {}}
    for name in SPLITS:
        frame = pd.read_csv(splits / f"{name}.tsv", sep="\t", dtype=str, keep_default_na=False)
        sources = [f"{row.instruction}\n{row.input}" if row.input else row.instruction for row in frame.itertuples()]
        input_lengths, target_lengths = untruncated_lengths(sources, tokenizer), untruncated_lengths(frame["output"], tokenizer)
        expected["splits"][name] = {
            "rows": len(frame),
            "inputs_truncated": sum(n >= MAX_INPUT for n in input_lengths),
            "targets_truncated": sum(n >= MAX_TARGET for n in target_lengths),
        }
        assert 0 < expected["splits"][name]["inputs_truncated"] < len(frame) and 0 < expected["splits"][name]["targets_truncated"] < len(frame)
        tokenized = load_from_disk(str(out / "tokenized" / name))
        reference = preprocess(read_tsv(splits / f"{name}.tsv"), tokenizer, MAX_INPUT, MAX_TARGET)
        assert tokenized.to_dict() == reference.to_dict()
        assert [len(ids) for ids in tokenized["input_ids"]] == [min(n, MAX_INPUT) for n in input_lengths]
        assert [len(ids) for ids in tokenized["labels"]] == [min(n, MAX_TARGET) for n in target_lengths]

    assert json.loads((out / "tokenized" / "tokenization.json").read_text(encoding="utf-8")) == expected
    assert json.loads((out / "tokenization.json").read_text(encoding="utf-8")) == expected
    assert result["outputs"] == {"tokenized_dir": str(out / "tokenized"), **expected}
    assert f"Tokenized train: 12, validation: 7, test: 5 rows into {out / 'tokenized'}." in completed.stdout.splitlines()

    record = task_record(result)
    assert (record["name"], record["type"]) == ("preprocess", "data_processing")
    assert arguments(result)["max_input_length"] == str(MAX_INPUT) and arguments(result)["splits_dir"] == str(splits)
    uploaded = artifacts(result["task_id"], clearml_home, tmp_path)
    assert sorted(uploaded) == ["tokenization", "tokenized"]
    assert json.loads(uploaded["tokenization"].read_text(encoding="utf-8")) == expected
    assert load_from_disk(str(uploaded["tokenized"] / "test")).to_dict() == load_from_disk(str(out / "tokenized" / "test")).to_dict()


def test_an_ingest_task_id_is_read_before_a_splits_folder(ingested, clearml_home, tmp_path):
    """With both given, the ingest task's splits are used (``--splits-dir`` names a folder without a validation split)."""
    ingest_result, ingest_splits = ingested
    out = tmp_path / "out"
    completed, result = run_step(
        preprocess_step.main,
        ["--local", "--ingest-task-id", ingest_result["task_id"], "--splits-dir", "data/sample", "--model", "tiny", "--output-dir", str(out)],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    tokenizer = load_tokenizer("tiny")
    for name in SPLITS:
        reference = preprocess(read_tsv(ingest_splits / f"{name}.tsv"), tokenizer)
        assert load_from_disk(str(out / "tokenized" / name))["input_ids"] == reference["input_ids"]
    assert result["outputs"]["max_input_length"] == 100 and result["outputs"]["max_target_length"] == 200  # the defaults


@pytest.mark.parametrize(
    "argv, sentence",
    [
        ([], "error: Give --ingest-task-id (a ClearML ingest task) or --splits-dir (a folder of split TSV files)."),
        (["--splits-dir", "data/sample"], "error: data/sample/validation.tsv: no such file; check the TSV path."),
    ],
)
def test_without_splits_the_step_says_which_option_to_give(argv, sentence, clearml_home, tmp_path):
    completed, result = run_step(preprocess_step.main, ["--local", "--model", "tiny", *argv, "--output-dir", str(tmp_path)], clearml_home)
    assert (completed.returncode, completed.stderr.splitlines()[-1], result) == (1, sentence, None)


def test_the_summary_is_utf_8_whatever_the_locale(splits, tiny_model_dir, clearml_home, tmp_path):
    """A model folder with a Russian name, under the C locale: the summary files are still written (and read) as UTF-8."""
    model = shutil.copytree(tiny_model_dir, tmp_path / "модель")
    out = tmp_path / "out"
    completed, result = run_step(
        preprocess_step.main,
        ["--local", "--splits-dir", str(splits), "--model", str(model), "--output-dir", str(out)],
        {**clearml_home, **ASCII_LOCALE},
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads((out / "tokenized" / "tokenization.json").read_text(encoding="utf-8"))["model"] == str(model)
    assert json.loads((out / "tokenization.json").read_text(encoding="utf-8"))["model"] == str(model)
