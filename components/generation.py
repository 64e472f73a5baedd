"""Batched generation with a LoRA + prompt model (``python -m tools.generate`` tries a model with it).

Texts are sorted by length so each batch pads little, and the predictions come
back in input order. The encoder mask gets the prompt columns the model expects.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from components.decoding import Decoding
from components.prompt_tuning import extend_attention_mask, prompt_length_of
from components.settings import TokenizationSettings

log = logging.getLogger(__name__)


def generate_predictions(
    model,
    tokenizer,
    texts: list[str],
    *,
    num_beams: int = Decoding.num_beams,
    temperature: float = Decoding.temperature,
    top_k: int = Decoding.top_k,
    top_p: float = Decoding.top_p,
    do_sample: bool = Decoding.do_sample,
    max_new_tokens: int = Decoding.max_new_tokens,
    batch_size: int = 16,
    max_input_length: int = TokenizationSettings.max_input_length,
    seed: int | None = 0,
    show_progress: bool = False,
) -> list[str]:
    """Generate one prediction per text, in the order of ``texts`` (``model.generate`` keeps no gradients)."""
    decoding = Decoding(num_beams, do_sample, temperature, top_k, top_p, max_new_tokens)
    log.info("Generating %d predictions with %s.", len(texts), decoding.describe())
    if do_sample and seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    prompt_length = prompt_length_of(model)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_input_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    predictions: list[str] = [""] * len(texts)
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=not show_progress):
        indices = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt").to(model.device)
        attention_mask = extend_attention_mask(batch["attention_mask"], prompt_length)
        output_ids = model.generate(input_ids=batch["input_ids"], attention_mask=attention_mask, **decoding.generate_kwargs())
        for i, text in zip(indices, tokenizer.batch_decode(output_ids, skip_special_tokens=True)):
            predictions[i] = text.strip()
    model.train(was_training)
    return predictions
