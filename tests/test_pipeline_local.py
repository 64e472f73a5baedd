"""The tiny pipeline end to end, offline, on a machine with no ClearML configuration."""

import json
import zipfile
from pathlib import Path

from conftest import run_script

from components.modeling import load_finetuned
from components.generation import generate_predictions
from pipelines.definition import STEP_NAMES

PROTOCOL = {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "meteor"}


def test_summary_has_metrics_model_dir_and_one_task_per_step(tiny_pipeline):
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    assert set(summary["metrics"]) == set(summary["base_metrics"]) == PROTOCOL | {"loss"}
    assert all(0.0 <= summary[kind][name] <= 1.0 for kind in ("metrics", "base_metrics") for name in PROTOCOL)
    assert list(summary["task_ids"]) == list(STEP_NAMES)
    assert len(set(summary["task_ids"].values())) == len(STEP_NAMES)
    assert all(task_id.startswith("offline-") for task_id in summary["task_ids"].values())
    for session, task_id in zip(summary["offline_sessions"], summary["task_ids"].values()):
        assert Path(session).name == f"{task_id}.zip"
        assert "task.json" in {Path(n).name for n in zipfile.ZipFile(session).namelist()}


def test_steps_received_upstream_task_ids_as_on_a_server(tiny_pipeline):
    results = {name: json.loads((tiny_pipeline / name / "result.json").read_text()) for name in STEP_NAMES}
    ids = {name: result["task_id"] for name, result in results.items()}
    evaluation = results["evaluate"]["outputs"]
    assert evaluation["train_task_id"] == ids["train"]
    assert results["register"]["outputs"]["best_evaluate_task_id"] == ids["evaluate"]
    # the registered adapter is byte for byte the one the train task uploaded
    trained = Path(results["train"]["outputs"]["adapter_dir"]) / "adapter.safetensors"
    registered = Path(results["register"]["outputs"]["model_dir"]) / "adapter.safetensors"
    assert trained.read_bytes() == registered.read_bytes()


def test_the_registered_model_directory_loads_and_generates(tiny_pipeline):
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    model, tokenizer = load_finetuned(summary["model_dir"])
    [prediction] = generate_predictions(model, tokenizer, ["Назови столицу Франции."], max_new_tokens=8)
    assert isinstance(prediction, str)
    evaluation = json.loads((Path(summary["model_dir"]) / "evaluation.json").read_text())
    assert evaluation["metrics"]["chrf"] == summary["metrics"]["chrf"]


def test_generation_cli_uses_the_model_directory(tiny_pipeline, clearml_home):
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    out = run_script(clearml_home, "-m", "components.generation", "--model-dir", summary["model_dir"],
                     "--decoding", "beam", "--max-new-tokens", "5", "Привет", "Как дела?").stdout
    assert "beam search with 4 beams" in out
    assert "> Привет" in out and "> Как дела?" in out
