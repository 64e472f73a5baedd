"""Each step on its own, with local paths or task ids: its ``main`` in a forked run (tests/step_runs.py), with the
environment a new process has; the scripts themselves run as scripts in tests/test_launch_checks.py and the flows."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_script
from datasets import load_from_disk
from forked import run_main
from reference_model import PlainModel, adapter_tensors, source
from safetensors.torch import load_file
from step_runs import run_step
from tolerances import LOSS_RTOL

from components.data import read_tsv
from components.generation import generate_predictions
from components.modeling import apply_peft, load_base_model, load_finetuned, load_tokenizer, save_adapter
from components.settings import AdapterSettings
from steps import evaluate, ingest, preprocess, register, train

SAMPLE = ["--train-tsv", "data/sample/train.tsv", "--test-tsv", "data/sample/test.tsv"]
USER_ERROR = 1  # the exit status of every error a user can cause (README), after one line on stderr


def succeeded(main, clearml_home, *argv: str) -> dict:
    """The step's ``result.json`` after a forked run of its ``main`` that ended with status 0."""
    completed, step_result = run_step(main, list(argv), clearml_home)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return step_result


def assert_same_tensors(got: Path, expected: Path) -> None:
    got, expected = load_file(str(got)), load_file(str(expected))
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name], expected[name]) for name in got)


@pytest.fixture(scope="module")
def ingested(clearml_home, tmp_path_factory) -> dict:
    """The result of the ingest step with its default --seed (42)."""
    return succeeded(ingest.main, clearml_home, "--local", *SAMPLE, "--validation-size", "15", "--output-dir", str(tmp_path_factory.mktemp("ingest")))


TRAIN_ANSWER = "Да."


@pytest.fixture(scope="module")
def diverging(clearml_home, tmp_path_factory) -> Path:
    """Splits on which training makes validation worse, tokenized by the preprocess step (--splits-dir).

    Every train answer is "Да." (and ``full_output`` another text), validation keeps the real
    answers: with ``DIVERGING_TRAINING`` the validation loss is lowest at the first evaluation and rises
    after it, so the best adapter is not the last one.
    """
    out = tmp_path_factory.mktemp("diverging")
    splits = out / "splits"
    splits.mkdir()
    sample = read_tsv("data/sample/train.tsv")
    sample.iloc[:40].assign(output=TRAIN_ANSWER, full_output="Полный ответ: да.").to_csv(splits / "train.tsv", sep="\t", index=False)
    sample.iloc[40:60].to_csv(splits / "validation.tsv", sep="\t", index=False)
    read_tsv("data/sample/test.tsv").to_csv(splits / "test.tsv", sep="\t", index=False)
    succeeded(preprocess.main, clearml_home, "--local", "--splits-dir", str(splits), "--model", "tiny", "--output-dir", str(out / "pre"))
    return out / "pre" / "tokenized"


DIVERGING_TRAINING = ["--local", "--model", "tiny", "--learning-rate", "0.05", "--grad-accum-steps", "1"]


# Each script run as __main__ with --help, as `python steps/<step>.py --help` runs it, in one
# interpreter: the libraries are imported once instead of five times.
HELP_SCRIPT = """
import runpy, sys
for script in sys.argv[1:]:
    print(f"=== {script}", flush=True)
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        assert exit.code in (None, 0), (script, exit.code)
"""


def test_every_step_has_help(clearml_home):
    scripts = [f"steps/{step}.py" for step in ("ingest", "preprocess", "train", "evaluate", "register")]
    out = run_script(clearml_home, "-c", HELP_SCRIPT, *scripts).stdout
    helps = dict(part.split("\n", 1) for part in out.split("=== ")[1:])
    assert list(helps) == scripts
    for text in helps.values():
        assert text.startswith("usage: ") and "--local" in text and "--output-dir" in text


def test_preprocess_labels_are_the_output_column(diverging):
    tokenizer = load_tokenizer("tiny")
    labels = load_from_disk(str(diverging / "train"))["labels"]
    assert labels == [tokenizer(text_target=TRAIN_ANSWER)["input_ids"]] * 40


