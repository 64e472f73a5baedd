"""Step 4, evaluate: generate answers for the test split and score them (protocol in components/metrics.py,
through its Hugging Face ``evaluate`` module components/ru_text_metrics).

    python steps/evaluate.py --local --train-task-id offline-... --ingest-task-id offline-... [--decoding beam]

Decoding presets: greedy (default), beam (4 beams), sampling (temperature 0.7,
top-k 50, top-p 0.95); single flags override the preset. Metrics are reported as
scalars, a sample of predictions as a table, and every prediction as an artifact.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder leads sys.path, and ``import evaluate`` would import this
# step instead of Hugging Face's package: the project root takes that folder's place.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != ROOT / "steps")]

import evaluate
import pandas as pd
import torch

from components import tracking
from components.data import read_tsv, source_text
from components.generation import add_decoding_arguments, decoding_from_args, generate_predictions
from components.modeling import load_finetuned
from components.settings import TokenizationSettings

SAMPLE_ROWS = 20
METRIC_MODULE = ROOT / "components" / "ru_text_metrics"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-task-id", help="ClearML task id of the train step (its adapter artifact is evaluated)")
    parser.add_argument("--model-dir", help="instead of a task id: an adapter directory written by the train step")
    parser.add_argument("--ingest-task-id", help="ClearML task id of the ingest step (its test split is used)")
    parser.add_argument("--test-tsv", help="instead of a task id: a test TSV file")
    parser.add_argument("--max-samples", type=int, default=None, help="score only the first N test rows")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-input-length", type=int, default=TokenizationSettings.max_input_length)
    parser.add_argument("--seed", type=int, default=0, help="seed for sampling")
    add_decoding_arguments(parser)
    tracking.add_common_arguments(parser)
    return parser


def test_split(args: argparse.Namespace) -> pd.DataFrame:
    path = tracking.upstream_input(args.ingest_task_id, "test", args.test_tsv, ("--ingest-task-id", "--test-tsv"), "a test TSV file")
    frame = read_tsv(path)
    return frame.head(args.max_samples) if args.max_samples else frame


def run(args: argparse.Namespace, task) -> dict:
    decoding = decoding_from_args(args)
    frame = test_split(args)
    model_dir = tracking.upstream_input(args.train_task_id, "adapter", args.model_dir, ("--train-task-id", "--model-dir"), "an adapter directory")
    model, tokenizer = load_finetuned(model_dir)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    print(f"Evaluating on {len(frame)} test rows with {decoding.describe()}.")
    sources = [source_text(i, x) for i, x in zip(frame["instruction"], frame["input"])]
    predictions = generate_predictions(
        model, tokenizer, sources, batch_size=args.batch_size, max_input_length=args.max_input_length,
        seed=args.seed, show_progress=True, **asdict(decoding),
    )
    metrics = evaluate.load(str(METRIC_MODULE)).compute(predictions=predictions, references=frame["output"].tolist())

    table = frame.assign(prediction=predictions)[["instruction", "input", "output", "prediction"]]
    predictions_path = args.output_dir / "predictions.tsv"
    table.to_csv(predictions_path, sep="\t", index=False)
    tracking.upload_path(task, "predictions", predictions_path)
    evaluation = {"metrics": metrics, "decoding": {"preset": args.decoding, **asdict(decoding), "description": decoding.describe()},
                  "rows": len(frame), "train_task_id": args.train_task_id, "model_dir": None if args.train_task_id else str(model_dir)}
    tracking.upload_json(task, "evaluation", evaluation, args.output_dir)
    tracking.report_metrics(task, metrics, table.head(SAMPLE_ROWS))
    print(tracking.metrics_table(metrics))
    return evaluation


def main(argv: list[str] | None = None) -> dict:
    return tracking.run_step("evaluate", "testing", build_parser, run, argv)


if __name__ == "__main__":
    main()
