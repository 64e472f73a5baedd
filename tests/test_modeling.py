"""``components.modeling`` called directly: loading a base model and tokenizer (and each refusal's sentence), the adapter
model and its counts, the adapter folder file by file and back, the untuned base, the CPU thread rule, ruT5-large's shape."""

from __future__ import annotations

import json
import re
import shutil

import huggingface_hub
import pytest
import torch
from conftest import ASCII_LOCALE, random_adapter
from forked import run_main
from safetensors import safe_open
from safetensors.torch import load, load_file, save_file
from transformers import T5ForConditionalGeneration

from components.lora import LoRALayer, merge_lora
from components.modeling import (
    ModelLoadError,
    adapter_state_dict,
    adapter_weights_bytes,
    apply_adapter_settings,
    apply_peft,
    copy_adapter_tensors,
    input_length_for,
    load_adapter_weights,
    load_base_model,
    load_finetuned,
    load_tokenizer,
    load_untuned,
    parameter_stats,
    read_adapter_config,
    resolve_model_path,
    rut5_large_config,
    rut5_large_on_meta,
    save_adapter,
)
from components.prompt_tuning import PromptTuningEmbedding
from components.settings import AdapterSettings
from components.tiny import build_tiny_model

SETTINGS = AdapterSettings(lora_rank=3, lora_alpha=9.0, lora_dropout=0.0, prompt_length=2, lora_targets=("q", "k"))


def test_tiny_is_the_tiny_model_built_here_and_anything_else_is_passed_on(tiny_model_dir):
    assert resolve_model_path("tiny") == str(tiny_model_dir) == str(build_tiny_model())
    assert resolve_model_path("ai-forever/ruT5-large") == "ai-forever/ruT5-large"


def test_a_base_model_and_its_tokenizer_load_from_a_folder_in_the_dtype_asked_for(tiny_model_dir):
    model = load_base_model(str(tiny_model_dir), dtype=torch.bfloat16)
    assert isinstance(model, T5ForConditionalGeneration) and next(model.parameters()).dtype == torch.bfloat16
    assert next(load_base_model("tiny").parameters()).dtype == torch.float32
    assert load_tokenizer("tiny")("Привет")["input_ids"] == load_tokenizer(str(tiny_model_dir))("Привет")["input_ids"]


