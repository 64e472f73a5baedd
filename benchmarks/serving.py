"""Serving the exported model on the CPU: transformers' ``generate`` beside CTranslate2, float32 and int8.

    python benchmarks/serving.py --size small                                  # t5-small shape, a few minutes
    python benchmarks/serving.py --size rut5-large --texts 16 --single-texts 2 # ruT5-large's shape, longer

A random-weight model of the size with LoRA and the 20-token prompt goes the way a registered
model does: saved as an adapter folder, exported (steps/export.py's code) and converted
(``--ctranslate2``'s). Greedy search; the end of sequence is held off (``min_new_tokens``) so every
text produces exactly ``--max-new-tokens`` tokens in every engine and the rates compare like work.
Batch 16 times ``--texts`` texts in batches of 16; batch 1 times ``--single-texts`` texts one at a time.
int8 is ``torch.ao.quantization.quantize_dynamic`` for transformers (the Linear layers, as
CTranslate2 quantizes them) and ``compute_type="int8"`` for CTranslate2.

The eight configurations (engine, precision, batch) take turns, ``--repeats`` rounds of them after one
warm-up round, so that a burst of load on the machine falls on all of them alike; each figure is the
median of its runs, with the range, the CPU seconds and the 1-minute load average beside it.
``speedup`` divides medians; ``greedy_agreement`` is the share of texts whose float32 tokens are the
same in both engines. The last line is JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import ctranslate2
import torch
from common import SIZES, build_model, device_name, interleaved, print_json_last, rate_summary
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


def batch_works(generate, texts: list[str], single_texts: int, outputs: list[list[int]]) -> dict[str, Callable[[], object]]:
    """The two timed works of one engine: every text in batches of 16 (its tokens kept in ``outputs``), and the first
    ``single_texts`` texts one at a time."""

    def batched() -> None:
        outputs[:] = [ids for i in range(0, len(texts), BATCH) for ids in generate(texts[i : i + BATCH])]

    return {f"batch_{BATCH}": batched, "batch_1": lambda: [generate([text]) for text in texts[:single_texts]]}


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
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="the model's shape (random weights)")
    parser.add_argument("--texts", type=int, default=2 * BATCH, help="texts generated in batches of 16")
    parser.add_argument("--single-texts", type=int, default=8, help="texts generated one at a time")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated for each text")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of every configuration (the figures are medians)")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    texts = sample_texts(args.texts)
    new = args.max_new_tokens
    works: dict[str, Callable[[], object]] = {}
    outputs: dict[str, list[list[int]]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        export, converted = export_random_model(args.size, Path(folder))
        tokenizer = AutoTokenizer.from_pretrained(export)
        for precision in ("float32", "int8"):
            generator = CTranslate2Generator(converted, device="cpu", compute_type=precision, intra_threads=threads)
            engines = {
                f"transformers_{precision}": transformers_generator(export, tokenizer, precision, new),
                f"ctranslate2_{precision}": lambda batch, generator=generator: generator.generate(batch, max_new_tokens=new, min_new_tokens=new),
            }
            for engine, generate in engines.items():
                outputs[engine] = []
                for batch, work in batch_works(generate, texts, args.single_texts, outputs[engine]).items():
                    works[f"{engine} {batch}"] = work
        for work in works.values():  # warm-up: first calls allocate and tune
            work()
        samples = interleaved(works, args.repeats)
    amounts = {f"batch_{BATCH}": len(texts) * new, "batch_1": args.single_texts * new}
    rates: dict[str, dict] = {}
    for name, runs in samples.items():
        engine, batch = name.split(" ")
        rates.setdefault(engine, {})[batch] = rate_summary(runs, amounts[batch])
    same = sum(a == b for a, b in zip(outputs["transformers_float32"], outputs["ctranslate2_float32"]))
    batched = {engine: rate[f"batch_{BATCH}"]["median"] for engine, rate in rates.items()}
    result = {
        "benchmark": "serving.py",
        "size": args.size,
        "device": device_name(torch.device("cpu")),
        "max_new_tokens": new,
        "texts": args.texts,
        "single_texts": args.single_texts,
        "repeats": args.repeats,
        "ctranslate2": ctranslate2.__version__,
        "load_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "new_tokens_per_s": rates,
        "speedup_batch_16_over_transformers_float32": {engine: round(rate / batched["transformers_float32"], 2) for engine, rate in batched.items()},
        "greedy_agreement": round(same / args.texts, 3),
    }
    print_json_last(result)
    return result


if __name__ == "__main__":
    main()
