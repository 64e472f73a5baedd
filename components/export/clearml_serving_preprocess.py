"""clearml-serving's ``custom_async`` engine answering ``{"text": ...}`` requests with the exported model.

    clearml-serving --id <service id> model add --engine custom_async --endpoint rut5_instruct \\
        --preprocess components/export/clearml_serving_preprocess.py --model-id <exported model id>
    curl -X POST http://127.0.0.1:8080/serve/rut5_instruct -H "Content-Type: application/json" \\
        -d '{"text": "Переведи на английский.\\nДоброе утро"}'

clearml-serving uploads this one file and loads it alone (``importlib``, not as part of this
project), so it imports nothing from here: only torch and transformers, which the inference
container installs (``CLEARML_EXTRA_PYTHON_PACKAGES``). Its engine makes one ``Preprocess()`` per
worker process, calls ``load`` with the local copy of the endpoint's registered model (the export
step's folder, extracted) and then, per request, ``preprocess`` -> ``process`` -> ``postprocess``
with a fresh ``state`` dict, each awaited on the worker's event loop. Generation runs in a thread
(``asyncio.to_thread``): a long answer never holds up the loop, so the worker goes on taking
requests (the ``custom`` engine calls ``process`` on the loop itself). A request batches its own
texts, ``{"text": ["...", "..."]}``, answered as ``{"text": ["...", "..."]}`` in order.

The answer is decoded as ``generation_config.json`` says (the evaluate step's decoding); the
tokenizer puts the prompt tokens before every input and truncates where the pipeline did. A request
the module cannot answer raises ``ValueError``, which clearml-serving returns as HTTP 422 with the message.

The project's OpenAI-compatible server (``components/serving``) loads and generates with the
transformers engine through :func:`load_export` and :func:`generate_ids`: one code path for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

BATCH_SIZE = 16  # texts generated together; a longer request is answered in batches of this many
MAX_TEXTS = 256  # texts in one request
REQUEST_FORM = 'a JSON object {"text": "..."} or {"text": ["...", ...]}'


def load_export(folder: Path) -> tuple[Any, Any]:
    """The exported model (on the GPU when there is one, in eval mode) and its tokenizer; ValueError for any other folder."""
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        raise ValueError(
            f"{folder} is not the export step's folder (config.json and tokenizer.json): give --model-id "
            "the model steps/export.py registered, not the adapter model."
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModelForSeq2SeqLM.from_pretrained(folder).to(device).eval(), tokenizer


def new_tokens(sequences: list[list[int]], eos_token_id: int, pad_token_id: int) -> list[list[int]]:
    """``generate``'s rows as the new tokens only: no decoder start, nothing from the end of sequence on, no padding."""
    rows = [row[1 : row.index(eos_token_id, 1)] if eos_token_id in row[1:] else row[1:] for row in sequences]
    return [[token for token in row if token != pad_token_id] for row in rows]


def generate_ids(model, tokenizer, texts: list[str], streamer=None, **decoding) -> list[list[int]]:
    """The new token ids of each text, generated in batches of ``BATCH_SIZE`` with the model's generation config
    overridden by ``decoding`` (``generate``'s arguments). ``streamer`` (transformers' streamer interface) sees each
    step's tokens of the batch; it needs a single batch (at most ``BATCH_SIZE`` texts) and no beams."""
    answers: list[list[int]] = []
    for start in range(0, len(texts), BATCH_SIZE):
        encoded = tokenizer(texts[start : start + BATCH_SIZE], padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            generated = model.generate(**encoded.to(model.device), streamer=streamer, **decoding)
        answers += new_tokens(generated.tolist(), tokenizer.eos_token_id, tokenizer.pad_token_id)
    return answers


def answer_texts(tokenizer, answers: list[list[int]]) -> list[str]:
    """The answers as text, as the project's generate_predictions gives them."""
    return [text.strip() for text in tokenizer.batch_decode(answers, skip_special_tokens=True)]


class Preprocess:
    """Loaded once per serving process; requests may run concurrently (it keeps no request state)."""

    def __init__(self) -> None:
        self.model = None
        self.tokenizer = None

    def load(self, local_file_name: str | None) -> Any:
        if not local_file_name:
            raise ValueError("The endpoint has no model: add it with --model-id <the export step's registered model>.")
        self.model, self.tokenizer = load_export(Path(local_file_name))
        return self.model

    async def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn: Callable[[dict], None] | None = None) -> list[str]:
        if not isinstance(body, dict) or set(body) != {"text"}:
            raise ValueError(f"The request body must be {REQUEST_FORM}.")
        text = body["text"]
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f'"text" must be a string or a non-empty list of strings: the request body must be {REQUEST_FORM}.')
        if len(texts) > MAX_TEXTS:
            raise ValueError(f'"text" holds {len(texts)} texts; send at most {MAX_TEXTS} in one request.')
        state["one_text"] = isinstance(text, str)
        return texts

    async def process(self, data: list[str], state: dict, collect_custom_statistics_fn: Callable[[dict], None] | None = None) -> list[str]:
        answers = await asyncio.to_thread(generate_ids, self.model, self.tokenizer, data)
        if collect_custom_statistics_fn:
            collect_custom_statistics_fn({"texts": len(data)})
        return answer_texts(self.tokenizer, answers)

    async def postprocess(self, data: list[str], state: dict, collect_custom_statistics_fn: Callable[[dict], None] | None = None) -> dict:
        return {"text": data[0] if state["one_text"] else data}
