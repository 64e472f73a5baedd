"""Step 2, preprocess: validated splits -> tokenized splits (Arrow) for the base model's tokenizer.

    python steps/preprocess.py --local --ingest-task-id offline-... --model tiny

The source text is the instruction, then the input on its own line; the target is
``output``. Truncated to 100 input / 200 target tokens by default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearml_adapter import tracking
from cli.options import ArgumentParser, add_settings
from components.data import SPLITS, TOKENIZATION_FILE, preprocess, read_tsv
from components.errors import UserError
from components.modeling import load_tokenizer
from steps.config import PreprocessOptions


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_settings(parser, PreprocessOptions)
    tracking.add_common_arguments(parser)
    return parser


def split_files(args: argparse.Namespace) -> dict[str, Path]:
    if args.ingest_task_id:
        return {name: tracking.artifact_path(args.ingest_task_id, name) for name in SPLITS}
    if args.splits_dir:
        return {name: Path(args.splits_dir) / f"{name}.tsv" for name in SPLITS}
    raise UserError("Give --ingest-task-id (a ClearML ingest task) or --splits-dir (a folder of split TSV files).")


def run(args: argparse.Namespace, task) -> dict:
    tokenizer = load_tokenizer(args.model)
    tokenized_dir = args.output_dir / "tokenized"
    summary = {"model": args.model, "max_input_length": args.max_input_length, "max_target_length": args.max_target_length, "splits": {}}
    for name, path in split_files(args).items():
        dataset = preprocess(read_tsv(path), tokenizer, args.max_input_length, args.max_target_length)
        dataset.save_to_disk(str(tokenized_dir / name))
        summary["splits"][name] = {
            "rows": len(dataset),
            "inputs_truncated": sum(len(ids) == args.max_input_length for ids in dataset["input_ids"]),
            "targets_truncated": sum(len(ids) == args.max_target_length for ids in dataset["labels"]),
        }
    (tokenized_dir / TOKENIZATION_FILE).write_text(tracking.to_json(summary), encoding="utf-8")
    tracking.upload_path(task, "tokenized", tokenized_dir)
    tracking.upload_json(task, "tokenization", summary, args.output_dir)
    counts = ", ".join(f"{name}: {split['rows']}" for name, split in summary["splits"].items())
    print(f"Tokenized {counts} rows into {tokenized_dir}.")
    return {"tokenized_dir": str(tokenized_dir), **summary}


def main(argv: list[str] | None = None) -> dict:
    return tracking.run_step("preprocess", "data_processing", build_parser, run, argv)


if __name__ == "__main__":
    main()