@pytest.mark.parametrize("load, what", [(load_base_model, "model"), (load_tokenizer, "tokenizer")])
def test_a_model_that_cannot_be_loaded_is_one_sentence_naming_the_setting(load, what, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as the step scripts' tests run (no minute of retries)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError) as refused:
        load(str(tmp_path / "empty"))
    message = str(refused.value)
    assert message.startswith(f"Cannot load the {what} from the directory {tmp_path / 'empty'} (")
    assert message.endswith("); set --model to a directory written by save_pretrained.")
    with pytest.raises(ModelLoadError) as refused:
        load("nobody/no-such-model")
    assert re.fullmatch(
        rf"Cannot load the {what} 'nobody/no-such-model': it is not a local directory and the Hugging Face Hub did not provide it "
        r"\((OSError|\w+Error)\); set --model to a hub id you can reach or a local model directory\.",
        str(refused.value),
    )


def test_the_adapter_model_freezes_the_base_and_wraps_the_targets(tiny_model_dir):
    model = apply_adapter_settings(load_base_model(str(tiny_model_dir)), SETTINGS)
    wrapped = {name.rsplit(".", 1)[1] for name, module in model.named_modules() if isinstance(module, LoRALayer)}
    assert wrapped == {"q", "k"}
    layer = next(module for module in model.modules() if isinstance(module, LoRALayer))
    assert (layer.rank, layer.scaling) == (3, 3.0) and isinstance(layer.dropout, torch.nn.Identity)
    assert isinstance(model.encoder.embed_tokens, PromptTuningEmbedding) and model.encoder.embed_tokens.prompt_length == 2
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == set(adapter_state_dict(model)) and all(name.endswith(("lora_A", "lora_B", "prompt")) for name in trainable)
    without_prompt = apply_peft(load_base_model(str(tiny_model_dir)), lora_rank=2, prompt_length=0)
    assert not isinstance(without_prompt.encoder.embed_tokens, PromptTuningEmbedding)


def test_parameter_counts_count_shared_tensors_once(tiny_model_dir):
    model = apply_adapter_settings(load_base_model(str(tiny_model_dir)), SETTINGS)
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    trainable = sum(p.numel() for p in unique.values() if p.requires_grad)
    assert parameter_stats(model) == {"total": total, "trainable": trainable, "trainable_percent": 100.0 * trainable / total}
    assert total < sum(p.numel() for name, p in model.state_dict().items())  # the tied embeddings, once


def test_an_adapter_folder_holds_the_trained_tensors_its_settings_and_the_tokenizer(tiny_model_dir, tmp_path):
    folder = random_adapter(tiny_model_dir, tmp_path / "adapter", SETTINGS)
    assert sorted(path.name for path in folder.iterdir() if not path.name.startswith("tokenizer")) == ["adapter.safetensors", "adapter_config.json"]
    config_text = (folder / "adapter_config.json").read_text(encoding="utf-8")
    assert json.loads(config_text) == {
        "base_model": str(tiny_model_dir),
        "lora_rank": 3,
        "lora_alpha": 9.0,
        "lora_dropout": 0.0,
        "prompt_length": 2,
        "lora_targets": ["q", "k"],
        "max_input_length": 100,  # save_adapter's default: the train step passes the length its data was cut at
    }
    assert config_text == json.dumps(json.loads(config_text), indent=2, ensure_ascii=False) + "\n"
    assert read_adapter_config(folder) == (str(tiny_model_dir), SETTINGS)
    model, _ = load_finetuned(folder, merge=False)
    saved = load_file(str(folder / "adapter.safetensors"))
    assert saved.keys() == adapter_state_dict(model).keys()
    assert all(torch.equal(saved[name], tensor) for name, tensor in adapter_state_dict(model).items())
    assert (folder / "tokenizer_config.json").is_file()


def test_the_adapter_file_is_the_trainable_tensors_on_the_cpu_and_refuses_merged_layers(tiny_model_dir):
    model = apply_adapter_settings(load_base_model(str(tiny_model_dir)), SETTINGS)
    tensors = load(adapter_weights_bytes(model))
    assert tensors.keys() == adapter_state_dict(model).keys() and all(t.device.type == "cpu" for t in tensors.values())
    merge_lora(model)
    with pytest.raises(ValueError, match="^Unmerge the LoRA layers before saving the adapter.$"):
        adapter_weights_bytes(model)


def test_a_finetuned_model_loads_merged_or_not_and_in_eval_mode(tiny_model_dir, tmp_path):
    folder = random_adapter(tiny_model_dir, tmp_path / "adapter", SETTINGS)
    merged, tokenizer = load_finetuned(folder)
    unmerged, _ = load_finetuned(folder, merge=False)
    layers = [[m.merged for m in model.modules() if isinstance(m, LoRALayer)] for model in (merged, unmerged)]
    assert all(layers[0]) and not any(layers[1]) and not merged.training and not unmerged.training
    ids = tokenizer(["Назови столицу."], return_tensors="pt")["input_ids"]
    mask = torch.ones(1, ids.shape[1] + 2, dtype=torch.long)
    with torch.no_grad():
        outputs = [
            model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.zeros(1, 1, dtype=torch.long)).logits for model in (merged, unmerged)
        ]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    assert next(load_finetuned(folder, dtype=torch.bfloat16)[0].parameters()).dtype == torch.bfloat16


def test_the_untuned_base_has_the_adapters_as_training_starts_them(tiny_model_dir, tmp_path):
    folder = random_adapter(tiny_model_dir, tmp_path / "adapter", SETTINGS)
    untuned, tokenizer = load_untuned(folder)
    assert all(not m.lora_B.any() for m in untuned.modules() if isinstance(m, LoRALayer)) and not untuned.training
    fresh = apply_adapter_settings(load_base_model(str(tiny_model_dir)), SETTINGS)
    assert torch.equal(untuned.encoder.embed_tokens.prompt, fresh.encoder.embed_tokens.prompt)
    assert tokenizer("да")["input_ids"] == load_tokenizer(str(folder))("да")["input_ids"]
    assert next(load_untuned(folder, dtype=torch.bfloat16)[0].parameters()).dtype == torch.bfloat16


