"""Batched generation with a LoRA + prompt model, and a command line to try a model.

    python -m components.generation --model-dir DIR [--preset beam] "текст" ...

Texts are sorted by length so each batch pads little, and the predictions come
back in input order. The encoder mask gets the prompt columns the model expects.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass, replace

import torch
from tqdm.auto import tqdm

from components.cli import ArgumentParser, parse_bool
from components.errors import UserError
from components.prompt_tuning import extend_attention_mask, prompt_length_of
from components.settings import DECODING, TokenizationSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; temperature, top_k and top_p only act when ``do_sample``."""

    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = TokenizationSettings.max_target_length

    def describe(self) -> str:
        if self.do_sample:
            mode = f"sampling (temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p})"
            if self.num_beams > 1:
                mode = f"beam sampling with {self.num_beams} beams, " + mode
        else:
            mode = f"beam search with {self.num_beams} beams" if self.num_beams > 1 else "greedy decoding"
            if (self.temperature, self.top_k, self.top_p) != (Decoding.temperature, Decoding.top_k, Decoding.top_p):
                mode += " (temperature/top_k/top_p are set but do nothing without do_sample)"
        return f"{mode}, at most {self.max_new_tokens} new tokens"

    def generate_kwargs(self) -> dict:
        kwargs = {"num_beams": self.num_beams, "do_sample": self.do_sample, "max_new_tokens": self.max_new_tokens}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs


# Three ways to decode, for evaluation and the CLI: the deterministic default, a
# beam search for quality, and sampling for variety.
DECODING_PRESETS = {
    "greedy": Decoding(),
    "beam": Decoding(num_beams=4),
    "sampling": Decoding(do_sample=True, temperature=0.7, top_k=50, top_p=0.95),
}


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


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Decoding flags shared by the CLI and the evaluate step; a preset fills what is not given."""
    parser.add_argument("--decoding", choices=sorted(DECODING_PRESETS), default=DECODING, help=f"decoding preset (default {DECODING})")
    parser.add_argument("--num-beams", type=int, help="beam count (overrides the preset)")
    parser.add_argument("--do-sample", type=parse_bool, metavar="true|false", help="sample instead of searching")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-new-tokens", type=int)


def decoding_from_args(args: argparse.Namespace) -> Decoding:
    overrides = {name: getattr(args, name) for name in asdict(Decoding()) if getattr(args, name) is not None}
    return replace(DECODING_PRESETS[args.decoding], **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description="Generate answers with a fine-tuned model directory.")
    parser.add_argument("--model-dir", required=True, help="directory written by the train or register step")
    parser.add_argument("--batch-size", type=int, default=16)
    add_decoding_arguments(parser)
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
