"""The export's model card (``README.md``): how to load it, what not to load it with, and the evaluation of these very
weights (the export step refuses an ``evaluation.json`` that scored another adapter). Its YAML front matter is
huggingface_hub's ``ModelCardData``."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from components.export.ctranslate2_model import BEAM_PATIENCE
from components.settings import TINY_MODEL

CARD_TAGS = ["t5", "text2text-generation", "lora", "prompt-tuning", "russian"]
CARD = """---
{metadata}---

# {base_model}, fine-tuned with LoRA (rank {lora_rank}) and prompt tuning ({prompt_length} tokens), merged

A plain `T5ForConditionalGeneration` checkpoint: the LoRA updates are merged into the attention's `q` and `v`
weights, and the trained prompt is {prompt_length} tokens (`<prompt_0>` ...) that the tokenizer puts before every
input. Load it with `AutoTokenizer` and `AutoModelForSeq2SeqLM` (transformers 4.57 or 5; transformers 5 has no `pipeline`
task for encoder-decoder generation, so the card names none); `generate` decodes as the evaluation did ({decoding})
and never emits the prompt tokens.
Inputs are truncated at {max_input_length} tokens plus the prompt: pass `truncation=True` (`tokenizer.json` alone
truncates there by itself).

**Not with `T5Tokenizer` or `T5TokenizerFast`**: they build T5's own template, which would leave the prompt out,
so this folder makes them fail on loading. `AutoTokenizer` (with `use_fast=False` too) and `PreTrainedTokenizerFast`
load the tokenizer that prepends it; there is no sentencepiece model in this folder. A client that sends token ids
must put the prompt ids ({first_prompt_id}..{last_prompt_id}) first, as the tokenizer does.

**With CTranslate2** (the export's `ctranslate2` folder): give `translate_batch` the tokens the tokenizer makes,
named by the folder's `shared_vocabulary.json`, with `max_decoding_length` = `max_new_tokens` ({max_new_tokens}),
`min_decoding_length=0`, the prompt tokens as `suppress_sequences`, and for beam search `patience={patience}`:
CTranslate2's default stops beam search before transformers does and answers otherwise.

## Evaluation

{evaluation}
"""


def card_metadata(base_model: str) -> str:
    """The card's YAML front matter, written by huggingface_hub: the base model only when it is a hub id (a local folder or
    the tiny model is no model the hub knows, and the hub refuses a path), and no ``pipeline_tag``."""
    try:
        validate_repo_id(base_model)
        on_the_hub = base_model != TINY_MODEL and not Path(base_model).exists()
    except HFValidationError:
        on_the_hub = False
    data = ModelCardData(library_name="transformers", language="ru", base_model=base_model if on_the_hub else None, tags=CARD_TAGS)
    return data.to_yaml() + "\n"


def model_card(info: dict, evaluation: dict | None) -> str:
    if evaluation:
        rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in evaluation["metrics"].items())
        scored = (
            f"On {evaluation['rows']} test rows, {evaluation['decoding']['description']}, inputs cut at {evaluation['max_input_length']} tokens:"
            f"\n\n| metric | value |\n|---|---|\n{rows}"
        )
    else:
        scored = "Not evaluated: the exported folder had no evaluation.json."
    return CARD.format(
        metadata=card_metadata(info["base_model"]),
        base_model=info["base_model"],
        lora_rank=info["lora_rank"],
        prompt_length=len(info["prompt_token_ids"]),
        max_new_tokens=info["decoding"]["max_new_tokens"],
        patience=BEAM_PATIENCE,
        first_prompt_id=info["prompt_token_ids"][0],
        last_prompt_id=info["prompt_token_ids"][-1],
        decoding=info["decoding"]["description"],
        max_input_length=info["max_input_length"],
        evaluation=scored,
    )
