"""Try a fine-tuned model: generate answers to instructions with a model directory.

    python -m tools.generate --model-dir DIR [--decoding beam] "текст" ...

The directory is one the train or register step wrote (its adapter and tokenizer, and the base it names).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from cli.options import ArgumentParser, add_settings
from components.decoding import DecodingOptions, chosen_decoding
from components.errors import UserError
from components.generation import generate_predictions
from steps.config import TRAINED_INPUT_HELP


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True, help="directory written by the train or register step")
    parser.add_argument("--batch-size", type=int, default=16, help="texts generated together")
    parser.add_argument("--max-input-length", type=int, default=None, help=TRAINED_INPUT_HELP)
    add_settings(parser, DecodingOptions)
    parser.add_argument("texts", nargs="+", help="instructions (with their input on a new line)")
    return parser


def main(argv: list[str] | None = None) -> list[str]:
    from components.modeling import input_length_for, load_finetuned

    args = build_parser().parse_args(argv)
    decoding = chosen_decoding(args)
    try:
        model, tokenizer = load_finetuned(args.model_dir)
        max_input_length = input_length_for(args.model_dir, args.max_input_length)
    except UserError as error:
        sys.exit(f"error: {error}")
    print(f"# {decoding.describe()}")
    predictions = generate_predictions(
        model, tokenizer, args.texts, batch_size=args.batch_size, max_input_length=max_input_length, **asdict(decoding)
    )
    for text, prediction in zip(args.texts, predictions):
        print(f"> {text}\n{prediction}\n")
    return predictions


if __name__ == "__main__":
    main()