def test_an_adapter_file_that_does_not_fit_is_refused_naming_what_differs(tiny_model_dir, tmp_path):
    model = apply_adapter_settings(load_base_model(str(tiny_model_dir)), SETTINGS)
    tensors = dict(adapter_state_dict(model))
    name = sorted(tensors)[0]
    with pytest.raises(ModelLoadError) as refused:
        copy_adapter_tensors(model, {k: v for k, v in tensors.items() if k != name}, "some/adapter.safetensors")
    assert str(refused.value) == (
        f"some/adapter.safetensors does not fit the model: 1 missing and 0 unexpected tensors (e.g. {name}); "
        "check lora_rank, prompt_length and the base model in adapter_config.json."
    )
    with pytest.raises(ModelLoadError) as refused:
        copy_adapter_tensors(model, {**tensors, "extra.lora_A": torch.zeros(1)}, "some/adapter.safetensors")
    assert "0 missing and 1 unexpected tensors (e.g. extra.lora_A)" in str(refused.value)
    with pytest.raises(ModelLoadError) as refused:
        copy_adapter_tensors(model, {**tensors, name: torch.zeros(7, 7)}, "some/adapter.safetensors")
    assert str(refused.value) == (
        f"some/adapter.safetensors: {name} has shape (7, 7), the model expects {tuple(tensors[name].shape)}: "
        "the adapter was not trained on the base model its adapter_config.json names."
    )
    (tmp_path / "torn.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError) as refused:
        load_adapter_weights(model, tmp_path / "torn.safetensors")
    assert str(refused.value).startswith(f"{tmp_path / 'torn.safetensors'} is not a readable safetensors file (")
    assert str(refused.value).endswith("); copy the folder again from the train or register step.")


def test_a_folder_that_is_not_an_adapter_is_refused_naming_what_to_give(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError) as refused:
        read_adapter_config(tmp_path)
    assert (
        str(refused.value) == f"{tmp_path / 'adapter_config.json'} not found; --model-dir must be a directory written by the train or register step."
    )
    with pytest.raises(ModelLoadError) as refused:
        read_adapter_config(tiny_model_dir)
    assert str(refused.value) == (
        f"{tiny_model_dir} is a plain model folder (config.json, no adapter_config.json), such as the export step writes: "
        "load it with AutoModelForSeq2SeqLM, or give the adapter folder of the train or register step."
    )
    folder = random_adapter(tiny_model_dir, tmp_path / "adapter", SETTINGS)
    (folder / "tokenizer_config.json").unlink()
    for loader in (load_finetuned, load_untuned):
        with pytest.raises(ModelLoadError) as refused:
            loader(folder)
        assert str(refused.value) == (
            f"{folder / 'tokenizer_config.json'} not found: a model directory holds its tokenizer, so give the whole folder "
            "the train or register step wrote."
        )


def test_rut5_large_with_the_published_adapters_has_the_published_counts():
    model = rut5_large_on_meta()
    assert parameter_stats(model)["total"] == 740_047_872 and parameter_stats(model)["trainable"] == 2_379_776
    assert next(model.parameters()).device.type == "meta"
    config = rut5_large_config()
    assert (config.d_model, config.num_layers, config.vocab_size, config.eos_token_id) == (1024, 24, 32128, 2)
    # 144 wrapped linears (q, v of 24 encoder and 2 x 24 decoder attentions), each r x (1024 + 1024); no prompt.
    assert parameter_stats(rut5_large_on_meta(AdapterSettings(lora_rank=4, prompt_length=0)))["trainable"] == 144 * 4 * 2048


@pytest.mark.parametrize(
    "load, auto",
    [
        (load_base_model, ("config.json", "AutoModelForSeq2SeqLM", "custom.Model")),
        (load_tokenizer, ("tokenizer_config.json", "AutoTokenizer", ["custom.Tokenizer", None])),
    ],
)
def test_code_in_a_model_folder_is_never_run(load, auto, tiny_model_dir, tmp_path):
    """A folder whose config maps the class to its own Python file (``auto_map``): loaded as the stock T5 class, the file
    never imported."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    file, auto_class, target = auto
    config = json.loads((folder / file).read_text(encoding="utf-8"))
    (folder / file).write_text(json.dumps({**config, "auto_map": {auto_class: target}}), encoding="utf-8")
    marker = tmp_path / "ran"
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    loaded = load(str(folder))
    assert type(loaded).__module__.startswith("transformers.") and not marker.exists()


def test_an_adapter_file_is_safetensors_marked_as_pytorch_tensors(tiny_model_dir, tmp_path):
    folder = random_adapter(tiny_model_dir, tmp_path / "adapter", SETTINGS)
    with safe_open(str(folder / "adapter.safetensors"), framework="pt") as opened:
        assert opened.metadata() == {"format": "pt"}  # what transformers and PEFT check before loading


def test_an_adapter_is_saved_into_a_new_nested_folder_and_again_over_it(tiny_model_dir, tmp_path):
    model = apply_adapter_settings(load_base_model(str(tiny_model_dir)), SETTINGS)
    target = tmp_path / "runs" / "one" / "adapter"
    for _ in range(2):
        assert save_adapter(model, target, "tiny", SETTINGS, load_tokenizer("tiny")) == target
    assert (target / "adapter.safetensors").read_bytes() == adapter_weights_bytes(model)


def test_an_adapter_file_that_does_not_fit_is_named_by_its_path(tiny_model_dir, tmp_path):
    folder = random_adapter(tiny_model_dir, tmp_path / "adapter", SETTINGS)
    other = apply_adapter_settings(load_base_model(str(tiny_model_dir)), AdapterSettings(lora_rank=5, prompt_length=2, lora_targets=("q", "k")))
    with pytest.raises(ModelLoadError, match=rf"^{re.escape(str(folder / 'adapter.safetensors'))}: \S+ has shape \("):
        load_adapter_weights(other, folder / "adapter.safetensors")


def test_an_adapter_of_a_base_with_a_russian_name_is_utf_8_whatever_the_locale(tiny_model_dir, clearml_home, tmp_path):
    """Saved and read back under the C locale (in a forked run): its config keeps the name as it is, in UTF-8."""
    base = shutil.copytree(tiny_model_dir, tmp_path / "база")
    found = tmp_path / "found.json"

    def main(_argv):
        folder = random_adapter(base, tmp_path / "adapter", SETTINGS)
        found.write_text(json.dumps(read_adapter_config(folder)[0]), encoding="utf-8")

    completed = run_main(main, [], {**clearml_home, **ASCII_LOCALE})
    assert completed.returncode == 0, completed.stderr
    assert json.loads(found.read_text(encoding="utf-8")) == str(base)
    assert f'"base_model": "{base}"' in (tmp_path / "adapter" / "adapter_config.json").read_text(encoding="utf-8")


def test_the_input_length_is_the_one_asked_for_or_else_the_one_recorded_and_never_a_default(tiny_model_dir, tmp_path):
    folder = random_adapter(tiny_model_dir, tmp_path / "adapter", SETTINGS)
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    (folder / "adapter_config.json").write_text(json.dumps({**config, "max_input_length": 23}), encoding="utf-8")
    assert (input_length_for(folder), input_length_for(folder, 7)) == (23, 7)
    del config["max_input_length"]  # an adapter saved before the length was recorded
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert input_length_for(folder, 7) == 7
    with pytest.raises(ModelLoadError) as refused:
        input_length_for(folder)
    assert str(refused.value) == (
        f"{folder / 'adapter_config.json'} records no max_input_length (the adapter was saved before it was recorded): "
        "give --max-input-length, the preprocess step's value it was trained with."
    )


def test_a_non_finite_adapter_tensor_is_refused_naming_the_file_and_the_tensor(tiny_model_dir, tmp_path):
    folder = random_adapter(tiny_model_dir, tmp_path / "adapter", SETTINGS)
    tensors = load_file(folder / "adapter.safetensors")
    name = sorted(tensors)[-1]
    tensors[name].view(-1)[-1] = float("inf")
    save_file(tensors, folder / "adapter.safetensors")
    with pytest.raises(ModelLoadError) as refused:
        load_finetuned(folder)
    assert str(refused.value) == (
        f"{folder / 'adapter.safetensors'}: {name} holds non-finite values (NaN or inf); the training diverged, so evaluate another checkpoint."
    )
