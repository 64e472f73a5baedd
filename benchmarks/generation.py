"""Generation throughput: batched and length-sorted (generate_predictions) against one text at a time.

    python benchmarks/generation.py --size small --texts 64 --max-new-tokens 32     # 2-core CPU
    python benchmarks/generation.py --size rut5-large --texts 1125 --max-new-tokens 200   # GPU, the test split's size

Random-weight architecture with LoRA + prompt; texts are the shipped sample instructions,
repeated to ``--texts``. End of sequence is disabled so every text produces exactly
``--max-new-tokens`` tokens and both ways do the same work. The last line is JSON.
"""

from __future__ import annotations

import argparse
import csv

import torch
from common import ROOT, SIZES, build_model, device_and_sync, device_name, print_json_last, timed

from components.generation import generate_predictions
from components.modeling import apply_peft
from components.settings import SAMPLE_DATA_DIR
from components.tiny import build_tiny_tokenizer, sample_corpus


def sample_texts(count: int) -> list[str]:
    texts = []
    for name in ("train", "test"):
        with open(ROOT / "data" / "sample" / f"{name}.tsv", encoding="utf-8", newline="") as handle:
            texts += [f"{row['instruction']}\n{row['input']}".strip() for row in csv.DictReader(handle, delimiter="\t")]
    return [texts[i % len(texts)] for i in range(count)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--single-texts", type=int, default=None, help="texts timed one at a time (default: all); the rate is per text")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)

    device, sync = device_and_sync()
    model = apply_peft(build_model(args.size, device), prompt_length=20).eval()
    if args.dtype == "bf16":
        model.to(torch.bfloat16)
    model.generation_config.eos_token_id = None  # fixed-length outputs: equal work both ways
    # The tiny model's tokenizer (built from the sample data) stands in for ruT5's: only token ids matter here.
    tokenizer = build_tiny_tokenizer(sample_corpus(SAMPLE_DATA_DIR / "train.tsv"))
    texts = sample_texts(args.texts)
    decoding = dict(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)

    generate_predictions(model, tokenizer, texts[: args.batch_size], batch_size=args.batch_size, **decoding)  # warm-up
    batched_s = timed(lambda: generate_predictions(model, tokenizer, texts, batch_size=args.batch_size, **decoding), sync)
    single = texts[: args.single_texts or len(texts)]
    single_s = timed(lambda: [generate_predictions(model, tokenizer, [t], batch_size=1, **decoding) for t in single], sync)
    new_tokens = args.max_new_tokens
    result = {
        "batched_tokens_per_s": round(len(texts) * new_tokens / batched_s, 1),
        "single_tokens_per_s": round(len(single) * new_tokens / single_s, 1),
        "speedup": round((len(texts) / batched_s) / (len(single) / single_s), 2),
        "batched_s": round(batched_s, 3),
        "texts": len(texts),
        "single_texts": len(single),
        "max_new_tokens": new_tokens,
        "batch_size": args.batch_size,
        "num_beams": args.num_beams,
        "size": args.size,
        "dtype": args.dtype,
        "device": device_name(device),
    }
    print_json_last(result)
    return result


if __name__ == "__main__":
    main()
