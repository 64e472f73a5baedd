"""Batched generation with a LoRA + prompt model, and a command line to try a model.

    python -m components.generation --model-dir DIR [--preset beam] "текст" ...

Texts are sorted by length so each batch pads little, and the predictions come
back in input order. The encoder mask gets the prompt columns the model expects.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, replace

import torch
from tqdm.auto import tqdm

from components.cli import ArgumentParser, add_settings
from components.decoding import DECODING_PRESETS, Decoding, DecodingOptions
from components.errors import UserError
from components.prompt_tuning import extend_attention_mask, prompt_length_of
from components.settings import TokenizationSettings

log = logging.getLogger(__name__)


@torch.no_grad()
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
    """Generate one prediction per text, in the order of ``texts``."""
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


def decoding_from_args(args: argparse.Namespace) -> Decoding:
    overrides = {name: getattr(args, name) for name in asdict(Decoding()) if getattr(args, name) is not None}
    return replace(DECODING_PRESETS[args.decoding], **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Generate answers with a fine-tuned model directory.")
    parser.add_argument("--model-dir", required=True, help="directory written by the train or register step")
    parser.add_argument("--batch-size", type=int, default=16, help="texts generated together")
    add_settings(parser, DecodingOptions)
    parser.add_argument("texts", nargs="+", help="instructions (with their input on a new line)")
    return parser


def main(argv: list[str] | None = None) -> list[str]:
    from components.modeling import load_finetuned

    args = build_parser().parse_args(argv)
    decoding = decoding_from_args(args)
    try:
        model, tokenizer = load_finetuned(args.model_dir)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(f"# {decoding.describe()}")
    predictions = generate_predictions(model, tokenizer, args.texts, batch_size=args.batch_size, **asdict(decoding))
    for text, prediction in zip(args.texts, predictions):
        print(f"> {text}\n{prediction}\n")
    return predictions


if __name__ == "__main__":
    main()
