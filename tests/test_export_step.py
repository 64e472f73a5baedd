"""``steps/export.py`` in forked runs (``step_runs``) on random adapters of the tiny model: the decoding and input
length the export carries, its model card figure by figure, the CTranslate2 folder when asked, and on a server the
registered export with its parent, name, tags, metadata and publication."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import ASCII_LOCALE, random_adapter
from forked import run_main
from markdown_tables import table_rows
from step_runs import artifacts, model_package, run_step, task_record
from transformers import AutoTokenizer, GenerationConfig

from components.settings import AdapterSettings
from steps import export
from tests.clearml_server.process import ServerProcess
from tests.e2e.server_api import ServerApi

SETTINGS = AdapterSettings(lora_rank=3, prompt_length=3)
TRAINED_INPUT_LENGTH = 41  # what the registered folder's adapter_config.json records (not the default 100)
EVALUATION = {
    "metrics": {"bleu": 0.123456, "chrf": 0.98765, "loss": 2.5},
    "rows": 17,
    "max_input_length": 55,  # evaluated with an override: the card says so
    "decoding": {
        "preset": "beam",
        "num_beams": 3,
        "do_sample": False,
        "temperature": 1.0,
        "top_k": 50,
        "top_p": 1.0,
        "max_new_tokens": 9,
        "description": "beam search with 3 beams, at most 9 new tokens",
    },
}


@pytest.fixture(scope="module")
def registered(tiny_model_dir, tmp_path_factory) -> Path:
    """A registered model folder: an adapter with the evaluation the register step adds."""
    folder = random_adapter(tiny_model_dir, tmp_path_factory.mktemp("registered"), SETTINGS)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    (folder / "adapter_config.json").write_text(json.dumps({**config, "max_input_length": TRAINED_INPUT_LENGTH}), encoding="utf-8")
    digest = hashlib.sha256((folder / "adapter.safetensors").read_bytes()).hexdigest()  # the weights evaluated
    (folder / "evaluation.json").write_text(json.dumps({**EVALUATION, "adapter_sha256": digest}), encoding="utf-8")
    return folder


def card_figures(card: str) -> dict:
    return {
        "rows": table_rows(card, "| metric | value |") if "| metric |" in card else None,
        "front matter": card.split("---")[1].strip().splitlines(),
    }


def test_the_export_carries_the_evaluations_decoding_the_input_length_asked_for_and_its_scores(registered, tiny_model_dir, clearml_home, tmp_path):
    out = tmp_path / "out"
    completed, result = run_step(
        export.main,
        ["--local", "--model-dir", str(registered), "--max-input-length", "7", "--ctranslate2", "false", "--output-dir", str(out)],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    model = out / "model"
    generation = GenerationConfig.from_pretrained(model)
    assert {key: getattr(generation, key) for key in ("num_beams", "do_sample", "max_new_tokens")} == {
        "num_beams": 3,
        "do_sample": False,
        "max_new_tokens": 9,
    }
    assert AutoTokenizer.from_pretrained(model).model_max_length == 7 + SETTINGS.prompt_length
    prompt_ids = [1000, 1001, 1002]
    assert result["outputs"] == {
        "model_dir": str(model),
        "base_model": str(tiny_model_dir),
        "prompt_token_ids": prompt_ids,
        "lora_rank": 3,
        "decoding": EVALUATION["decoding"],
        "max_input_length": 7,
        "model_id": None,
    }
    assert f"Exported {registered} to {model}: a plain checkpoint, prompt tokens 1000..1002, inputs cut at 7 tokens." in completed.stdout.splitlines()
    assert not (out / "ctranslate2").exists() and "CTranslate2" not in completed.stdout and "Registered" not in completed.stdout
    assert (task_record(result)["name"], task_record(result)["type"]) == ("export", "custom")

    card = (model / "README.md").read_text(encoding="utf-8")
    assert card_figures(card) == {
        "rows": [["bleu", "0.1235"], ["chrf", "0.9877"], ["loss", "2.5000"]],
        # The base model is a local folder here: a name the hub refuses, so the front matter leaves it out.
        "front matter": [
            "language: ru",
            "library_name: transformers",
            "tags:",
            "- t5",
            "- text2text-generation",
            "- lora",
            "- prompt-tuning",
            "- russian",
        ],
    }
    assert f"# {tiny_model_dir}, fine-tuned with LoRA (rank 3) and prompt tuning (3 tokens), merged\n" in card
    assert "`generate` decodes as the evaluation did (beam search with 3 beams, at most 9 new tokens)\nand never emits the prompt tokens." in card
    assert "Inputs are truncated at 7 tokens plus the prompt" in card
    assert "weights, and the trained prompt is 3 tokens (`<prompt_0>` ...)" in card
    assert "must put the prompt ids (1000..1002) first" in card and "`max_decoding_length` = `max_new_tokens` (9)" in card
    assert (
        "## Evaluation\n\nOn 17 test rows, beam search with 3 beams, at most 9 new tokens, inputs cut at 55 tokens:\n\n| metric | value |\n|---|---|\n"
        in card
    )
    assert uploaded_names(result, clearml_home, tmp_path) == []  # offline: the folders are the step's output, not artifacts


def uploaded_names(result: dict, env: dict, tmp_path: Path) -> list[str]:
    return sorted(artifacts(result["task_id"], env, tmp_path))


@pytest.mark.parametrize("flag", [["--ctranslate2"], ["--ctranslate2", "true"]])
def test_a_folder_without_an_evaluation_exports_greedy_and_converts_when_asked(flag, registered, clearml_home, tmp_path):
    folder = shutil.copytree(registered, tmp_path / "unevaluated")
    (folder / "evaluation.json").unlink()
    out = tmp_path / "out"
    completed, result = run_step(export.main, ["--local", "--model-dir", str(folder), *flag, "--output-dir", str(out)], clearml_home)
    assert completed.returncode == 0, completed.stderr
    generation = GenerationConfig.from_pretrained(out / "model")
    assert (generation.num_beams, generation.do_sample, generation.max_new_tokens) == (1, False, 200)
    assert result["outputs"]["decoding"]["description"] == "greedy decoding, at most 200 new tokens"
    assert AutoTokenizer.from_pretrained(out / "model").model_max_length == TRAINED_INPUT_LENGTH + SETTINGS.prompt_length  # as trained
    card = (out / "model" / "README.md").read_text(encoding="utf-8")
    assert card.endswith("## Evaluation\n\nNot evaluated: the exported folder had no evaluation.json.\n")
    assert "(greedy decoding, at most 200 new tokens)\nand never emits" in card
    converted = out / "ctranslate2"
    assert (converted / "model.bin").is_file() and (converted / "README.md").read_bytes() == (out / "model" / "README.md").read_bytes()
    assert (
        result["outputs"]["ctranslate2_dir"] == str(converted) and f"Converted it for CTranslate2 into {converted}." in completed.stdout.splitlines()
    )


def test_without_a_model_the_step_names_both_options(clearml_home, tmp_path):
    completed, result = run_step(export.main, ["--local", "--output-dir", str(tmp_path)], clearml_home)
    assert (completed.returncode, completed.stderr.splitlines()[-1], result) == (
        1,
        "error: Give --register-task-id (a ClearML task id) or --model-dir (a model folder).",
        None,
    )


def register_task(folder: Path, model_name: str, publish: bool, env: dict, tmp_path: Path) -> tuple[str, str]:
    """A register task on the server, holding ``folder`` as its model artifact and registered model; (task id, model id)."""
    ids = tmp_path / "register-ids.json"

    def make(_argv) -> None:
        from clearml_adapter import tracking
        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(False)
        task = tracking.init_task("register", "custom")
        tracking.upload_path(task, "model", folder)
        model_id = tracking.register_model(task, model_name, folder, tags=["best"], metadata={}, publish=publish)
        ids.write_text(json.dumps([task.id, model_id]), encoding="utf-8")
        task.close()

    completed = run_main(make, [], env)
    assert completed.returncode == 0, completed.stderr
    return tuple(json.loads(ids.read_text(encoding="utf-8")))


@pytest.mark.parametrize("source", ["published register task", "unevaluated model folder"])  # published or not: both publish values
def test_on_a_server_the_export_is_a_model_whose_parent_is_the_adapter_model(source, registered, tiny_model_dir, clearml_home, tmp_path):
    with ServerProcess(tmp_path / "state") as server:  # not in this process: the test forks
        env = {**clearml_home, **server.environment()}
        api = ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
        if source == "unevaluated model folder":
            folder = shutil.copytree(registered, tmp_path / "unevaluated")
            (folder / "evaluation.json").unlink()
            given, adapter_id, published = ["--model-dir", str(folder)], None, False
        else:
            published = source.startswith("published")
            task_id, adapter_id = register_task(registered, "Мой T5", published, env, tmp_path)
            given = ["--register-task-id", task_id]
        completed, result = run_step(export.main, [*given, "--ctranslate2", "--output-dir", str(tmp_path / "out")], env)
        assert completed.returncode == 0, completed.stderr
        model_id = result["outputs"]["model_id"]
        model = api.call("models.get_by_id", model=model_id)["model"]
        uploaded = artifacts(result["task_id"], env, tmp_path)
        assert model["uri"].startswith(server.files_host)
        package = model_package(model["uri"])
    assert set(package) >= {"model.safetensors", "tokenizer.json", "README.md"}  # the export folder
    name = "Мой T5 (plain checkpoint)" if adapter_id else "ruT5-large LoRA+prompt (plain checkpoint)"
    assert (model["name"], model["tags"], model["task"], model.get("parent"), model["ready"]) == (
        name,
        ["plain checkpoint"],
        result["task_id"],
        adapter_id,
        published,
    )
    metadata = {key: entry["value"] for key, entry in model["metadata"].items()}
    scores = {"test_bleu": "0.123456", "test_chrf": "0.98765", "test_loss": "2.5"} if adapter_id else {}
    assert metadata == {**scores, "base_model": str(tiny_model_dir), "lora_rank": "3", "prompt_tokens": "3", "adapter_model_id": adapter_id or ""}
    lineage = f"from adapter model {adapter_id}" if adapter_id else "with no adapter model (given by --model-dir)"
    assert f"Registered the export as model {model_id}, {lineage}." in completed.stdout.splitlines()
    assert list(uploaded) == ["ctranslate2"] and (uploaded["ctranslate2"] / "model.bin").is_file()


def test_the_evaluation_and_the_card_are_utf_8_whatever_the_locale(registered, clearml_home, tmp_path):
    """Under the C locale, an evaluation whose decoding is described in Russian reaches the card as it is."""
    folder = shutil.copytree(registered, tmp_path / "registered")
    evaluation = json.loads((registered / "evaluation.json").read_text(encoding="utf-8"))
    described = {**evaluation, "decoding": {**EVALUATION["decoding"], "description": "лучевой поиск, 3 луча"}}
    (folder / "evaluation.json").write_text(json.dumps(described, ensure_ascii=False), encoding="utf-8")
    completed, _ = run_step(
        export.main, ["--local", "--model-dir", str(folder), "--output-dir", str(tmp_path / "out")], {**clearml_home, **ASCII_LOCALE}
    )
    assert completed.returncode == 0, completed.stderr
    assert "On 17 test rows, лучевой поиск, 3 луча, inputs cut at 55 tokens:" in (tmp_path / "out" / "model" / "README.md").read_text(
        encoding="utf-8"
    )
