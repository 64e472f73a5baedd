"""Serving the exported model on the CPU: transformers' ``generate`` beside CTranslate2, float32 and int8.

    python benchmarks/serving.py --size small                    # t5-small shape, seconds
    python benchmarks/serving.py --size rut5-large --single-texts 2   # ruT5-large's shape, minutes on 2 cores

A random-weight model of the size with LoRA and the 20-token prompt goes the way a registered
model does: saved as an adapter folder, exported (steps/export.py's code) and converted
(``--ctranslate2``'s). Greedy search; the end of sequence is held off (``min_new_tokens``) so every
text produces exactly ``--max-new-tokens`` tokens in every engine and the rates compare like work.
Batch 1 times ``--single-texts`` texts one at a time; batch 16 times ``--texts`` texts in batches of 16.
int8 is ``torch.ao.quantization.quantize_dynamic`` for transformers (the Linear layers, as
CTranslate2 quantizes them) and ``compute_type="int8"`` for CTranslate2. ``greedy_agreement`` is
the share of texts whose float32 tokens are the same in both engines. The last line is JSON.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict
from pathlib import Path

import ctranslate2
import torch
from common import SIZES, build_model, device_name, print_json_last, timed
from generation import sample_texts
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from components.decoding import Decoding
from components.export.ctranslate2_model import CTranslate2Generator, convert_to_ctranslate2
from components.export.plain_checkpoint import export_plain_checkpoint
from components.modeling import apply_peft, save_adapter
from components.settings import SAMPLE_DATA_DIR, AdapterSettings, TokenizationSettings
from components.tiny import build_tiny_tokenizer, sample_corpus

BATCH = 16


def export_random_model(size: str, folder: Path) -> tuple[Path, Path]:
    """The plain checkpoint and its CTranslate2 conversion of a random model of ``size`` with the adapters."""
    build_model(size, torch.device("cpu")).save_pretrained(folder / "base")
    settings = AdapterSettings()
    model = apply_peft(AutoModelForSeq2SeqLM.from_pretrained(folder / "base"), prompt_length=settings.prompt_length)
    # The tiny model's tokenizer (built from the sample data) stands in for ruT5's: only token ids matter here.
    tokenizer = build_tiny_tokenizer(sample_corpus(SAMPLE_DATA_DIR / "train.tsv"))
    save_adapter(model, folder / "adapter", str(folder / "base"), settings, tokenizer)
    decoding = {**asdict(Decoding()), "description": Decoding().describe()}
    export_plain_checkpoint(folder / "adapter", folder / "model", decoding=decoding, max_input_length=TokenizationSettings.max_input_length)
    return folder / "model", convert_to_ctranslate2(folder / "model", folder / "ctranslate2")


def rates(generate, texts: list[str], single_texts: int, new_tokens: int) -> dict:
    """New tokens per second at batch 1 and at batch 16, and the tokens of the batched run."""
    generate(texts[:BATCH])  # warm-up
    outputs: list[list[int]] = []
    batched_s = timed(lambda: [outputs.extend(generate(texts[i : i + BATCH])) for i in range(0, len(texts), BATCH)], lambda: None)
    single_s = timed(lambda: [generate([text]) for text in texts[:single_texts]], lambda: None)
    return {
        "batch_1": round(single_texts * new_tokens / single_s, 1),
        f"batch_{BATCH}": round(len(texts) * new_tokens / batched_s, 1),
        "tokens": outputs,
    }


def transformers_generator(export: Path, tokenizer, precision: str, new_tokens: int):
    """``generate`` on the exported model in ``precision``: texts -> exactly ``new_tokens`` token ids each."""
    model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
    if precision == "int8":
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)

    def generate(batch: list[str]) -> list[list[int]]:
        encoded = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**encoded, num_beams=1, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return output[:, 1:].tolist()

    return generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--texts", type=int, default=2 * BATCH, help="texts generated in batches of 16")
    parser.add_argument("--single-texts", type=int, default=8, help="texts generated one at a time")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)

    threads = torch.get_num_threads()
    texts = sample_texts(args.texts)
    new = args.max_new_tokens
    with tempfile.TemporaryDirectory() as folder:
        export, converted = export_random_model(args.size, Path(folder))
        tokenizer = AutoTokenizer.from_pretrained(export)
        results = {}
        for precision in ("float32", "int8"):
            results[f"transformers_{precision}"] = rates(transformers_generator(export, tokenizer, precision, new), texts, args.single_texts, new)
            generator = CTranslate2Generator(converted, device="cpu", compute_type=precision, intra_threads=threads)
            results[f"ctranslate2_{precision}"] = rates(
                lambda batch: generator.generate(batch, max_new_tokens=new, min_new_tokens=new), texts, args.single_texts, new
            )
    same = sum(a == b for a, b in zip(results["transformers_float32"]["tokens"], results["ctranslate2_float32"]["tokens"]))
    result = {
        "benchmark": "serving.py",
        "size": args.size,
        "device": device_name(torch.device("cpu")),
        "max_new_tokens": new,
        "texts": args.texts,
        "single_texts": args.single_texts,
        "ctranslate2": ctranslate2.__version__,
        "new_tokens_per_s": {name: {key: value for key, value in rate.items() if key != "tokens"} for name, rate in results.items()},
        "greedy_agreement": round(same / args.texts, 3),
    }
    print_json_last(result)
    return result


if __name__ == "__main__":
    main()
