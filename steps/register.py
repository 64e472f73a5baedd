"""Step 5, register: pick the best evaluated model by a metric and register it.

    python steps/register.py --local --candidates offline-...,offline-... --metric chrf

Candidates are evaluate task ids. On a server the winner's adapter is published in
the ClearML model registry, tagged and with its metrics as metadata. Offline (and
always, locally) it is written to ``<output-dir>/model``, a directory that
``components.modeling.load_finetuned`` loads and ``python -m tools.generate
--model-dir`` uses.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearml_adapter import tracking
from cli.options import ArgumentParser, add_settings
from components.errors import UserError
from steps.config import RegisterOptions


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    add_settings(parser, RegisterOptions)
    tracking.add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace, task) -> dict:
    candidate_ids = [c.strip() for c in args.candidates.split(",") if c.strip()]
    if not candidate_ids:
        raise UserError("--candidates is empty; give the task ids of one or more evaluate steps, comma-separated.")
    evaluations = {task_id: tracking.artifact_object(task_id, "evaluation") for task_id in candidate_ids}
    for task_id, evaluation in evaluations.items():
        print(f"{task_id}: {args.metric} = {evaluation['metrics'][args.metric]:.4f}")
    best_id = max(evaluations, key=lambda task_id: evaluations[task_id]["metrics"][args.metric])
    best = evaluations[best_id]
    if not best.get("train_task_id"):
        raise UserError(f"Evaluate task {best_id} scored a local --model-dir, not a train task; evaluate with --train-task-id to register.")

    model_dir = args.output_dir / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(tracking.artifact_path(best["train_task_id"], "adapter"), model_dir)
    record = {"evaluate_task_id": best_id, "train_task_id": best["train_task_id"], "metric": args.metric, **best}
    (model_dir / "evaluation.json").write_text(tracking.to_json(record), encoding="utf-8")
    tracking.upload_path(task, "model", model_dir)
    model_id = tracking.register_model(
        task,
        args.model_name,
        model_dir,
        tags=["best", f"by {args.metric}"],
        metadata={**{f"test_{k}": v for k, v in best["metrics"].items()}, "train_task_id": best["train_task_id"]},
        publish=args.publish,
    )
    where = f"registered as model {model_id}" if model_id else "offline: not in a model registry"
    print(f"Best by {args.metric}: evaluate task {best_id} ({best['metrics'][args.metric]:.4f}); {where}; model directory {model_dir}.")
    return {"model_dir": str(model_dir), "model_id": model_id, "best_evaluate_task_id": best_id, "metric": args.metric, "metrics": best["metrics"]}


def main(argv: list[str] | None = None) -> dict:
    return tracking.run_step("register", "custom", build_parser, run, argv)


if __name__ == "__main__":
    main()
