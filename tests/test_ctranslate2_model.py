"""``components.export.ctranslate2_model`` on the tiny export: what the conversion writes (a name for every id), the
suppressed prompt tokens in CTranslate2's form, and what ``CTranslate2Generator`` asks of the translator and answers.
The export step's conversion of a trained model, token for token against transformers: test_export.py and
test_runtime_matrix.py."""

from __future__ import annotations

import json
import shutil

import ctranslate2
import pytest
from conftest import TINY_EXPORT_MAX_TOKENS, TINY_EXPORT_PROMPT
from transformers import AutoTokenizer

from components.export.ctranslate2_model import (
    BEAM_PATIENCE,
    COPIED_FILES,
    CTranslate2Generator,
    convert_to_ctranslate2,
    suppressed_tokens,
    vocabulary,
)
from components.export.plain_checkpoint import prompt_token_names


@pytest.fixture(scope="module")
def converted(tiny_export, tmp_path_factory):
    return convert_to_ctranslate2(tiny_export, tmp_path_factory.mktemp("ct2") / "model")


def test_the_conversion_is_a_model_with_the_exports_tokenizer_decoding_and_card(tiny_export, converted):
    assert converted.name == "model" and (converted / "model.bin").stat().st_size > 0
    for name in [*COPIED_FILES, "README.md"]:
        assert (converted / name).read_bytes() == (tiny_export / name).read_bytes(), name
    assert convert_to_ctranslate2(tiny_export, converted) == converted  # again into the same folder: replaced


def test_every_id_of_the_export_has_its_name_in_the_converted_vocabulary(tiny_export, converted):
    """The tokenizer's vocabulary in id order, then the prompt tokens: CTranslate2's T5 loader alone would call them <extra_id_N>."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    names = vocabulary(converted)
    rows = json.loads((tiny_export / "config.json").read_text())["vocab_size"]
    assert len(names) == rows == len(tokenizer) + TINY_EXPORT_PROMPT
    assert names[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert names[len(tokenizer) :] == prompt_token_names(TINY_EXPORT_PROMPT)


def test_an_export_without_a_card_converts_without_one(tiny_export, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_export, bare)
    (bare / "README.md").unlink()
    converted = convert_to_ctranslate2(bare, tmp_path / "ct2")
    assert sorted(path.name for path in converted.iterdir()) == sorted(["model.bin", "config.json", "shared_vocabulary.json", *COPIED_FILES])


def test_the_suppressed_tokens_are_one_token_sequences_of_the_generation_configs(converted, tmp_path):
    assert suppressed_tokens(converted) == [[name] for name in prompt_token_names(TINY_EXPORT_PROMPT)]
    plain = shutil.copytree(converted, tmp_path / "plain")
    (plain / "generation_config.json").write_text(json.dumps({"decoder_start_token_id": 0}), encoding="utf-8")
    assert suppressed_tokens(plain) == []


class RecordingTranslator:
    """The CTranslate2 translator, with each ``translate_batch`` call's arguments recorded."""

    def __init__(self, translator):
        self.translator, self.calls = translator, []

    def translate_batch(self, sources, **options):
        self.calls.append((sources, options))
        return self.translator.translate_batch(sources, **options)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_asks_the_translator_for_the_decoding_given_and_answers_in_token_ids(converted, num_beams):
    translator = RecordingTranslator(ctranslate2.Translator(str(converted), device="cpu"))
    generator = CTranslate2Generator(converted, translator=translator)
    tokenizer = generator.tokenizer
    texts = ["Перескажи кратко. " + " ".join(f"слово{n}" for n in range(40)), "<prompt_1>", "Привет"]
    answers = generator.generate(texts, max_new_tokens=6, num_beams=num_beams, min_new_tokens=3)
    [(sources, options)] = translator.calls
    prompt = prompt_token_names(TINY_EXPORT_PROMPT)
    uncut = [tokenizer(text, truncation=False).input_ids[TINY_EXPORT_PROMPT:] for text in texts]
    assert [len(ids) > TINY_EXPORT_MAX_TOKENS - TINY_EXPORT_PROMPT for ids in uncut] == [True, True, False]
    kept = TINY_EXPORT_MAX_TOKENS - TINY_EXPORT_PROMPT - 1  # and the end of sequence
    assert sources == [
        prompt + tokenizer.convert_ids_to_tokens(ids[:kept] + [tokenizer.eos_token_id] if len(ids) > kept + 1 else ids) for ids in uncut
    ]
    assert sources[1][TINY_EXPORT_PROMPT : TINY_EXPORT_PROMPT + 4] == ["▁", "<", "p", "r"]  # "<prompt_1>" typed in a text is text
    assert options == {
        "beam_size": num_beams,
        "patience": BEAM_PATIENCE,
        "max_decoding_length": 6,
        "min_decoding_length": 3,
        "suppress_sequences": [[name] for name in prompt],
    }
    expected = [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in translator.translator.translate_batch(sources, **options)]
    assert answers == expected and all(3 <= len(ids) <= 6 and tokenizer.eos_token_id not in ids for ids in answers)
    assert not set(range(len(tokenizer), len(tokenizer) + TINY_EXPORT_PROMPT)) & {token for ids in answers for token in ids}


def test_generation_decodes_greedily_and_may_end_at_once_by_default(converted):
    translator = RecordingTranslator(ctranslate2.Translator(str(converted), device="cpu"))
    CTranslate2Generator(converted, translator=translator).generate(["Привет"], max_new_tokens=4)
    [(_, options)] = translator.calls
    assert (options["beam_size"], options["min_decoding_length"]) == (1, 0)
