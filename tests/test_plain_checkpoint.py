"""``components.export.plain_checkpoint`` on adapters the tests train by hand (random LoRA and prompt tensors on the tiny
model): every weight of the export recomputed from the base and the adapter file, the tokenizer's prompt, the
generation settings, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import random_adapter
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5ForConditionalGeneration

from components.export.plain_checkpoint import export_plain_checkpoint, name_every_id, prompt_token_names
from components.modeling import load_finetuned, load_tokenizer
from components.prompt_tuning import extend_attention_mask
from components.settings import AdapterSettings

SETTINGS = AdapterSettings(lora_rank=2, lora_alpha=6.0, lora_dropout=0.0, prompt_length=3)  # alpha / r = 3, not the default 2
DECODING = {"num_beams": 2, "do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "max_new_tokens": 7, "description": "beam sampling"}
MAX_INPUT_LENGTH = 6
TEXTS = ["Назови столицу России.", "Сколько будет два плюс два? Ответь одним словом, пожалуйста, и коротко."]


@pytest.fixture(scope="module")
def padded_base(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny base with 5 vocabulary rows past its tokenizer (as ruT5's padded embedding has)."""
    folder = tmp_path_factory.mktemp("padded-base")
    model = T5ForConditionalGeneration.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(model.config.vocab_size + 5, mean_resizing=False)
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_model_dir)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["tiny", "padded"])
def adapter(request, tiny_model_dir, padded_base, tmp_path_factory) -> tuple[Path, Path]:
    """(base folder, adapter folder)."""
    base = tiny_model_dir if request.param == "tiny" else padded_base
    return base, random_adapter(base, tmp_path_factory.mktemp("adapter"), SETTINGS)


@pytest.fixture  # each test exports (in a second): the export's calls then count for every test that reads it (mutmut's selection)
def exported(adapter, tmp_path) -> tuple[Path, Path, Path, dict]:
    """(base folder, adapter folder, export folder, what the export returned), into a folder whose parent does not exist yet."""
    base, folder = adapter
    output = tmp_path / "exports" / "model"
    described = export_plain_checkpoint(folder, output, decoding=DECODING, max_input_length=MAX_INPUT_LENGTH)
    return base, folder, output, described


def test_each_weight_is_the_bases_with_lora_folded_in_and_the_prompt_rows_appended(exported):
    base, adapter, output, _ = exported
    base_weights = T5ForConditionalGeneration.from_pretrained(base).state_dict()
    export = AutoModelForSeq2SeqLM.from_pretrained(output)
    weights = export.state_dict()
    tensors = load_file(str(adapter / "adapter.safetensors"))
    vocabulary = base_weights["shared.weight"].shape[0]
    prompt_ids = range(vocabulary, vocabulary + SETTINGS.prompt_length)
    assert export.config.vocab_size == vocabulary + SETTINGS.prompt_length
    assert weights.keys() == base_weights.keys()
    folded = {name.removesuffix(".lora_A") + ".weight" for name in tensors if name.endswith(".lora_A")}
    config = export.config  # q and v of each encoder self-attention, and of each decoder self- and cross-attention
    assert len(folded) == 2 * config.num_layers + 4 * config.num_decoder_layers
    scale = SETTINGS.lora_alpha / SETTINGS.lora_rank
    for name, weight in weights.items():
        if name in folded:
            stem = name.removesuffix(".weight")
            expected = base_weights[name] + scale * tensors[f"{stem}.lora_B"] @ tensors[f"{stem}.lora_A"]
            torch.testing.assert_close(weight, expected, rtol=0, atol=1e-6 * expected.abs().max().item())
            assert not torch.equal(weight, base_weights[name])
        elif name in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(weight[:vocabulary], base_weights[name]), name  # the padded rows included
            assert torch.equal(weight[vocabulary:], tensors["encoder.embed_tokens.prompt"]), name
        else:
            assert torch.equal(weight, base_weights[name]), name
    assert list(prompt_ids) == list(range(vocabulary, export.config.vocab_size))


