"""Step 1, ingest: dataset TSV files (or the hub dataset) -> validated train / validation / test splits.

    python steps/ingest.py --local --train-tsv data/sample/train.tsv --test-tsv data/sample/test.tsv

Validation is carved from train with a fixed seed; test stays untouched. Invalid rows
fail the step, listed by file and line, unless --skip-invalid-rows, which skips them
and records each one in the ``invalid_rows`` artifact.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from clearml_adapter import tracking
from cli.options import ArgumentParser, add_settings
from components.data import COLUMNS, SPLITS, InvalidRow, TsvError, describe_invalid_rows, parse_tsv
from components.errors import UserError
from steps.config import IngestOptions

HUB_TEST_SIZE = 1125  # the published test split size; the hub copy has a single split


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_settings(parser, IngestOptions)
    tracking.add_common_arguments(parser)
    return parser


def read_split(path: str, skip_invalid: bool) -> tuple[pd.DataFrame, list[InvalidRow]]:
    frame, invalid = parse_tsv(tracking.local_copy(path))
    if invalid and not skip_invalid:
        raise TsvError(f"{describe_invalid_rows(invalid)}. Fix them, or pass --skip-invalid-rows to skip them.")
    return frame, invalid


def from_hub(dataset_id: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The hub copy has one split: the published test size is carved from it with the seed."""
    from datasets import load_dataset

    try:
        frame = load_dataset(dataset_id, split="train").to_pandas()
    except Exception as error:  # offline, unknown id, no access: all end the same way for the user
        raise UserError(
            f"Cannot load the dataset {dataset_id!r} from the Hugging Face Hub ({type(error).__name__}); pass --train-tsv and --test-tsv instead."
        ) from None
    frame = frame.reindex(columns=list(COLUMNS)).fillna("").astype(str)
    frame = frame[(frame["instruction"].str.strip() != "") & (frame["output"].str.strip() != "")]
    test = frame.sample(n=min(HUB_TEST_SIZE, len(frame) // 10), random_state=seed)
    return frame.drop(test.index), test


def carve_validation(train: pd.DataFrame, requested: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    size = max(1, min(requested, len(train) // 10))
    validation = train.sample(n=size, random_state=seed)
    return train.drop(validation.index), validation


def run(args: argparse.Namespace, task) -> dict:
    if bool(args.train_tsv) != bool(args.test_tsv):
        raise UserError("Give both --train-tsv and --test-tsv, or neither to load --dataset-id from the hub.")
    invalid: list[InvalidRow] = []
    if args.train_tsv:
        train, invalid_train = read_split(args.train_tsv, args.skip_invalid_rows)
        test, invalid_test = read_split(args.test_tsv, args.skip_invalid_rows)
        invalid = invalid_train + invalid_test
        sources = {"train": args.train_tsv, "test": args.test_tsv}
    else:
        train, test = from_hub(args.dataset_id, args.seed)
        sources = {"train": args.dataset_id, "test": args.dataset_id}
    train, validation = carve_validation(train, args.validation_size, args.seed)

    splits_dir = args.output_dir / "splits"
    splits_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, frame in zip(SPLITS, (train, validation, test)):
        path = splits_dir / f"{name}.tsv"
        frame.to_csv(path, sep="\t", index=False)
        tracking.upload_path(task, name, path)
        rows[name] = len(frame)
    report = {"sources": sources, "rows": rows, "seed": args.seed, "invalid_rows_skipped": len(invalid)}
    tracking.upload_json(task, "ingest_report", report, args.output_dir)
    if invalid:
        tracking.upload_json(task, "invalid_rows", [vars(row) for row in invalid], args.output_dir)
        print(f"Skipped {describe_invalid_rows(invalid)}.")
    print(f"Splits: {rows['train']} train, {rows['validation']} validation, {rows['test']} test rows in {splits_dir}.")
    return {"splits_dir": str(splits_dir), **report}


def main(argv: list[str] | None = None) -> dict:
    return tracking.run_step("ingest", "data_processing", build_parser, run, argv)


if __name__ == "__main__":
    main()