def test_train_outputs_the_best_adapter_then_evaluate_uses_it(diverging, clearml_home, tmp_path):
    trained = succeeded(
        train.main,
        clearml_home,
        *DIVERGING_TRAINING,
        "--data-dir",
        str(diverging),
        "--max-steps",
        "3",
        "--eval-every",
        "1",
        "--lora-rank",
        "4",
        "--prompt-length",
        "5",
        "--gradient-checkpointing",
        "true",
        "--group-by-length",
        "false",
        "--output-dir",
        str(tmp_path / "train"),
    )["outputs"]
    assert trained["steps"] == 3
    config = json.loads((tmp_path / "train" / "adapter" / "adapter_config.json").read_text())
    assert (config["base_model"], config["lora_rank"], config["prompt_length"]) == ("tiny", 4, 5)
    training = json.loads((tmp_path / "train" / "training.json").read_text())
    assert training["precision"] == "fp32" and training["total_steps"] == 3
    assert training["training"]["gradient_checkpointing"] is True and training["training"]["group_by_length"] is False
    losses = [entry["validation_loss"] for entry in training["history"]]
    assert [entry["step"] for entry in training["history"]] == [1, 2, 3] and losses[0] < min(losses[1:])
    assert training["best_step"] == trained["best_step"] == 1

    checkpoints = tmp_path / "train" / "checkpoints"
    adapter = Path(trained["adapter_dir"]) / "adapter.safetensors"
    assert_same_tensors(adapter, checkpoints / "best" / "adapter.safetensors")  # the best, step 1 ...
    assert_same_tensors(checkpoints / "last" / "best_adapter.safetensors", adapter)  # ... carried in the checkpoint
    assert adapter.read_bytes() != (checkpoints / "last" / "adapter.safetensors").read_bytes()  # ... not the last, step 3

    succeeded(
        evaluate.main,
        clearml_home,
        "--local",
        "--model-dir",
        trained["adapter_dir"],
        "--test-tsv",
        "data/sample/test.tsv",
        "--max-samples",
        "5",
        "--max-new-tokens",
        "4",
        "--compare-base",
        "false",
        "--output-dir",
        str(tmp_path / "eval"),
    )
    evaluation = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert evaluation["rows"] == 5 and evaluation["decoding"]["description"].startswith("greedy decoding")
    assert evaluation["metrics"]["loss"] > 0  # the test loss, beside the text metrics
    assert evaluation["base_metrics"] is None and evaluation["difference"] is None  # --compare-base false: no base pass
    predictions = (tmp_path / "eval" / "predictions.tsv").read_text(encoding="utf-8")
    assert predictions.splitlines()[0] == "instruction\tinput\toutput\tprediction"


@pytest.mark.parametrize(
    "command, message",
    [
        ((preprocess, "--local", "--ingest-task-id", "offline-doesnotexist", "--model", "tiny"), "No ClearML task with id"),
        ((preprocess, "--local", "--model", "tiny"), "Give --ingest-task-id"),
        ((register, "--local", "--candidates", ""), "--candidates is empty"),
        ((evaluate, "--local", "--model-dir", "/nonexistent", "--test-tsv", "data/sample/test.tsv"), "adapter_config.json not found"),
        ((preprocess, "--local", "--splits-dir", "data/sample", "--model", "/nonexistent/model"), "Cannot load the tokenizer"),
    ],
    ids=lambda value: value if isinstance(value, str) else value[0].__name__,
)
def test_user_errors_are_one_line_without_traceback(clearml_home, tmp_path, command, message):
    step, *argv = command
    completed = run_main(step.main, [*argv, "--output-dir", str(tmp_path)], clearml_home)
    assert completed.returncode == USER_ERROR
    assert message in completed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in completed.stderr


def test_missing_artifact_is_named(ingested, clearml_home, tmp_path):
    completed = run_main(
        train.main, ["--local", "--preprocess-task-id", ingested["task_id"], "--model", "tiny", "--output-dir", str(tmp_path)], clearml_home
    )
    assert completed.returncode == USER_ERROR and "has no artifact 'tokenized'" in completed.stderr.strip().splitlines()[-1]


