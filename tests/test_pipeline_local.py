"""The tiny pipeline end to end, offline, on a machine with no ClearML configuration and no network.

The session's pipeline run evaluates with beam search; two more evaluations of the same
train task (greedy, sampling) give the register step several candidates with distinct
scores. The assertions recompute what the steps claim from the raw inputs: the test
references, the trained adapter loaded by hand, the decoding that was asked for.
"""

import io
import json
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_script
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file

from components.data import read_tsv, source_text
from components.generation import DECODING_PRESETS, generate_predictions
from components.lora import merge_lora
from components.metrics import PROTOCOL_METRICS, compute_metrics
from components.modeling import apply_adapter_settings, load_base_model, load_finetuned, load_tokenizer, read_adapter_config
from pipelines.definition import STEP_NAMES


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
        run_script(clearml_home, "steps/evaluate.py", "--local", "--train-task-id", summary["task_ids"]["train"],
                   "--ingest-task-id", summary["task_ids"]["ingest"], "--decoding", decoding,
                   "--max-new-tokens", str(summary["parameters"]["max_new_tokens"]), "--max-samples", str(summary["parameters"]["max_test_samples"]),
                   "--compare-base", "false", "--output-dir", str(found[decoding]))  # the pipeline run itself scores the base
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
    for trained in (Path(results["train"]["outputs"]["adapter_dir"]) / "adapter.safetensors", tiny_pipeline / "train/checkpoints/best/adapter.safetensors"):
        assert trained.read_bytes() == registered.read_bytes()


def test_the_evaluation_generates_with_the_trained_adapter_and_the_decoding_asked_for(tiny_pipeline, candidates):
    """The pipeline's --decoding beam reached the evaluate step, which generated with the trained adapter.

    The model is assembled here without ``load_finetuned``: the base, the adapter shapes from
    adapter_config.json, the tensors of the train step's best checkpoint copied in.
    """
    base_model, settings = read_adapter_config(tiny_pipeline / "train" / "adapter")
    model, tokenizer = apply_adapter_settings(load_base_model(base_model), settings), load_tokenizer(base_model)
    test = evaluated_rows(tiny_pipeline, candidates["beam"])
    sources = [source_text(i, x) for i, x in zip(test["instruction"], test["input"])]
    max_new_tokens = evaluation_of(candidates["beam"])["decoding"]["max_new_tokens"]

    def decode(preset: str) -> list[str]:  # as the evaluate step does: batches of 16, the preset's settings
        return generate_predictions(model, tokenizer, sources, batch_size=16, **asdict(replace(DECODING_PRESETS[preset], max_new_tokens=max_new_tokens)))

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


def test_every_evaluation_scores_its_predictions_against_the_test_references(tiny_pipeline, candidates, summary):
    for name, directory in candidates.items():
        test = evaluated_rows(tiny_pipeline, directory)
        references = test["output"].tolist()
        sources = [source_text(i, x) for i, x in zip(test["instruction"], test["input"])]
        predictions = predictions_of(directory)
        expected = compute_metrics(predictions, references)
        metrics = evaluation_of(directory)["metrics"]
        assert metrics.keys() == {*expected, "loss"}, name  # the text metrics and the test loss
        assert {key: metrics[key] for key in expected} == pytest.approx(expected), name
        # Discriminating: scored against the inputs instead, the numbers would differ.
        assert compute_metrics(predictions, sources)["chrf"] != pytest.approx(expected["chrf"]), name
    assert summary["all_metrics"] == pytest.approx(evaluation_of(candidates["beam"])["metrics"])


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


def test_the_registered_model_directory_loads_and_generates(summary):
    model, tokenizer = load_finetuned(summary["model_dir"])
    [prediction] = generate_predictions(model, tokenizer, ["Назови столицу Франции."], max_new_tokens=8)
    assert isinstance(prediction, str)
    evaluation = json.loads((Path(summary["model_dir"]) / "evaluation.json").read_text())
    assert evaluation["metrics"]["chrf"] == summary["metrics"]["chrf"]


def test_generation_cli_uses_the_model_directory(summary, clearml_home):
    out = run_script(clearml_home, "-m", "components.generation", "--model-dir", summary["model_dir"],
                     "--decoding", "beam", "--max-new-tokens", "5", "Привет", "Как дела?").stdout
    assert "beam search with 4 beams" in out
    assert "> Привет" in out and "> Как дела?" in out


def _pickled_files(name: str, data: bytes) -> list[str]:
    """Files in ``data`` (opened recursively when it is a zip) that hold a pickle or are not valid safetensors."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        archive = zipfile.ZipFile(io.BytesIO(data))
        return [found for member in archive.namelist() if not member.endswith("/")
                for found in _pickled_files(f"{name}!{member}", archive.read(member))]
    if name.endswith(".safetensors"):
        load_safetensors(data)  # raises unless it is plain safetensors
        return []
    is_pickle = data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")  # pickle protocols 2 to 5
    return [name] if is_pickle or name.endswith((".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt")) else []


def test_nothing_is_pickled(tiny_pipeline, summary):
    """Every file the pipeline wrote, and every file in its offline ClearML sessions (artifacts, checkpoints, zips opened)."""
    files = [path for path in tiny_pipeline.rglob("*") if path.is_file()] + [Path(s) for s in summary["offline_sessions"]]
    assert any(path.name == "optimizer.safetensors" for path in files)  # the checkpoint is among them
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
