"""The server's engines: an exported model loaded to generate, texts in, new token ids out.

Both decode as the project's ``generate_predictions`` does for the same settings (greedy and beam search
give its tokens: docs/export.md's runtime matrix), start from the export's own decoding
(``generation_config.json``, the evaluation's) and cut inputs where the export's tokenizer does.
``on_token(index, token_id)`` sees each new token of text ``index`` as it is made, when the engine
generates token by token for every text at once (no beams); returning True stops that text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from transformers.generation.streamers import BaseStreamer

from components.decoding import Decoding
from components.errors import UserError
from components.export.clearml_serving_preprocess import generate_ids, load_export
from components.export.ctranslate2_model import CTranslate2Generator

OnToken = Callable[[int, int], bool]
ENGINES = ("auto", "ctranslate2", "transformers")


class Engine(Protocol):
    name: str
    tokenizer: object
    defaults: Decoding

    def generate(self, texts: list[str], decoding: Decoding, on_token: OnToken | None = None) -> list[list[int]]: ...

    def streams(self, decoding: Decoding) -> bool:
        """Whether ``generate`` calls ``on_token`` for ``decoding`` (else the answer comes whole)."""


def _export_decoding(folder: Path) -> Decoding:
    """The decoding ``generation_config.json`` holds: the evaluation's."""
    generation = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    return Decoding(**{name: generation[name] for name in asdict(Decoding()) if name in generation})


class CTranslate2Engine:
    name = "ctranslate2"

    def __init__(self, folder: Path, **translator_options) -> None:
        self.generator = CTranslate2Generator(folder, **translator_options)
        self.tokenizer = self.generator.tokenizer
        self.defaults = _export_decoding(folder)

    def streams(self, decoding: Decoding) -> bool:
        return decoding.num_beams == 1

    def generate(self, texts: list[str], decoding: Decoding, on_token: OnToken | None = None) -> list[list[int]]:
        return self.generator.generate(texts, **asdict(decoding), on_token=on_token if self.streams(decoding) else None)


class _RowStreamer(BaseStreamer):
    """transformers' streamer interface for a batch: ``put`` gets each step's token of every row (the first call, the
    decoder's start tokens, is not an answer's); a row ends at its end-of-sequence token."""

    def __init__(self, on_token: OnToken, eos_token_id: int) -> None:
        self.on_token, self.eos_token_id, self.started, self.ended = on_token, eos_token_id, False, set()

    def put(self, value) -> None:
        if not self.started:
            self.started = True
            return
        for index, token in enumerate(value.tolist()):
            if index in self.ended:
                continue
            if token == self.eos_token_id or self.on_token(index, token):
                self.ended.add(index)  # transformers cannot stop one row: the rest of its tokens are not passed on

    def end(self) -> None:
        pass


class TransformersEngine:
    """The export's ``model`` folder with transformers, loaded and run by the clearml-serving module's functions."""

    name = "transformers"

    def __init__(self, folder: Path) -> None:
        self.model, self.tokenizer = load_export(folder)
        self.defaults = _export_decoding(folder)

    def streams(self, decoding: Decoding) -> bool:
        return decoding.num_beams == 1

    def generate(self, texts: list[str], decoding: Decoding, on_token: OnToken | None = None) -> list[list[int]]:
        streamer = _RowStreamer(on_token, self.tokenizer.eos_token_id) if on_token and self.streams(decoding) else None
        return generate_ids(self.model, self.tokenizer, texts, streamer=streamer, **decoding.generate_kwargs())


def load_engine(folder: Path, engine: str = "auto", *, device: str = "cpu", compute_type: str = "default") -> Engine:
    """The engine for an export folder: CTranslate2 for the export's ``ctranslate2`` folder, transformers for its ``model``
    folder (``auto`` tells them apart by their files); anything else is refused in one sentence."""
    is_ctranslate2, is_transformers = (folder / "model.bin").is_file(), (folder / "model.safetensors").is_file()
    if engine == "auto":
        engine = "ctranslate2" if is_ctranslate2 else "transformers" if is_transformers else ""
    if engine == "ctranslate2" and is_ctranslate2:
        return CTranslate2Engine(folder, device=device, compute_type=compute_type)
    if engine == "transformers" and is_transformers:
        return TransformersEngine(folder)
    raise UserError(
        f"{folder} is not an export for {engine or 'either engine'}: give the export step's ctranslate2 folder (model.bin) "
        "for CTranslate2 or its model folder (model.safetensors) for transformers."
    )