def test_the_tokenizer_puts_the_prompt_tokens_first_and_cuts_where_the_pipeline_does(exported):
    base, _, output, described = exported
    vocabulary = T5ForConditionalGeneration.from_pretrained(base).config.vocab_size
    prompt = list(range(vocabulary, vocabulary + SETTINGS.prompt_length))
    tokenizer, base_tokenizer = AutoTokenizer.from_pretrained(output), load_tokenizer(str(base))
    assert described["prompt_token_ids"] == prompt
    assert tokenizer(TEXTS[0]).tokens()[: len(prompt)] == ["<prompt_0>", "<prompt_1>", "<prompt_2>"]
    # Only the template names them: not in the vocabulary, so no text produces them (a typed "<prompt_1>" is text, as in training).
    assert tokenizer.convert_ids_to_tokens(prompt) == [None, None, None] and len(tokenizer) == len(base_tokenizer)
    assert tokenizer("<prompt_1>")["input_ids"] == prompt + base_tokenizer("<prompt_1>")["input_ids"]
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == prompt + base_tokenizer(text)["input_ids"]
    first, second = (base_tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS)
    eos = base_tokenizer.eos_token_id
    assert tokenizer(*TEXTS)["input_ids"] == prompt + first + [eos] + second + [eos]
    assert tokenizer.model_max_length == MAX_INPUT_LENGTH + SETTINGS.prompt_length
    cut = tokenizer(TEXTS[1], truncation=True)["input_ids"]
    assert cut == prompt + base_tokenizer(TEXTS[1], truncation=True, max_length=MAX_INPUT_LENGTH)["input_ids"]
    assert tokenizer.decode(tokenizer(TEXTS[0])["input_ids"], skip_special_tokens=True) == base_tokenizer.decode(
        base_tokenizer(TEXTS[0])["input_ids"], skip_special_tokens=True
    )
    config_text = (output / "tokenizer_config.json").read_text(encoding="utf-8")
    config = json.loads(config_text)
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config_text == json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    # A runtime that needs a name for every id (CTranslate2's converter) gets the padded rows' and the prompt's.
    name_every_id(tokenizer, prompt)
    padded_rows = [f"<unused_{i}>" for i in range(len(base_tokenizer), vocabulary)]
    assert tokenizer.convert_ids_to_tokens(list(range(len(base_tokenizer), vocabulary + len(prompt)))) == padded_rows + prompt_token_names(3)


def test_generation_is_the_adapter_models_with_the_prompt_suppressed(exported, one_thread):
    base, adapter, output, described = exported
    export = AutoModelForSeq2SeqLM.from_pretrained(output).eval()
    base_config = T5ForConditionalGeneration.from_pretrained(base).config
    generation = export.generation_config
    assert generation.suppress_tokens == described["prompt_token_ids"] and generation.renormalize_logits is True
    assert {key: getattr(generation, key) for key in DECODING if key != "description"} == {k: v for k, v in DECODING.items() if k != "description"}
    assert (generation.decoder_start_token_id, generation.eos_token_id, generation.pad_token_id) == (
        base_config.decoder_start_token_id,
        base_config.eos_token_id,
        base_config.pad_token_id,
    )
    assert described == {
        "base_model": str(base),
        "prompt_token_ids": described["prompt_token_ids"],
        "lora_rank": SETTINGS.lora_rank,
        "decoding": DECODING,
        "max_input_length": MAX_INPUT_LENGTH,
    }

    model, tokenizer = load_finetuned(adapter)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": extend_attention_mask(batch["attention_mask"], SETTINGS.prompt_length)}
    stock = AutoTokenizer.from_pretrained(output)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**inputs, num_beams=1, max_new_tokens=5).tolist()
        assert export.generate(**stock, num_beams=1, do_sample=False, max_new_tokens=5).tolist() == expected


def test_exporting_again_into_the_same_folder_replaces_the_export(exported):
    _, folder, output, _ = exported
    weights = (output / "model.safetensors").read_bytes()
    (output / "model.safetensors").write_bytes(b"from an earlier export")
    export_plain_checkpoint(folder, output, decoding=DECODING, max_input_length=MAX_INPUT_LENGTH)
    assert (output / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize(
    "settings, change, error",
    [
        (AdapterSettings(lora_rank=2, prompt_length=0), None, "The model has no prompt to export."),
        (SETTINGS, "<extra_token>", "The tokenizer has 1001 tokens, more than the model's 1000 rows: the prompt's ids would be some of its tokens'."),
    ],
)
def test_an_adapter_the_export_cannot_carry_is_refused(settings, change, error, tiny_model_dir, tmp_path):
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter", settings)
    if change:  # a tokenizer longer than the model's vocabulary: the prompt tokens would not get the rows that hold the prompt
        tokenizer = load_tokenizer(str(adapter))
        tokenizer.add_tokens([change])
        tokenizer.save_pretrained(adapter)
    with pytest.raises((TypeError, ValueError)) as refused:
        export_plain_checkpoint(adapter, tmp_path / "out", decoding=DECODING, max_input_length=MAX_INPUT_LENGTH)
    assert str(refused.value) == error


def test_names_for_prompt_ids_that_do_not_follow_the_vocabulary_are_refused(tiny_model_dir):
    """name_every_id reads the prompt ids from generation_config.json's suppress_tokens: ids inside the vocabulary
    (an export edited by hand) would rename existing tokens."""
    tokenizer = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(ValueError) as refused:
        name_every_id(tokenizer, [5, 6])
    assert str(refused.value) == "The prompt tokens got ids [1000, 1001], not [5, 6]: the tokenizer does not end at the vocabulary."
