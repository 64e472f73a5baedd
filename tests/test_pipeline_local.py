"""The tiny pipeline end to end, offline, on a machine with no ClearML configuration and no network.

The session's pipeline run evaluates with beam search; two more evaluations of the same
train task (greedy, sampling) give the register step several candidates with distinct
scores. The assertions recompute what the steps claim from the raw inputs: the test
references, the trained adapter loaded by hand, the decoding that was asked for.
"""

import hashlib
import io
import json
import struct
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_script
from ctranslate2.specs.model_spec import CURRENT_BINARY_VERSION as CTRANSLATE2_BINARY_VERSION
from reference_model import PlainModel, adapter_tensors, protocol_scores, source
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from tolerances import LOSS_RTOL

from components.data import read_tsv
from components.decoding import DECODING_PRESETS
from components.generation import generate_predictions
from components.lora import merge_lora
from components.metrics import PROTOCOL_METRICS
from components.modeling import apply_adapter_settings, load_base_model, load_finetuned, load_tokenizer, read_adapter_config
from pipelines.definition import STEP_NAMES
from pipelines.report import HEADLINE_METRICS


def result(output_dir: Path) -> dict:
    return json.loads((output_dir / "result.json").read_text())


def predictions_of(evaluate_dir: Path) -> list[str]:
    table = pd.read_csv(evaluate_dir / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    return table["prediction"].tolist()


@pytest.fixture(scope="module")
def summary(tiny_pipeline) -> dict:
    return json.loads((tiny_pipeline / "summary.json").read_text())


@pytest.fixture(scope="module")
def candidates(tiny_pipeline, summary, clearml_home) -> dict[str, Path]:
    """Decoding preset -> output directory of an evaluate task of the pipeline's train task."""
    found = {"beam": tiny_pipeline / "evaluate"}
    for decoding in ("greedy", "sampling"):
        found[decoding] = tiny_pipeline / f"evaluate-{decoding}"
        run_script(
            clearml_home,
            "steps/evaluate.py",
            "--local",
            "--train-task-id",
            summary["task_ids"]["train"],
            "--ingest-task-id",
            summary["task_ids"]["ingest"],
            "--decoding",
            decoding,
            "--max-new-tokens",
            str(summary["parameters"]["max_new_tokens"]),
            "--max-samples",
            str(summary["parameters"]["max_test_samples"]),
            "--compare-base",
            "false",
            "--output-dir",
            str(found[decoding]),
        )  # the pipeline run itself scores the base
    return found


def evaluation_of(evaluate_dir: Path) -> dict:
    return json.loads((evaluate_dir / "evaluation.json").read_text())


def evaluated_rows(tiny_pipeline: Path, evaluate_dir: Path) -> pd.DataFrame:
    """The rows of the ingest task's test split that an evaluate task scored."""
    return read_tsv(tiny_pipeline / "ingest" / "splits" / "test.tsv").head(evaluation_of(evaluate_dir)["rows"])


def chrf_of(candidates: dict[str, Path]) -> dict[str, float]:
    return {name: evaluation_of(directory)["metrics"]["chrf"] for name, directory in candidates.items()}


@pytest.fixture(scope="module")
def registered(candidates, tiny_pipeline, clearml_home) -> Path:
    """The register step over the three candidates, listed with the best in the middle (neither first nor last)."""
    chrf = chrf_of(candidates)
    worst, middle, best = sorted(chrf, key=chrf.get)
    ids = ",".join(result(candidates[name])["task_id"] for name in (worst, best, middle))
    out = tiny_pipeline / "register-of-three"
    run_script(clearml_home, "steps/register.py", "--local", "--candidates", ids, "--metric", "chrf", "--output-dir", str(out))
    return out


def test_summary_has_metrics_model_dir_and_one_task_per_step(summary):
    assert set(summary["metrics"]) == set(summary["base_metrics"]) == {*PROTOCOL_METRICS, "loss"}
    assert all(0.0 <= summary[kind][name] <= 1.0 for kind in ("metrics", "base_metrics") for name in PROTOCOL_METRICS)
    assert list(summary["task_ids"]) == list(STEP_NAMES)
    assert len(set(summary["task_ids"].values())) == len(STEP_NAMES)
    assert all(task_id.startswith("offline-") for task_id in summary["task_ids"].values())
    for session, task_id in zip(summary["offline_sessions"], summary["task_ids"].values()):
        assert Path(session).name == f"{task_id}.zip"
        assert "task.json" in {Path(n).name for n in zipfile.ZipFile(session).namelist()}


def test_steps_received_upstream_task_ids_as_on_a_server(tiny_pipeline, summary):
    results = {name: result(tiny_pipeline / name) for name in STEP_NAMES}
    ids = {name: outcome["task_id"] for name, outcome in results.items()}
    evaluation = results["evaluate"]["outputs"]
    assert evaluation["train_task_id"] == ids["train"]
    assert evaluation["rows"] == summary["parameters"]["max_test_samples"] == 16
    assert results["register"]["outputs"]["best_evaluate_task_id"] == ids["evaluate"]
    # the registered adapter is byte for byte the one the train task uploaded: its best-validation checkpoint
    registered = Path(results["register"]["outputs"]["model_dir"]) / "adapter.safetensors"
    for trained in (
        Path(results["train"]["outputs"]["adapter_dir"]) / "adapter.safetensors",
        tiny_pipeline / "train/checkpoints/best/adapter.safetensors",
    ):
        assert trained.read_bytes() == registered.read_bytes()


def test_the_evaluation_generates_with_the_trained_adapter_and_the_decoding_asked_for(tiny_pipeline, candidates):
    """The pipeline's --decoding beam reached the evaluate step, which generated with the trained adapter.

    The model is assembled here without ``load_finetuned``: the base, the adapter shapes from
    adapter_config.json, the tensors of the train step's best checkpoint copied in.
    """
    base_model, settings = read_adapter_config(tiny_pipeline / "train" / "adapter")
    model, tokenizer = apply_adapter_settings(load_base_model(base_model), settings), load_tokenizer(base_model)
    test = evaluated_rows(tiny_pipeline, candidates["beam"])
    sources = [source(i, x) for i, x in zip(test["instruction"], test["input"])]
    max_new_tokens = evaluation_of(candidates["beam"])["decoding"]["max_new_tokens"]

    def decode(preset: str) -> list[str]:  # as the evaluate step does: batches of 16, the preset's settings
        return generate_predictions(
            model, tokenizer, sources, batch_size=16, **asdict(replace(DECODING_PRESETS[preset], max_new_tokens=max_new_tokens))
        )

    untrained_greedy = decode("greedy")
    params = dict(model.named_parameters())
    best = load_file(str(tiny_pipeline / "train/checkpoints/best/adapter.safetensors"))
    assert best.keys() == {name for name, p in params.items() if p.requires_grad}
    for name, tensor in best.items():
        params[name].data.copy_(tensor)
    merge_lora(model)  # as the evaluate step runs it: the same arithmetic, the same beams

    assert evaluation_of(candidates["beam"])["decoding"]["preset"] == "beam"
    assert predictions_of(candidates["beam"]) == decode("beam")
    assert predictions_of(candidates["greedy"]) == decode("greedy")
    # Discriminating: beam and greedy disagree, and the trained adapter changed the answers.
    assert predictions_of(candidates["beam"]) != predictions_of(candidates["greedy"]) != untrained_greedy


@pytest.mark.numeric
def test_every_evaluation_scores_its_predictions_against_the_test_references(tiny_pipeline, candidates, summary):
    """Recomputed by tests/reference_model.py on sacreBLEU, rouge_score and nltk directly. The same libraries on
    the same tokens: only the order of the mean's additions may differ, hence approx's default 1e-6 relative."""
    for name, directory in candidates.items():
        test = evaluated_rows(tiny_pipeline, directory)
        references = test["output"].tolist()
        predictions = predictions_of(directory)
        expected = protocol_scores(predictions, references)
        metrics = evaluation_of(directory)["metrics"]
        assert metrics.keys() == {*expected, "loss", *(f"published_{kind}" for kind in ("rouge1", "rouge2", "rougeL"))}, name
        assert {key: metrics[key] for key in expected} == pytest.approx(expected), name
        # Discriminating: scored against the inputs instead, the numbers would differ.
        sources = [source(i, x) for i, x in zip(test["instruction"], test["input"])]
        assert protocol_scores(predictions, sources)["chrf"] != pytest.approx(expected["chrf"]), name
    assert summary["all_metrics"] == evaluation_of(candidates["beam"])["metrics"]
    assert summary["metrics"] == {name: summary["all_metrics"][name] for name in HEADLINE_METRICS}


@pytest.mark.numeric
def test_the_untuned_base_is_recomputed_on_the_plain_base_model(tiny_pipeline, tiny_model_dir, summary, one_thread):
    """evaluation.json's base figures and predictions.tsv's base column, from the Hugging Face base model with the
    prompt's initial vectors in front: no LoRA at all (B at zero adds nothing), no project code on the way."""
    evaluation = evaluation_of(tiny_pipeline / "evaluate")
    table = pd.read_csv(tiny_pipeline / "evaluate" / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    test = evaluated_rows(tiny_pipeline, tiny_pipeline / "evaluate")
    assert table["output"].tolist() == test["output"].tolist()
    config = json.loads((tiny_pipeline / "train" / "adapter" / "adapter_config.json").read_text())
    parameters, decoding = summary["parameters"], evaluation["decoding"]
    plain = PlainModel(str(tiny_model_dir), str(tiny_model_dir))
    initial_prompt = plain.initial_prompt(config["prompt_length"])
    _, trained_prompt = adapter_tensors(tiny_pipeline / "train" / "adapter" / "adapter.safetensors")
    sources = [source(i, x) for i, x in zip(test["instruction"], test["input"])]
    generate = {"num_beams": decoding["num_beams"], "do_sample": decoding["do_sample"], "max_new_tokens": decoding["max_new_tokens"]}
    assert decoding["num_beams"] > 1  # the session's run decodes with beams: the base must too

    expected = plain.generate(sources, initial_prompt, parameters["max_input_length"], generate)
    # Discriminating: the trained prompt in front of the untuned weights would answer otherwise.
    assert plain.generate(sources, trained_prompt, parameters["max_input_length"], generate) != expected
    assert table["base_prediction"].tolist() == expected

    base = evaluation["base_metrics"]
    text_metrics = protocol_scores(expected, test["output"].tolist())
    assert {name: base[name] for name in text_metrics} == pytest.approx(text_metrics)
    loss = plain.mean_token_loss(sources, test["output"].tolist(), initial_prompt, parameters["max_input_length"], parameters["max_target_length"])
    assert base["loss"] == pytest.approx(loss, rel=LOSS_RTOL)
    assert summary["base_metrics"] == {name: base[name] for name in HEADLINE_METRICS}
    assert evaluation["difference"] == pytest.approx({name: evaluation["metrics"][name] - base[name] for name in base})


@pytest.mark.numeric
def test_the_test_and_validation_losses_are_recomputed_token_by_token(tiny_pipeline, tiny_model_dir, summary, one_thread):
    """The tuned test loss (evaluation.json), the untuned and the best and last validation losses (training.json),
    each from the plain base model with the adapter file's LoRA folded in by hand and its prompt in front."""
    parameters = summary["parameters"]
    config = json.loads((tiny_pipeline / "train" / "adapter" / "adapter_config.json").read_text())
    training = json.loads((tiny_pipeline / "train" / "training.json").read_text())

    def loss_of(adapter: Path | None, rows: pd.DataFrame) -> float:
        plain = PlainModel(str(tiny_model_dir), str(tiny_model_dir))
        prompt = plain.initial_prompt(config["prompt_length"])
        if adapter is not None:
            tensors, prompt = adapter_tensors(adapter)
            plain.add_lora(tensors, config["lora_rank"], config["lora_alpha"])
        sources = [source(i, x) for i, x in zip(rows["instruction"], rows["input"])]
        return plain.mean_token_loss(sources, rows["output"].tolist(), prompt, parameters["max_input_length"], parameters["max_target_length"])

    test = evaluated_rows(tiny_pipeline, tiny_pipeline / "evaluate")
    validation = read_tsv(tiny_pipeline / "ingest" / "splits" / "validation.tsv")
    checkpoints = tiny_pipeline / "train" / "checkpoints"
    assert evaluation_of(tiny_pipeline / "evaluate")["metrics"]["loss"] == pytest.approx(
        loss_of(checkpoints / "best" / "adapter.safetensors", test), rel=LOSS_RTOL
    )
    assert training["initial_validation_loss"] == pytest.approx(loss_of(None, validation), rel=LOSS_RTOL)
    history = {entry["step"]: entry["validation_loss"] for entry in training["history"]}
    assert training["best_step"] == min(history, key=history.get) and training["best_value"] == history[training["best_step"]]
    assert history[training["best_step"]] == pytest.approx(loss_of(checkpoints / "best" / "adapter.safetensors", validation), rel=LOSS_RTOL)
    assert history[training["steps"]] == pytest.approx(loss_of(checkpoints / "last" / "adapter.safetensors", validation), rel=LOSS_RTOL)


def test_the_session_run_trained_the_one_epoch_it_was_given(tiny_pipeline, summary):
    """--epochs 1 (the tiny preset trains 5): one pass over the ingest task's train rows in batches of 8, one step each."""
    training = json.loads((tiny_pipeline / "train" / "training.json").read_text())
    rows = len(read_tsv(tiny_pipeline / "ingest" / "splits" / "train.tsv"))
    assert summary["parameters"]["epochs"] == 1.0 and training["training"]["epochs"] == 1.0
    assert training["steps"] == training["total_steps"] == -(-rows // 8)


def test_the_registered_model_folder_is_the_trained_adapter_file_by_file(tiny_pipeline, tiny_model_dir, summary):
    model_dir, adapter_dir = Path(summary["model_dir"]), tiny_pipeline / "train" / "adapter"
    tokenizer_files = ["tokenizer.json", "tokenizer_config.json"]
    assert sorted(path.name for path in model_dir.iterdir()) == sorted(
        ["adapter.safetensors", "adapter_config.json", "evaluation.json", *tokenizer_files]
    )
    assert sorted(path.name for path in adapter_dir.iterdir()) == sorted(["adapter.safetensors", "adapter_config.json", *tokenizer_files])
    for name in ["adapter.safetensors", "adapter_config.json", *tokenizer_files]:
        assert (model_dir / name).read_bytes() == (adapter_dir / name).read_bytes(), name
    assert (model_dir / "adapter.safetensors").read_bytes() == (tiny_pipeline / "train/checkpoints/best/adapter.safetensors").read_bytes()
    parameters = summary["parameters"]
    assert json.loads((model_dir / "adapter_config.json").read_text()) == {
        "base_model": "tiny",
        "lora_targets": ["q", "v"],
        **{name: parameters[name] for name in ("lora_rank", "lora_alpha", "lora_dropout", "prompt_length", "max_input_length")},
    }
    # The evaluation of these very weights, at the length they were trained with.
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    assert evaluation["max_input_length"] == parameters["max_input_length"]
    assert evaluation["adapter_sha256"] == hashlib.sha256((model_dir / "adapter.safetensors").read_bytes()).hexdigest()
    # The tokenizer is the base model's: the same vocabulary file, the same ids for a text.
    assert (model_dir / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()
    text = "Какой знак стоит в конце текста?"
    assert load_tokenizer(str(model_dir))(text)["input_ids"] == load_tokenizer(str(tiny_model_dir))(text)["input_ids"]
    record = json.loads((model_dir / "evaluation.json").read_text())
    assert record["metrics"] == summary["all_metrics"] and record["train_task_id"] == summary["task_ids"]["train"]


def test_register_takes_the_best_of_several_candidates_by_the_metric(registered, candidates, tiny_pipeline):
    chrf = chrf_of(candidates)
    assert len(set(chrf.values())) == len(chrf)  # distinct scores: the highest and the lowest are different models
    best = max(chrf, key=chrf.get)
    outputs = result(registered)["outputs"]
    assert outputs["best_evaluate_task_id"] == result(candidates[best])["task_id"]
    record = json.loads((registered / "model" / "evaluation.json").read_text())
    assert record["evaluate_task_id"] == outputs["best_evaluate_task_id"] and record["metric"] == "chrf"
    assert record["metrics"] == evaluation_of(candidates[best])["metrics"] == outputs["metrics"]
    assert record["decoding"]["preset"] == best
    registered_adapter = (registered / "model" / "adapter.safetensors").read_bytes()
    assert registered_adapter == (tiny_pipeline / "train/checkpoints/best/adapter.safetensors").read_bytes()


def test_register_picks_by_the_metric_it_is_given(candidates, tiny_pipeline, clearml_home):
    """--metric away from chrf: a metric whose best candidate is not chrf's best (asserted: one exists), and its winner registered."""
    scores = {name: evaluation_of(directory)["metrics"] for name, directory in candidates.items()}
    chrf_best = max(scores, key=lambda name: scores[name]["chrf"])
    metric = next(m for m in PROTOCOL_METRICS if max(scores, key=lambda name: scores[name][m]) != chrf_best)
    best = max(scores, key=lambda name: scores[name][metric])
    out = tiny_pipeline / f"register-by-{metric}"
    ids = ",".join(result(directory)["task_id"] for directory in candidates.values())
    run_script(clearml_home, "steps/register.py", "--local", "--candidates", ids, "--metric", metric, "--output-dir", str(out))
    assert result(out)["outputs"]["best_evaluate_task_id"] == result(candidates[best])["task_id"]
    assert json.loads((out / "model" / "evaluation.json").read_text())["metric"] == metric


def test_the_registered_model_directory_loads_and_generates(summary):
    model, tokenizer = load_finetuned(summary["model_dir"])
    [prediction] = generate_predictions(model, tokenizer, ["Назови столицу Франции."], max_new_tokens=8)
    assert isinstance(prediction, str)
    evaluation = json.loads((Path(summary["model_dir"]) / "evaluation.json").read_text())
    assert evaluation["metrics"]["chrf"] == summary["metrics"]["chrf"]


def test_generation_cli_uses_the_model_directory(summary, clearml_home):
    out = run_script(
        clearml_home,
        "-m",
        "tools.generate",
        "--model-dir",
        summary["model_dir"],
        "--decoding",
        "beam",
        "--max-new-tokens",
        "5",
        "Привет",
        "Как дела?",
    ).stdout
    assert "beam search with 4 beams" in out
    assert "> Привет" in out and "> Как дела?" in out


def _is_ctranslate2_model(data: bytes) -> bool:
    """CTranslate2's own model.bin (ctranslate2/specs/model_spec.py, ``_serialize``): a uint32 binary version, then the
    spec's name as a uint16 length, the UTF-8 name and a NUL (e.g. ``TransformerSpec``); its tensors follow as raw bytes."""
    if len(data) < 6 or struct.unpack("<I", data[:4])[0] != CTRANSLATE2_BINARY_VERSION:
        return False
    (length,) = struct.unpack("<H", data[4:6])
    spec = data[6 : 6 + length]
    return spec.endswith(b"Spec\x00") and spec[:-1].isascii()


def _pickled_files(name: str, data: bytes) -> list[str]:
    """Files in ``data`` (opened recursively when it is a zip) that hold a pickle or are not valid safetensors."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        archive = zipfile.ZipFile(io.BytesIO(data))
        return [
            found for member in archive.namelist() if not member.endswith("/") for found in _pickled_files(f"{name}!{member}", archive.read(member))
        ]
    if name.endswith(".safetensors"):
        load_safetensors(data)  # raises unless it is plain safetensors
        return []
    if _is_ctranslate2_model(data):
        return []
    is_pickle = data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # pickle protocols 2 to 5
    return [name] if is_pickle or name.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")) else []


def test_nothing_is_pickled(tiny_pipeline, summary):
    """Every file the pipeline wrote, and every file in its offline ClearML sessions (artifacts, checkpoints, zips opened)."""
    files = [path for path in tiny_pipeline.rglob("*") if path.is_file()] + [Path(s) for s in summary["offline_sessions"]]
    assert any(path.name == "optimizer.safetensors" for path in files)  # the checkpoint is among them
    assert any(path.match("export/ctranslate2/model.bin") for path in files)  # and the export's CTranslate2 model
    assert [found for path in files for found in _pickled_files(str(path), path.read_bytes())] == []


# ClearML asks this host for a newer version of itself at Task.init, in a thread that
# ignores the failure; it downloads nothing the pipeline uses.
CLEARML_VERSION_CHECK = "getaddrinfo 'updates.clear.ml'"


def test_nothing_is_downloaded_at_run_time(tiny_pipeline, clearml_home):
    """The pipeline ran with HF_HUB_OFFLINE and tests/network_guard: every connection leaving this machine refused and logged."""
    log = Path(clearml_home["NETWORK_GUARD_LOG"]).read_text(encoding="utf-8").splitlines()
    armed = " ".join(line for line in log if line.startswith("armed"))
    for step in STEP_NAMES:
        assert f"steps/{step}.py" in armed, f"the network guard was not active in the {step} step"
    blocked = [line for line in log if line.startswith("blocked") and not line.endswith(CLEARML_VERSION_CHECK)]
    assert blocked == []
