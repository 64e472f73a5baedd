"""The plain checkpoint converted for CTranslate2, the C++ inference engine for Transformer models.

CTranslate2's own converter (``ctranslate2.converters.TransformersConverter``, the code behind
``ct2-transformers-converter``) reads the exported folder, so the conversion holds exactly what
transformers loads: the merged weights and the vocabulary with the prompt tokens at their ids.
It is written in float32; ``compute_type="int8"`` (or ``"int8_float16"`` on a GPU) quantizes the
weights when the model is loaded, so one conversion serves every precision.

CTranslate2 takes tokens by name, not text: the tokenizer files are copied beside the model, its
template puts the prompt's ids before every input as it does for transformers, and the converted
vocabulary (``shared_vocabulary.json``) names every id, the prompt tokens' too (they are in no
vocabulary of the export's tokenizer, so that no text produces them). The prompt tokens are suppressed
in generation as ``generation_config.json`` suppresses them (``suppress_sequences``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import ctranslate2
from ctranslate2.converters import TransformersConverter
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from components.export.plain_checkpoint import name_every_id

# Beam search ended where transformers' (early_stopping=False) ends it: CTranslate2's default (patience 1) stops
# when the first beam_size hypotheses have ended and answers otherwise; waiting for twice as many gives
# transformers' answers (docs/export.md's runtime matrix measures both).
BEAM_PATIENCE = 2
# What a CTranslate2 user needs beside model.bin: the tokenizer, and the decoding with its suppressed tokens;
# the model card too, where the export step wrote one.
COPIED_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
MODEL_CARD = "README.md"


class _ExportConverter(TransformersConverter):
    """CTranslate2's converter with a name for every id of the export: its T5 loader would call the ids past the
    tokenizer's vocabulary ``<extra_id_N>``, and the prompt tokens are only in the tokenizer's template."""

    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
        tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
        generation = json.loads((Path(model_name_or_path) / "generation_config.json").read_text(encoding="utf-8"))
        name_every_id(tokenizer, generation["suppress_tokens"])
        return tokenizer


def convert_to_ctranslate2(export_dir: Path, output_dir: Path) -> Path:
    """Convert the plain checkpoint in ``export_dir`` (float32) into ``output_dir``; the folder written."""
    card = [MODEL_CARD] if (export_dir / MODEL_CARD).is_file() else []
    converter = _ExportConverter(str(export_dir), copy_files=COPIED_FILES + card)
    return Path(converter.convert(str(output_dir), force=True))


def vocabulary(model_dir: Path) -> list[str]:
    """The converted model's tokens in id order (``shared_vocabulary.json``, which CTranslate2's converter writes)."""
    return json.loads((model_dir / "shared_vocabulary.json").read_text(encoding="utf-8"))


def suppressed_tokens(model_dir: Path) -> list[list[str]]:
    """The export's ``suppress_tokens`` as CTranslate2's ``suppress_sequences`` (one-token sequences) for the converted ``model_dir``."""
    generation = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    names = vocabulary(model_dir)
    return [[names[token]] for token in generation.get("suppress_tokens") or []]


class CTranslate2Generator:
    """A converted folder ready to generate: texts in, new token ids out, as ``generate`` decodes them.

    CTranslate2 takes and gives tokens by name: the tokenizer makes the ids (prompt tokens first, cut where the
    export cuts) and the converted vocabulary names them.
    """

    def __init__(self, model_dir: Path, translator: ctranslate2.Translator | None = None, **translator_options) -> None:
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(model_dir)
        self.names = vocabulary(model_dir)
        self.ids = {name: i for i, name in enumerate(self.names)}
        self.suppress = suppressed_tokens(model_dir)
        self.translator = translator or ctranslate2.Translator(str(model_dir), **translator_options)

    def generate(
        self,
        texts: list[str],
        *,
        max_new_tokens: int,
        num_beams: int = 1,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        on_token: Callable[[int, int], bool] | None = None,
    ) -> list[list[int]]:
        """The new token ids for each text (end of sequence not included); ``min_new_tokens`` 0, as transformers, lets it end at once.

        Sampling is CTranslate2's own (``top_k`` 0: no limit, as in transformers). ``on_token(index, token_id)`` sees each
        new token of text ``index`` as it is generated (CTranslate2 calls back without beams only); True stops that text.
        """
        sources = [[self.names[i] for i in ids] for ids in self.tokenizer(texts, truncation=True)["input_ids"]]
        sampling = {"sampling_topk": top_k, "sampling_topp": top_p, "sampling_temperature": temperature} if do_sample else {}
        callback = None
        if on_token:

            def callback(step) -> bool:
                return step.token_id != self.tokenizer.eos_token_id and bool(on_token(step.batch_id, step.token_id))

        results = self.translator.translate_batch(
            sources,
            beam_size=num_beams,
            patience=BEAM_PATIENCE,
            max_decoding_length=max_new_tokens,
            min_decoding_length=min_new_tokens,
            suppress_sequences=self.suppress or None,
            **sampling,
            **({"callback": callback} if callback else {}),
        )
        return [[self.ids[name] for name in result.hypotheses[0]] for result in results]
