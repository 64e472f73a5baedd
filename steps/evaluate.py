"""Step 4, evaluate: generate answers for the test split and score them (protocol in components/metrics.py,
through its Hugging Face ``evaluate`` module components/ru_text_metrics).

    python steps/evaluate.py --local --train-task-id offline-... --ingest-task-id offline-... [--decoding beam]

Decoding presets: greedy (default), beam (4 beams), sampling (temperature 0.7,
top-k 50, top-p 0.95); single flags override the preset. Metrics are reported as
scalars, a sample of predictions as a table, and every prediction as an artifact.

Beside the text metrics, the test loss (cross-entropy per target token) is computed.
With ``--compare-base true`` (the default) the untuned base is scored on the same rows
the same way: the same model with the adapters as training starts them (LoRA's B at
zero, the prompt at its seeded initialisation; see ``load_untuned``). Both sets of
numbers and their difference are reported, and the predictions get a base column; it
costs one more generation pass.
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

from clearml_adapter import tracking
from cli.options import ArgumentParser, add_settings
from components.comparison import compare, comparison_table
from components.data import preprocess, read_tsv, source_text
from components.decoding import Decoding, chosen_decoding
from components.generation import generate_predictions
from components.modeling import adapter_digest, input_length_for, load_finetuned, load_untuned
from components.threads import use_cpu_threads_for
from components.training import evaluation_loader, validation_loss
from steps.config import EvaluateOptions

SAMPLE_ROWS = 20
METRIC_MODULE = ROOT / "components" / "ru_text_metrics"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_settings(parser, EvaluateOptions)
    tracking.add_common_arguments(parser)
    return parser


def test_split(args: argparse.Namespace) -> pd.DataFrame:
    path = tracking.upstream_input(args.ingest_task_id, "test", args.test_tsv, ("--ingest-task-id", "--test-tsv"), "a test TSV file")
    frame = read_tsv(path)
    return frame.head(args.max_samples) if args.max_samples else frame


def score(model, tokenizer, frame: pd.DataFrame, args: argparse.Namespace, decoding: Decoding, metric) -> tuple[dict, list[str]]:
    """``metric`` (the protocol's evaluate module) of the model's predictions for the rows, with the test loss; and the predictions."""
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    use_cpu_threads_for(model)
    sources = [source_text(i, x) for i, x in zip(frame["instruction"], frame["input"])]
    predictions = generate_predictions(
        model,
        tokenizer,
        sources,
        batch_size=args.batch_size,
        max_input_length=args.max_input_length,
        seed=args.seed,
        show_progress=True,
        **asdict(decoding),
    )
    metrics = metric.compute(predictions=predictions, references=frame["output"].tolist())
    rows = preprocess(frame, tokenizer, args.max_input_length, args.max_target_length)
    metrics["loss"] = validation_loss(model, evaluation_loader(model, tokenizer, rows, args.batch_size), "fp32")
    return metrics, predictions


def run(args: argparse.Namespace, task) -> dict:
    decoding = chosen_decoding(args)
    frame = test_split(args)
    model_dir = tracking.upstream_input(args.train_task_id, "adapter", args.model_dir, ("--train-task-id", "--model-dir"), "an adapter directory")
    print(f"Evaluating on {len(frame)} test rows with {decoding.describe()}.")
    metric = evaluate.load(str(METRIC_MODULE))
    args.max_input_length = input_length_for(model_dir, args.max_input_length)
    print(f"Inputs are cut at {args.max_input_length} tokens.")
    metrics, predictions = score(*load_finetuned(model_dir), frame, args, decoding, metric)
    table = frame.assign(prediction=predictions)[["instruction", "input", "output", "prediction"]]
    base_metrics = None
    if args.compare_base:
        print("The untuned base (adapters at their initial values) on the same rows:")
        base_metrics, base_predictions = score(*load_untuned(model_dir), frame, args, decoding, metric)
        table = table.assign(base_prediction=base_predictions)

    predictions_path = args.output_dir / "predictions.tsv"
    table.to_csv(predictions_path, sep="\t", index=False)
    tracking.upload_path(task, "predictions", predictions_path)
    evaluation = {
        "metrics": metrics,
        "base_metrics": base_metrics,
        "difference": compare(metrics, base_metrics),
        "decoding": {"preset": args.decoding, **asdict(decoding), "description": decoding.describe()},
        "rows": len(frame),
        "max_input_length": args.max_input_length,
        "adapter_sha256": adapter_digest(model_dir),
        "train_task_id": args.train_task_id,
        "model_dir": None if args.train_task_id else str(model_dir),
    }
    tracking.upload_json(task, "evaluation", evaluation, args.output_dir)
    tracking.report_metrics(task, metrics, table.head(SAMPLE_ROWS), base_metrics=base_metrics)
    print(comparison_table(metrics, base_metrics))
    return evaluation


def main(argv: list[str] | None = None) -> dict:
    return tracking.run_step("evaluate", "testing", build_parser, run, argv)


if __name__ == "__main__":
    main()