def test_train_resumes_another_tasks_checkpoint_with_its_best_adapter(diverging, clearml_home, tmp_path):
    """The second task continues the first one's run in a fresh output directory; the best evaluation
    (step 2) came before the hand-over, so its adapter can only travel inside the checkpoint."""
    common = [*DIVERGING_TRAINING, "--data-dir", str(diverging), "--eval-every", "2"]
    completed, first = run_step(train.main, [*common, "--max-steps", "4", "--output-dir", str(tmp_path / "first")], clearml_home)  # forked
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert first["outputs"]["best_step"] == 2
    completed, _ = run_step(
        train.main, [*common, "--max-steps", "6", "--resume-from-task-id", first["task_id"], "--output-dir", str(tmp_path / "second")], clearml_home
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    first_history = json.loads((tmp_path / "first" / "training.json").read_text())["history"]
    second = json.loads((tmp_path / "second" / "training.json").read_text())
    assert second["resumed_from"] and second["steps"] == 6
    assert [e["step"] for e in second["history"]] == [2, 4, 6] and second["history"][:2] == first_history
    assert second["best_step"] == 2
    assert_same_tensors(tmp_path / "second" / "adapter" / "adapter.safetensors", tmp_path / "first" / "checkpoints" / "best" / "adapter.safetensors")

    completed = run_main(train.main, [*common, "--resume", "--output-dir", str(tmp_path / "empty")], clearml_home)
    assert completed.returncode == USER_ERROR and "--resume: no checkpoint in" in completed.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """An adapter of the tiny model whose LoRA changes the outputs (B drawn, not zero) and a 4-vector prompt."""
    torch.manual_seed(0)
    model = apply_peft(load_base_model(str(tiny_model_dir)), lora_rank=4, lora_alpha=8.0, prompt_length=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_B"):
                parameter.normal_(std=0.05)
    directory = tmp_path_factory.mktemp("adapter")
    save_adapter(model, directory, str(tiny_model_dir), AdapterSettings(4, 8.0, 0.05, 4), load_tokenizer(str(tiny_model_dir)))
    return directory


@pytest.fixture(scope="module")
def test_rows(tmp_path_factory) -> Path:
    """Five rows from the middle of the sample test split, so that reading another file (or its head) shows."""
    path = tmp_path_factory.mktemp("rows") / "five.tsv"
    read_tsv("data/sample/test.tsv").iloc[10:15].to_csv(path, sep="\t", index=False)
    return path


def evaluated(clearml_home, adapter_dir: Path, rows: Path, output_dir: Path, *options: str) -> tuple[dict, pd.DataFrame]:
    succeeded(
        evaluate.main,
        clearml_home,
        "--local",
        "--model-dir",
        str(adapter_dir),
        "--test-tsv",
        str(rows),
        "--compare-base",
        "false",
        *options,
        "--output-dir",
        str(output_dir),
    )
    table = pd.read_csv(output_dir / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    return json.loads((output_dir / "evaluation.json").read_text()), table


@pytest.mark.numeric
def test_evaluate_samples_with_every_decoding_flag_and_cuts_inputs_and_references(
    clearml_home, adapter_dir, test_rows, tiny_model_dir, tmp_path, one_thread
):
    """Flags over the greedy preset: sampling at temperature 1.5, top-k 5, top-p 0.9, seed 3, 3 new tokens, in batches
    of 2, inputs cut to 10 tokens; the test loss over references cut to 2 tokens (recomputed row by row on the plain
    model, tests/reference_model.py). Discriminating: the preset's greedy answers, batches of 16 and whole references differ."""
    evaluation, table = evaluated(
        clearml_home,
        adapter_dir,
        test_rows,
        tmp_path,
        "--decoding",
        "greedy",
        "--do-sample",
        "true",
        "--temperature",
        "1.5",
        "--top-k",
        "5",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--max-new-tokens",
        "3",
        "--batch-size",
        "2",
        "--max-input-length",
        "10",
        "--max-target-length",
        "2",
    )
    rows = read_tsv(test_rows)
    assert evaluation["rows"] == 5 and table[["instruction", "input", "output"]].to_dict("records") == rows[
        ["instruction", "input", "output"]
    ].to_dict("records")
    decoding = {key: evaluation["decoding"][key] for key in ("num_beams", "do_sample", "temperature", "top_k", "top_p", "max_new_tokens")}
    assert decoding == {"num_beams": 1, "do_sample": True, "temperature": 1.5, "top_k": 5, "top_p": 0.9, "max_new_tokens": 3}

    model, tokenizer = load_finetuned(adapter_dir)
    sources = [source(i, x) for i, x in zip(rows["instruction"], rows["input"])]
    settings = dict(do_sample=True, temperature=1.5, top_k=5, top_p=0.9, seed=3, max_new_tokens=3, max_input_length=10)
    assert table["prediction"].tolist() == generate_predictions(model, tokenizer, sources, batch_size=2, **settings)
    assert table["prediction"].tolist() != generate_predictions(model, tokenizer, sources, batch_size=16, **settings)
    assert table["prediction"].tolist() != generate_predictions(model, tokenizer, sources, max_new_tokens=3, max_input_length=10)

    plain = PlainModel(str(tiny_model_dir), str(tiny_model_dir))
    tensors, prompt = adapter_tensors(adapter_dir / "adapter.safetensors")
    plain.add_lora(tensors, rank=4, alpha=8.0)
    cut = plain.mean_token_loss(sources, rows["output"].tolist(), prompt, max_input_length=10, max_target_length=2)
    whole = plain.mean_token_loss(sources, rows["output"].tolist(), prompt, max_input_length=10, max_target_length=200)
    # Row by row here, in padded batches of 2 in the step: float32 sums in another order (tests/tolerances.py).
    assert evaluation["metrics"]["loss"] == pytest.approx(cut, rel=LOSS_RTOL) and cut != pytest.approx(whole, rel=1e-3)


def test_evaluate_flags_override_the_sampling_preset_with_a_beam_search(clearml_home, adapter_dir, test_rows, tmp_path, one_thread):
    evaluation, table = evaluated(
        clearml_home, adapter_dir, test_rows, tmp_path, "--decoding", "sampling", "--do-sample", "false", "--num-beams", "3", "--max-new-tokens", "4"
    )
    assert evaluation["decoding"]["description"].startswith("beam search with 3 beams")
    rows = read_tsv(test_rows)
    model, tokenizer = load_finetuned(adapter_dir)
    sources = [source(i, x) for i, x in zip(rows["instruction"], rows["input"])]
    assert table["prediction"].tolist() == generate_predictions(model, tokenizer, sources, num_beams=3, max_new_tokens=4)
    assert table["prediction"].tolist() != generate_predictions(model, tokenizer, sources, max_new_tokens=4)  # not greedy


# Every training option of the train step away from its default; the loop's handling of each is tested in
# tests/test_training.py, this shows the step hands each one on.
EVERY_TRAINING_OPTION = [
    "--lora-rank",
    "2",
    "--lora-alpha",
    "4",
    "--lora-dropout",
    "0",
    "--prompt-length",
    "3",
    "--batch-size",
    "4",
    "--grad-accum-steps",
    "2",
    "--learning-rate",
    "0.02",
    "--weight-decay",
    "0.2",
    "--epochs",
    "2",
    "--max-steps",
    "3",
    "--warmup-ratio",
    "0.5",
    "--gradient-checkpointing",
    "false",
    "--precision",
    "fp32",
    "--group-by-length",
    "false",
    "--eval-every",
    "1",
    "--best-metric",
    "validation_chrf",
    "--early-stopping-patience",
    "5",
    "--generation-eval-samples",
    "2",
]


@pytest.mark.numeric
def test_the_train_step_hands_every_option_to_the_loop_and_the_seed_moves_only_the_training(diverging, clearml_home, tmp_path):
    trained = {}
    for seed in (5, 6):  # forked runs of the step's main (tests/step_runs.py): the script's imports once, not twice
        completed, _ = run_step(
            train.main,
            [
                "--local",
                "--model",
                "tiny",
                "--data-dir",
                str(diverging),
                *EVERY_TRAINING_OPTION,
                "--seed",
                str(seed),
                "--output-dir",
                str(tmp_path / str(seed)),
            ],
            clearml_home,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        trained[seed] = json.loads((tmp_path / str(seed) / "training.json").read_text())
    training = trained[5]
    assert training["training"] == {
        "batch_size": 4,
        "grad_accum_steps": 2,
        "learning_rate": 0.02,
        "weight_decay": 0.2,
        "epochs": 2.0,
        "max_steps": 3,
        "warmup_ratio": 0.5,
        "gradient_checkpointing": False,
        "precision": "fp32",
        "seed": 5,
        "eval_batch_size": 16,
        "group_by_length": False,
        "eval_every": 1,
        "best_metric": "validation_chrf",
        "early_stopping_patience": 5,
        "generation_eval_samples": 2,
        "generation_max_new_tokens": 64,
    }
    assert training["adapter"] == {"lora_rank": 2, "lora_alpha": 4.0, "lora_dropout": 0.0, "prompt_length": 3, "lora_targets": ["q", "v"]}
    assert [lr for _, lr in training["learning_rates"]] == pytest.approx([0.0, 0.02, 0.01], rel=1e-12)  # one warmup step of three
    chrf = {entry["step"]: entry["validation_chrf"] for entry in training["history"]}
    assert list(chrf) == [1, 2, 3] and training["best_step"] == max(chrf, key=chrf.get)
    # The seed draws LoRA's A and the batch order, not the untuned model (B zero, the prompt from its own seed).
    assert trained[5]["initial_validation_loss"] == trained[6]["initial_validation_loss"]
    assert trained[5]["train_losses"][0] != trained[6]["train_losses"][0]
