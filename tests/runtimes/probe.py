"""What one Python environment makes of an exported model, run as ``python -I probe.py EXPORT CONVERTED`` with a
JSON request on stdin ({"texts": [...], "max_new_tokens": N}); prints one JSON object.

It imports nothing from the project (``-I``: no current directory, no PYTHONPATH; tests/runtimes holds no project
module): only what a serving engineer has, the stock libraries of the environment it runs in. Each way of loading
gives either its tokens or the error it raised, as "Type: message" (a refusal). CTranslate2 decodes with the
settings the model card states (its ``patience=N``); the clearml-serving module is loaded from its file alone, as
clearml-serving does.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import re
import sys
from pathlib import Path

assert importlib.util.find_spec("components") is None, "the project is importable"

import ctranslate2  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

torch.set_num_threads(1)
export, converted, serving_module = (Path(arg) for arg in sys.argv[1:4])
request = json.loads(sys.stdin.read())
texts, max_new_tokens = request["texts"], request["max_new_tokens"]


def outcome(make) -> dict:
    try:
        return make()
    except Exception as error:  # a refusal is a result here, with its type and first line
        return {"refused": f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"}


def input_ids(load) -> dict:
    tokenizer = load()
    return {"class": type(tokenizer).__name__, "input_ids": tokenizer(texts, truncation=True)["input_ids"]}


def new_tokens(sequences: list[list[int]], eos: int) -> list[list[int]]:
    """``generate``'s rows as the new tokens only: no decoder start, nothing from the end of sequence on."""
    return [row[1 : row.index(eos, 1)] if eos in row[1:] else row[1:] for row in sequences]


tokenizer = AutoTokenizer.from_pretrained(export)
model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()


def generated(num_beams: int) -> dict:
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(**batch, num_beams=num_beams, max_new_tokens=max_new_tokens).tolist()
    return {"tokens": new_tokens(sequences, tokenizer.eos_token_id)}


card = (converted / "README.md").read_text(encoding="utf-8")
patience = int(re.search(r"patience=(\d+)", card).group(1))
names = json.loads((converted / "shared_vocabulary.json").read_text(encoding="utf-8"))
ids = {name: i for i, name in enumerate(names)}
suppress = [[names[i]] for i in json.loads((converted / "generation_config.json").read_text(encoding="utf-8"))["suppress_tokens"]]


def ctranslate2_tokens(num_beams: int, patience: int = patience) -> dict:
    translator = ctranslate2.Translator(str(converted), device="cpu", intra_threads=1)
    sources = [[names[i] for i in row] for row in AutoTokenizer.from_pretrained(converted)(texts, truncation=True)["input_ids"]]
    results = translator.translate_batch(
        sources, beam_size=num_beams, patience=patience, max_decoding_length=max_new_tokens, min_decoding_length=0, suppress_sequences=suppress
    )
    return {"tokens": [[ids[name] for name in result.hypotheses[0]] for result in results]}


def served() -> dict:
    spec = importlib.util.spec_from_file_location("preprocess", serving_module)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    engine = module.Preprocess()
    engine.load(str(export))
    state: dict = {}

    async def calls():  # as clearml-serving's custom_async engine awaits them
        return await engine.postprocess(await engine.process(await engine.preprocess({"text": texts}, state), state), state)

    return {"texts": asyncio.run(calls())["text"]}


cells = {
    "AutoTokenizer": outcome(lambda: input_ids(lambda: AutoTokenizer.from_pretrained(export))),
    "AutoTokenizer(use_fast=False)": outcome(lambda: input_ids(lambda: AutoTokenizer.from_pretrained(export, use_fast=False))),
    "PreTrainedTokenizerFast": outcome(lambda: input_ids(lambda: PreTrainedTokenizerFast.from_pretrained(export))),
    "T5TokenizerFast": outcome(lambda: input_ids(lambda: transformers.T5TokenizerFast.from_pretrained(export))),
    "T5Tokenizer": outcome(lambda: input_ids(lambda: transformers.T5Tokenizer.from_pretrained(export))),
    "tokenizers.Tokenizer.from_file": outcome(
        lambda: {"input_ids": [encoding.ids for encoding in tokenizers.Tokenizer.from_file(str(export / "tokenizer.json")).encode_batch(texts)]}
    ),
    "generate, greedy": outcome(lambda: generated(1)),
    "generate, beam 4": outcome(lambda: generated(4)),
    "CTranslate2, greedy": outcome(lambda: ctranslate2_tokens(1)),
    "CTranslate2, beam 4": outcome(lambda: ctranslate2_tokens(4)),
    "CTranslate2, beam 4, its default patience 1": outcome(lambda: ctranslate2_tokens(4, patience=1)),
    "clearml-serving module": outcome(served),
}
versions = {name: importlib.metadata.version(name) for name in ("transformers", "tokenizers", "torch", "ctranslate2")}
print(json.dumps({"versions": versions, "cells": cells}, ensure_ascii=False))
