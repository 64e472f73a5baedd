"""The plain checkpoint converted for CTranslate2, the C++ inference engine for Transformer models.

CTranslate2's own converter (``ctranslate2.converters.TransformersConverter``, the code behind
``ct2-transformers-converter``) reads the exported folder, so the conversion holds exactly what
transformers loads: the merged weights and the vocabulary with the prompt tokens at their ids.
It is written in float32; ``compute_type="int8"`` (or ``"int8_float16"`` on a GPU) quantizes the
weights when the model is loaded, so one conversion serves every precision.

CTranslate2 takes tokens, not text: the tokenizer files are copied beside the model, and its
template puts the prompt tokens before every input as it does for transformers. The prompt tokens
are suppressed in generation as ``generation_config.json`` suppresses them (``suppress_sequences``).
"""

from __future__ import annotations

import json
from pathlib import Path

import ctranslate2
from ctranslate2.converters import TransformersConverter
from transformers import PreTrainedTokenizerBase

# What a CTranslate2 user needs beside model.bin: the tokenizer, and the decoding with its suppressed tokens;
# the model card too, where the export step wrote one.
COPIED_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
MODEL_CARD = "README.md"


def convert_to_ctranslate2(export_dir: Path, output_dir: Path) -> Path:
    """Convert the plain checkpoint in ``export_dir`` (float32) into ``output_dir``; the folder written."""
    card = [MODEL_CARD] if (export_dir / MODEL_CARD).is_file() else []
    converter = TransformersConverter(str(export_dir), copy_files=COPIED_FILES + card)
    return Path(converter.convert(str(output_dir), force=True))


def suppressed_tokens(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> list[list[str]]:
    """The export's ``suppress_tokens`` as CTranslate2's ``suppress_sequences`` (one-token sequences)."""
    generation = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    return [[token] for token in tokenizer.convert_ids_to_tokens(generation.get("suppress_tokens") or [])]


def generate_with_ctranslate2(
    translator: ctranslate2.Translator,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    suppress: list[list[str]],
    max_new_tokens: int,
    num_beams: int = 1,
    min_new_tokens: int = 1,
) -> list[list[int]]:
    """The new token ids for each text (end of sequence not included), as ``generate`` decodes them."""
    sources = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]]
    results = translator.translate_batch(
        sources, beam_size=num_beams, max_decoding_length=max_new_tokens, min_decoding_length=min_new_tokens, suppress_sequences=suppress or None
    )
    return [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]
