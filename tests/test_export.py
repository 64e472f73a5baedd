"""The tiny pipeline's registered model exported as a plain Hugging Face checkpoint: loaded by a process that
cannot import this project, it generates token for token what ``load_finetuned`` generates."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch
from agent_simulation import offline_task_file
from conftest import ROOT, run_script, small_t5_config
from markdown_tables import table_rows
from readme_commands import the_command
from safetensors.torch import load_file, save_file
from tolerances import EXPORT_LOGITS_RTOL
from transformers import T5ForConditionalGeneration

from components.data import source_text
from components.decoding import Decoding
from components.export.ctranslate2_model import BEAM_PATIENCE
from components.export.model_card import card_metadata
from components.export.plain_checkpoint import T5_CLASSES_REFUSED, export_plain_checkpoint
from components.generation import generate_predictions
from components.modeling import ModelLoadError, input_length_for, load_finetuned, resolve_model_path
from components.prompt_tuning import extend_attention_mask

PROMPT_TENSOR = "encoder.embed_tokens.prompt"
MERGED_WEIGHT = "encoder.block.0.layer.0.SelfAttention.q.weight"
MAX_INPUT_LENGTH = 12  # shorter than many test inputs: the export must truncate where the pipeline does
# Run with ``python -I`` from an empty folder: no project on sys.path, nothing but the stock libraries.
STOCK_RUNTIME = r"""
import importlib.util, json, sys
import ctranslate2, torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
assert importlib.util.find_spec("components") is None, "the project is importable"
torch.set_num_threads(1)
export, converted, texts, max_new_tokens = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read()), int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(export)
model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
found = {"tokenizer": type(tokenizer).__name__}
with torch.no_grad():
    found["configured"] = model.generate(**batch).tolist()
    found["greedy"] = model.generate(**batch, num_beams=1, max_new_tokens=max_new_tokens).tolist()
    beam = model.generate(**batch, num_beams=4, max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_scores=True)
    found["beam"], found["beam_scores"] = beam.sequences.tolist(), beam.sequences_scores.tolist()
    start = torch.full((len(texts), 1), model.config.decoder_start_token_id)
    found["logits"] = model(**batch, decoder_input_ids=start).logits[:, 0].tolist()
# CTranslate2 takes tokens by name: the converted folder's tokenizer makes the ids (prompt first), its vocabulary names them.
tokenizer = AutoTokenizer.from_pretrained(converted)
with open(f"{converted}/shared_vocabulary.json", encoding="utf-8") as handle:
    names = json.load(handle)
with open(f"{converted}/generation_config.json") as handle:
    suppress = [[names[i]] for i in json.load(handle)["suppress_tokens"]]
sources = [[names[i] for i in ids] for ids in tokenizer(texts, truncation=True)["input_ids"]]
translator = ctranslate2.Translator(converted, device="cpu", intra_threads=1)
results = translator.translate_batch(sources, beam_size=1, max_decoding_length=max_new_tokens, min_decoding_length=0, suppress_sequences=suppress)
found["ctranslate2_greedy"] = [[names.index(token) for token in result.hypotheses[0]] for result in results]
found["ctranslate2_prompt"] = sources[0][:len(suppress)] == [token for [token] in suppress]
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def exported(tiny_pipeline, clearml_home, tmp_path_factory) -> tuple[Path, dict]:
    """The README's export command (with ``--ctranslate2``) on the tiny pipeline's registered model: its output folder."""
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    output = tmp_path_factory.mktemp("export")
    readme = the_command("python steps/export.py", "--local").replace("<register task id>", summary["task_ids"]["register"])
    arguments = shlex.split(readme)[2:]  # the README's command, less "python steps/export.py"
    assert arguments[arguments.index("--register-task-id") + 1] == summary["task_ids"]["register"] and "--ctranslate2" in arguments
    run_script(clearml_home, "steps/export.py", *arguments, "--max-input-length", str(MAX_INPUT_LENGTH), "--output-dir", str(output))
    return output, summary


def ended(sequence: list[int], eos_token_id: int) -> list[int]:
    """A ``generate`` output as CTranslate2 gives it: no decoder start token, nothing from the end of sequence on."""
    new = sequence[1:]
    return new[: new.index(eos_token_id)] if eos_token_id in new else new


