"""clearml-serving's custom engine answering ``{"text": ...}`` requests with the exported model.

    clearml-serving --id <service id> model add --engine custom --endpoint rut5_instruct \\
        --preprocess components/export/clearml_serving_preprocess.py --model-id <exported model id>
    curl -X POST http://127.0.0.1:8080/serve/rut5_instruct -H "Content-Type: application/json" \\
        -d '{"text": "Переведи на английский.\\nДоброе утро"}'

clearml-serving uploads this one file and loads it alone (``importlib``, not as part of this
project), so it imports nothing from here: only torch and transformers, which the inference
container installs (``CLEARML_EXTRA_PYTHON_PACKAGES``). Its custom engine makes one ``Preprocess()``
per worker process, calls ``load`` with the local copy of the endpoint's registered model (the
export step's folder, extracted) and then, per request, ``preprocess`` -> ``process`` ->
``postprocess`` with a fresh ``state`` dict. The engine does not batch requests: a request batches
its own texts, ``{"text": ["...", "..."]}``, answered as ``{"text": ["...", "..."]}`` in order.

The answer is decoded as ``generation_config.json`` says (the evaluate step's decoding); the
tokenizer puts the prompt tokens before every input and truncates where the pipeline did. A request
the module cannot answer raises ``ValueError``, which clearml-serving returns as HTTP 422 with the message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

BATCH_SIZE = 16  # texts generated together; a longer request is answered in batches of this many
MAX_TEXTS = 256  # texts in one request
REQUEST_FORM = 'a JSON object {"text": "..."} or {"text": ["...", ...]}'


class Preprocess:
    """Loaded once per serving process; requests may call it from several threads (it keeps no request state)."""

    def __init__(self) -> None:
        self.model = None
        self.tokenizer = None

    def load(self, local_file_name: str | None) -> Any:
        if not local_file_name:
            raise ValueError("The endpoint has no model: add it with --model-id <the export step's registered model>.")
        folder = Path(local_file_name)
        if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
            raise ValueError(
                f"{folder} is not the export step's folder (config.json and tokenizer.json): give --model-id "
                "the model steps/export.py registered, not the adapter model."
            )
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForSeq2SeqLM.from_pretrained(folder).to(device).eval()
        return self.model

    def preprocess(self, body: Any, state: dict, collect_custom_statistics_fn: Callable[[dict], None] | None = None) -> list[str]:
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

    def process(self, data: list[str], state: dict, collect_custom_statistics_fn: Callable[[dict], None] | None = None) -> list[str]:
        answers = []
        for start in range(0, len(data), BATCH_SIZE):
            encoded = self.tokenizer(data[start : start + BATCH_SIZE], padding=True, truncation=True, return_tensors="pt")
            with torch.inference_mode():
                generated = self.model.generate(**encoded.to(self.model.device))
            answers += self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        if collect_custom_statistics_fn:
            collect_custom_statistics_fn({"texts": len(data)})
        return answers

    def postprocess(self, data: list[str], state: dict, collect_custom_statistics_fn: Callable[[dict], None] | None = None) -> dict:
        return {"text": data[0] if state["one_text"] else data}
