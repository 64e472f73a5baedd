"""``components.export.model_card`` alone: every figure of the card read back from what it was given, the front matter
as huggingface_hub parses it. The card of a real export against its evaluation.json: test_export.py."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard
from markdown_tables import table_rows

from components.export.ctranslate2_model import BEAM_PATIENCE
from components.export.model_card import CARD_TAGS, card_metadata, model_card

INFO = {
    "base_model": "ai-forever/ruT5-large",
    "prompt_token_ids": [32128, 32129, 32130],
    "lora_rank": 6,
    "decoding": {"max_new_tokens": 33, "description": "beam search with 3 beams, at most 33 new tokens"},
    "max_input_length": 77,
}
EVALUATION = {
    "metrics": {"bleu": 0.063449, "rouge1": 0.09154, "meteor": 0.19718},
    "rows": 1234,
    "max_input_length": 64,
    "decoding": {"description": "greedy decoding, at most 200 new tokens"},
}


def test_the_card_states_the_models_settings_the_decoding_and_how_to_load_it():
    card = model_card(INFO, EVALUATION)
    assert "# ai-forever/ruT5-large, fine-tuned with LoRA (rank 6) and prompt tuning (3 tokens), merged\n" in card
    assert "the trained prompt is 3 tokens (`<prompt_0>` ...)" in card
    assert "`generate` decodes as the evaluation did (beam search with 3 beams, at most 33 new tokens)" in card
    assert "Inputs are truncated at 77 tokens plus the prompt: pass `truncation=True`" in card
    assert "must put the prompt ids (32128..32130) first" in card
    assert "**Not with `T5Tokenizer` or `T5TokenizerFast`**" in card
    assert "`max_decoding_length` = `max_new_tokens` (33),\n`min_decoding_length=0`" in card and f"`patience={BEAM_PATIENCE}`" in card


def test_the_evaluation_is_the_one_given_to_four_decimals_with_its_rows_decoding_and_input_length():
    card = model_card(INFO, EVALUATION)
    assert "## Evaluation\n\nOn 1234 test rows, greedy decoding, at most 200 new tokens, inputs cut at 64 tokens:\n\n" in card
    assert table_rows(card, "| metric | value |") == [["bleu", "0.0634"], ["rouge1", "0.0915"], ["meteor", "0.1972"]]
    assert card.endswith("| meteor | 0.1972 |\n")
    unevaluated = model_card(INFO, None)
    assert unevaluated.endswith("## Evaluation\n\nNot evaluated: the exported folder had no evaluation.json.\n")
    assert "| metric |" not in unevaluated


@pytest.mark.parametrize(
    "base_model, named",
    [("ai-forever/ruT5-large", "ai-forever/ruT5-large"), ("t5-small", "t5-small"), ("tiny", None), ("/models/rut5", None), ("./rut5", None)],
)
def test_the_front_matter_is_huggingface_hubs_with_the_base_model_only_when_the_hub_knows_it(base_model, named, tmp_path):
    card = ModelCard(model_card({**INFO, "base_model": base_model}, EVALUATION))
    data = card.data
    assert (data.library_name, data.language, data.pipeline_tag, data.tags, data.base_model) == ("transformers", "ru", None, CARD_TAGS, named)
    assert card.text.startswith(f"\n# {base_model}, fine-tuned")
    assert card_metadata(base_model).endswith("\n") and not card_metadata(base_model).startswith("---")


def test_an_existing_folder_named_like_a_hub_id_is_a_local_model(tmp_path, monkeypatch):
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert ModelCard(f"---\n{card_metadata('org/model')}---\n").data.base_model is None
    assert ModelCard(f"---\n{card_metadata('org/other')}---\n").data.base_model == "org/other"