@pytest.mark.numeric
def test_a_stock_runtime_generates_what_the_adapter_model_generates(exported, tiny_pipeline, tmp_path, one_thread):
    output, summary = exported
    export = output / "model"
    test = pd.read_csv(tiny_pipeline / "ingest" / "splits" / "test.tsv", sep="\t", dtype=str, keep_default_na=False).head(24)
    texts = [source_text(i, x) for i, x in zip(test["instruction"], test["input"])]
    max_new_tokens = summary["parameters"]["max_new_tokens"]
    stock = subprocess.run(
        [sys.executable, "-I", "-c", STOCK_RUNTIME, str(export), str(output / "ctranslate2"), str(max_new_tokens)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert stock.returncode == 0, stock.stderr[-3000:]
    found = json.loads(stock.stdout.strip().splitlines()[-1])
    assert found["tokenizer"] == "TokenizersBackend"

    model, tokenizer = load_finetuned(tiny_pipeline / "register" / "model")
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=MAX_INPUT_LENGTH, return_tensors="pt")
    assert (encoded["attention_mask"].sum(1) == MAX_INPUT_LENGTH).sum() >= 3  # some inputs are cut
    prompt_length = model.encoder.embed_tokens.prompt_length
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": extend_attention_mask(encoded["attention_mask"], prompt_length)}
    with torch.no_grad():
        greedy = model.generate(**inputs, num_beams=1, max_new_tokens=max_new_tokens).tolist()
        beam = model.generate(**inputs, num_beams=4, max_new_tokens=max_new_tokens, return_dict_in_generate=True, output_scores=True)
        logits = model(**inputs, decoder_input_ids=torch.zeros((len(texts), 1), dtype=torch.long)).logits[:, 0]
    assert found["greedy"] == greedy
    assert found["beam"] == beam.sequences.tolist()
    assert summary["parameters"]["decoding"] == "beam" and found["configured"] == found["beam"]  # the evaluation's decoding
    vocabulary = logits.shape[1]
    stock_logits = torch.tensor(found["logits"])
    assert stock_logits.shape[1] == vocabulary + prompt_length
    torch.testing.assert_close(stock_logits[:, :vocabulary], logits, rtol=0, atol=EXPORT_LOGITS_RTOL * logits.abs().max().item())
    # Beam search normalises before it suppresses: without renormalize_logits the prompt rows' probability mass
    # would lower every score (by about 0.01 here, 100 times the tolerance); with it the scores are the adapter model's.
    torch.testing.assert_close(torch.tensor(found["beam_scores"]), beam.sequences_scores, rtol=0, atol=1e-4)
    prompt_ids = set(range(vocabulary, vocabulary + prompt_length))
    assert not prompt_ids & {token for sequence in found["beam"] + found["greedy"] for token in sequence}
    # CTranslate2's greedy search on the converted export: the same tokens.
    assert found["ctranslate2_prompt"]
    assert found["ctranslate2_greedy"] == [ended(sequence, tokenizer.eos_token_id) for sequence in greedy]


def test_the_export_is_safetensors_with_a_tokenizer_that_prepends_the_prompt(exported, tiny_pipeline, clearml_home, tmp_path):
    output, _ = exported
    export = output / "model"
    assert sorted(path.name for path in export.iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sorted(path.name for path in (output / "ctranslate2").iterdir()) == [
        "README.md",
        "config.json",
        "generation_config.json",
        "model.bin",
        "shared_vocabulary.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    for name in ("generation_config.json", "tokenizer.json"):
        assert (output / "ctranslate2" / name).read_bytes() == (export / name).read_bytes()
    tokenizer_config = json.loads((export / "tokenizer_config.json").read_text())
    prompt_length = json.loads((tiny_pipeline / "register" / "model" / "adapter_config.json").read_text())["prompt_length"]
    # What a stock loader needs and nothing inherited: no max_length, no extra_special_tokens (a list transformers 4 cannot load).
    assert tokenizer_config == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": MAX_INPUT_LENGTH + prompt_length,
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        "extra_ids": T5_CLASSES_REFUSED,
    }
    # tokenizer.json truncates where the pipeline does, whatever the adapter tokenizer's file said (the tiny one's cuts at 48), and never pads.
    adapter_tokenizer = json.loads((tiny_pipeline / "register" / "model" / "tokenizer.json").read_text())
    assert adapter_tokenizer["truncation"]["max_length"] != MAX_INPUT_LENGTH + prompt_length
    backend = json.loads((export / "tokenizer.json").read_text())
    assert (backend["truncation"]["max_length"], backend["truncation"]["direction"], backend["padding"]) == (
        MAX_INPUT_LENGTH + prompt_length,
        "Right",
        None,
    )
    assert [token["content"] for token in backend["added_tokens"]] == [
        token["content"] for token in adapter_tokenizer["added_tokens"]
    ]  # no prompt token
    assert "**Not with `T5Tokenizer` or `T5TokenizerFast`**" in (export / "README.md").read_text()  # the card warns of what the matrix shows
    generation = json.loads((export / "generation_config.json").read_text())
    vocabulary = json.loads((export / "config.json").read_text())["vocab_size"] - prompt_length
    assert generation["suppress_tokens"] == list(range(vocabulary, vocabulary + prompt_length)) and generation["renormalize_logits"]
    # The same registered folder given by path exports the same weights.
    run_script(
        clearml_home,
        "steps/export.py",
        "--local",
        "--model-dir",
        str(tiny_pipeline / "register" / "model"),
        "--max-input-length",
        str(MAX_INPUT_LENGTH),
        "--output-dir",
        str(tmp_path),
    )
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == (export / "model.safetensors").read_bytes()
    assert not (tmp_path / "ctranslate2").exists()  # converted only when asked


def test_the_model_card_states_the_registered_models_settings_and_test_scores(exported, tiny_pipeline):
    """Every figure of the card, read back against where it comes from: the adapter's config, the launch's parameters
    and the evaluate step's own evaluation.json (the tuned scores, which here differ from the base's)."""
    output, summary = exported
    card = (output / "model" / "README.md").read_text()
    adapter = json.loads((tiny_pipeline / "register" / "model" / "adapter_config.json").read_text())
    evaluation = json.loads((tiny_pipeline / "evaluate" / "evaluation.json").read_text())
    assert f"fine-tuned with LoRA (rank {adapter['lora_rank']}) and prompt tuning ({adapter['prompt_length']} tokens)" in card
    assert f"Inputs are truncated at {MAX_INPUT_LENGTH} tokens plus the prompt" in card
    assert (
        f"On {evaluation['rows']} test rows, {evaluation['decoding']['description']}, inputs cut at {evaluation['max_input_length']} tokens:" in card
    )
    assert (
        evaluation["max_input_length"] == json.loads((tiny_pipeline / "register" / "model" / "adapter_config.json").read_text())["max_input_length"]
    )
    assert f"`max_decoding_length` = `max_new_tokens` ({evaluation['decoding']['max_new_tokens']})" in card
    assert evaluation["rows"] == summary["parameters"]["max_test_samples"]
    rows = table_rows(card, "| metric | value |")
    assert [name for name, _ in rows] == list(evaluation["metrics"])
    for name, value in rows:  # 4 decimals
        assert float(value) == pytest.approx(evaluation["metrics"][name], abs=5e-5), name
    assert any(round(evaluation["metrics"][name], 4) != round(evaluation["base_metrics"][name], 4) for name in evaluation["metrics"])


def test_bad_input_is_one_sentence_naming_the_file(tiny_pipeline, tmp_path):
    registered = tiny_pipeline / "register" / "model"
    corrupted, other_base = shutil.copytree(registered, tmp_path / "corrupted"), shutil.copytree(registered, tmp_path / "other-base")
    (corrupted / "adapter.safetensors").write_bytes((registered / "adapter.safetensors").read_bytes()[:3000])
    # The same layers as the tiny base, narrower: every adapter tensor has another shape.
    T5ForConditionalGeneration(small_t5_config(num_layers=2, num_decoder_layers=2)).save_pretrained(tmp_path / "small-base")
    config = json.loads((other_base / "adapter_config.json").read_text())
    (other_base / "adapter_config.json").write_text(json.dumps({**config, "base_model": str(tmp_path / "small-base")}))
    exported = tmp_path / "exported"
    export_plain_checkpoint(registered, exported, decoding=asdict(Decoding()) | {"description": ""}, max_input_length=MAX_INPUT_LENGTH)
    # A diverged training: a NaN in the prompt. A broken base: an inf in a weight the LoRA update is merged into.
    nan_adapter, inf_base = shutil.copytree(registered, tmp_path / "nan-adapter"), shutil.copytree(registered, tmp_path / "inf-base")
    tensors = load_file(registered / "adapter.safetensors")
    tensors[PROMPT_TENSOR][3, 1] = float("nan")
    save_file(tensors, nan_adapter / "adapter.safetensors")
    base = T5ForConditionalGeneration.from_pretrained(resolve_model_path(config["base_model"]))
    with torch.no_grad():
        base.get_submodule(MERGED_WEIGHT.removesuffix(".weight")).weight[0, 0] = float("inf")
    base.save_pretrained(tmp_path / "inf-base-model")
    (inf_base / "adapter_config.json").write_text(json.dumps({**config, "base_model": str(tmp_path / "inf-base-model")}))
    expected = {
        corrupted: "adapter.safetensors is not a readable safetensors file",
        other_base: "the adapter was not trained on the base model",
        exported: "is a plain model folder (config.json, no adapter_config.json)",
        nan_adapter: f"adapter.safetensors: {PROMPT_TENSOR} holds non-finite values (NaN or inf)",
        inf_base: f"the merged {MERGED_WEIGHT} holds non-finite values (NaN or inf)",
    }
    for folder, message in expected.items():
        with pytest.raises(ModelLoadError) as refused:
            export_plain_checkpoint(folder, tmp_path / "out", decoding={}, max_input_length=MAX_INPUT_LENGTH)
        assert message in str(refused.value) and str(folder) in str(refused.value) and "\n" not in str(refused.value)


def test_the_pipeline_exports_its_registered_model_when_asked(exported, tiny_pipeline, clearml_home):
    """The session's pipeline run ends with the export step (``--export true --export-ctranslate2 true``): a task handed
    the register task's id whose folders are, file for file, what the README's command makes of that task's model,
    at the pipeline's input length (the README's ran at MAX_INPUT_LENGTH)."""
    by_command, summary = exported
    assert list(summary["task_ids"]) == ["ingest", "preprocess", "train", "evaluate", "register", "export"]
    args = json.loads(offline_task_file(Path(clearml_home["CLEARML_CACHE_DIR"]), summary["task_ids"]["export"]).read_text())["hyperparams"]["Args"]
    assert (args["register_task_id"]["value"], args["ctranslate2"]["value"]) == (summary["task_ids"]["register"], "true")
    by_pipeline = tiny_pipeline / "export"
    assert summary["export"]["model_dir"] == str(by_pipeline / "model") and summary["export"]["ctranslate2_dir"] == str(by_pipeline / "ctranslate2")
    prompt_length = json.loads((tiny_pipeline / "register" / "model" / "adapter_config.json").read_text())["prompt_length"]
    # The one difference, each run's input length: file -> where it is written, and what is added to it there.
    input_length_in = {
        "README.md": ("Inputs are truncated at {} tokens", 0),
        "tokenizer_config.json": ('"model_max_length": {}', prompt_length),
        "tokenizer.json": ('"max_length": {}', prompt_length),
    }
    for folder in ("model", "ctranslate2"):
        names = sorted(path.name for path in (by_command / folder).iterdir())
        assert sorted(path.name for path in (by_pipeline / folder).iterdir()) == names
        for name in names:
            made, expected = (by_pipeline / folder / name).read_bytes(), (by_command / folder / name).read_bytes()
            if name in input_length_in:
                pattern, added = input_length_in[name]
                command_text, pipeline_text = (
                    pattern.format(length + added).encode() for length in (MAX_INPUT_LENGTH, summary["parameters"]["max_input_length"])
                )
                assert command_text in expected and pipeline_text in made, f"{folder}/{name}"
                expected = expected.replace(command_text, pipeline_text)
            assert made == expected, f"{folder}/{name}"


def test_the_export_cuts_where_the_model_was_trained_to_and_refuses_an_evaluation_of_other_weights(tiny_pipeline, clearml_home, tmp_path):
    """Without --max-input-length the export reads the length adapter_config.json records (here not the default);
    an evaluation.json whose adapter digest is not the folder's is refused, its figures never shown for these weights."""
    registered = shutil.copytree(tiny_pipeline / "register" / "model", tmp_path / "registered")
    config = json.loads((registered / "adapter_config.json").read_text())
    (registered / "adapter_config.json").write_text(json.dumps({**config, "max_input_length": 37}))
    run_script(clearml_home, "steps/export.py", "--local", "--model-dir", str(registered), "--output-dir", str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "model" / "tokenizer_config.json").read_text())["model_max_length"] == 37 + config["prompt_length"]
    assert json.loads((tmp_path / "out" / "model" / "tokenizer.json").read_text())["truncation"]["max_length"] == 37 + config["prompt_length"]

    evaluation = json.loads((registered / "evaluation.json").read_text())
    (registered / "evaluation.json").write_text(json.dumps({**evaluation, "adapter_sha256": "0" * 64}))
    refused = run_script(
        clearml_home, "steps/export.py", "--local", "--model-dir", str(registered), "--output-dir", str(tmp_path / "again"), check=False
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: {registered / 'evaluation.json'} does not describe {registered / 'adapter.safetensors'} (its adapter_sha256 is {'0' * 64}): "
        "evaluate these weights again, or remove it to export without figures."
    )
    assert not (tmp_path / "again" / "model").exists()


# Runs a python block of docs/export.md in a process that cannot import the project, the block's folders replaced by the run's.
DOCUMENTED_SNIPPET = r"""
import importlib.util, json, sys
assert importlib.util.find_spec("components") is None, "the project is importable"
exec(sys.stdin.read())
print(json.dumps(answer, ensure_ascii=False))
"""


def python_blocks(document: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", document.read_text(encoding="utf-8"), re.S | re.M)


@pytest.mark.numeric
def test_the_documented_snippets_answer_what_the_project_answers(tiny_pipeline, tmp_path, one_thread):
    """docs/export.md's transformers and CTranslate2 snippets, run as written on the session pipeline's export (its
    evaluation decoded with beam search, so the CTranslate2 snippet's beam settings are the ones tried), answer the
    documented instruction as ``generate_predictions`` does with the registered adapter folder."""
    registered = tiny_pipeline / "register" / "model"
    decoding = json.loads((registered / "evaluation.json").read_text())["decoding"]
    assert decoding["num_beams"] == 4
    text = "Переведи на английский.\nДоброе утро"
    model, tokenizer = load_finetuned(registered)
    settings = {key: decoding[key] for key in ("num_beams", "do_sample", "temperature", "top_k", "top_p", "max_new_tokens")}
    [expected] = generate_predictions(model, tokenizer, [text], max_input_length=input_length_for(registered), **settings)
    blocks = python_blocks(ROOT / "docs" / "export.md")
    assert len(blocks) == 2 and all(json.dumps(text, ensure_ascii=False)[1:-1] in block for block in blocks)
    assert f"patience={BEAM_PATIENCE}" in blocks[1]
    for block in blocks:
        snippet = block.replace("runs/export/", f"{tiny_pipeline}/export/")
        assert snippet != block
        completed = subprocess.run(
            [sys.executable, "-I", "-c", DOCUMENTED_SNIPPET], input=snippet, capture_output=True, text=True, cwd=tmp_path, timeout=300
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert json.loads(completed.stdout.strip().splitlines()[-1]).strip() == expected != ""


def test_the_model_cards_metadata_is_huggingface_hubs_and_names_only_a_hub_base_model(tiny_pipeline, tmp_path):
    """The front matter, as huggingface_hub parses it: no pipeline_tag (transformers 5 has no pipeline task for
    encoder-decoder generation: text2text-generation is gone and text-generation refuses T5), and the base model
    only when the hub knows it: the session's tiny model and a local folder are left out (the hub refuses a path)."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(tiny_pipeline / "export" / "model" / "README.md")
    assert (card.data.library_name, card.data.language, card.data.pipeline_tag, card.data.base_model) == ("transformers", "ru", None, None)
    assert "lora" in card.data.tags and "prompt-tuning" in card.data.tags
    for base_model, named in (("ai-forever/ruT5-large", "ai-forever/ruT5-large"), (str(tmp_path), None), ("tiny", None)):
        assert ModelCard(f"---\n{card_metadata(base_model)}---\n").data.base_model == named, base_model
