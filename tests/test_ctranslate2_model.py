"""``components.export.ctranslate2_model`` on the tiny model: what the conversion writes, the suppressed prompt tokens
in CTranslate2's form, and what ``generate_with_ctranslate2`` asks of the translator and answers. The export step's
conversion of a trained model, token for token against transformers: test_pipeline_local.py and test_export.py."""

from __future__ import annotations

import json
import shutil

import ctranslate2
import pytest
from conftest import TINY_EXPORT_MAX_TOKENS
from transformers import AutoTokenizer

from components.export.ctranslate2_model import COPIED_FILES, convert_to_ctranslate2, generate_with_ctranslate2, suppressed_tokens


@pytest.fixture(scope="module")
def converted(tiny_export, tmp_path_factory):
    return convert_to_ctranslate2(tiny_export, tmp_path_factory.mktemp("ct2") / "model")


def test_the_conversion_is_a_model_with_the_exports_tokenizer_decoding_and_card(tiny_export, converted):
    assert converted.name == "model" and (converted / "model.bin").stat().st_size > 0
    for name in [*COPIED_FILES, "README.md"]:
        assert (converted / name).read_bytes() == (tiny_export / name).read_bytes(), name
    assert convert_to_ctranslate2(tiny_export, converted) == converted  # again into the same folder: replaced


def test_an_export_without_a_card_converts_without_one(tiny_export, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_export, bare)
    (bare / "README.md").unlink()
    converted = convert_to_ctranslate2(bare, tmp_path / "ct2")
    assert sorted(path.name for path in converted.iterdir()) == sorted(["model.bin", "config.json", "shared_vocabulary.json", *COPIED_FILES])


def test_the_suppressed_tokens_are_one_token_sequences_of_the_generation_configs(tiny_export, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    assert suppressed_tokens(tiny_export, tokenizer) == [[tokenizer.convert_ids_to_tokens(5)], [tokenizer.convert_ids_to_tokens(7)]]
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "generation_config.json").write_text(json.dumps({"decoder_start_token_id": 0}), encoding="utf-8")
    assert suppressed_tokens(plain, tokenizer) == []


class RecordingTranslator:
    """The CTranslate2 translator, with each ``translate_batch`` call's arguments recorded."""

    def __init__(self, translator):
        self.translator, self.calls = translator, []

    def translate_batch(self, sources, **options):
        self.calls.append((sources, options))
        return self.translator.translate_batch(sources, **options)


@pytest.mark.parametrize("num_beams, suppress", [(1, True), (3, False)])
def test_generation_asks_the_translator_for_the_decoding_given_and_answers_in_token_ids(tiny_export, converted, num_beams, suppress):
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    translator = RecordingTranslator(ctranslate2.Translator(str(converted), device="cpu"))
    texts = ["Перескажи кратко. " + " ".join(f"слово{n}" for n in range(40)), "Привет"]
    sequences = suppressed_tokens(tiny_export, tokenizer) if suppress else []
    answers = generate_with_ctranslate2(translator, tokenizer, texts, suppress=sequences, max_new_tokens=6, num_beams=num_beams, min_new_tokens=3)
    [(sources, options)] = translator.calls
    long_ids = tokenizer(texts[0]).input_ids
    assert sources == [
        tokenizer.convert_ids_to_tokens(long_ids[: TINY_EXPORT_MAX_TOKENS - 1] + [tokenizer.eos_token_id]),
        tokenizer.convert_ids_to_tokens(tokenizer(texts[1]).input_ids),
    ]  # cut where the tokenizer says
    assert options == {"beam_size": num_beams, "max_decoding_length": 6, "min_decoding_length": 3, "suppress_sequences": sequences or None}
    expected = [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in translator.translator.translate_batch(sources, **options)]
    assert answers == expected and all(3 <= len(ids) <= 6 and tokenizer.eos_token_id not in ids for ids in answers)
    if suppress:
        assert not {5, 7} & {token for ids in answers for token in ids}


def test_generation_decodes_greedily_with_at_least_one_token_by_default(tiny_export, converted):
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    translator = RecordingTranslator(ctranslate2.Translator(str(converted), device="cpu"))
    generate_with_ctranslate2(translator, tokenizer, ["Привет"], suppress=[], max_new_tokens=4)
    [(_, options)] = translator.calls
    assert (options["beam_size"], options["min_decoding_length"]) == (1, 1)
