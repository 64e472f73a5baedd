"""Hyperparameter sweep over lora_rank and prompt_length (optionally learning_rate).

    python pipelines/run_hpo.py --template-task-id <train task id>       # ClearML: HyperParameterOptimizer + Optuna
    python pipelines/run_hpo.py --local --preset tiny --trials 3 --output-dir runs/hpo   # offline, this machine

The objective is the train step's own validation scalar (title ``loss``, series
``validation``, minimised): the test split is never looked at while choosing. The
best trial's adapter is then evaluated on test and registered by the register step.

On a server, ClearML's HyperParameterOptimizer with OptimizerOptuna clones a template
train task (``--template-task-id``, else the newest completed train task of the
project, else one created from the newest completed preprocess task) and enqueues trials
on ``--queue``. This script is itself an optimizer task: clone it in the UI, edit
``Args/lora_ranks`` etc., and enqueue it on ``services``.

Locally, Optuna runs the same space and names, each trial a train step in offline mode;
the study lives in ``<output-dir>/hpo_study.db``, so an interrupted sweep continues
where it stopped when run again with the same ``--output-dir``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components import tracking
from components.errors import UserError
from components.settings import CLEARML_PROJECT, PRESETS, PROJECT_ROOT, SELECTION_METRIC
from pipelines.run_pipeline import build_parser as pipeline_parser
from pipelines.run_pipeline import pipeline_parameters

SWEPT = {"lora_rank": "lora_ranks", "prompt_length": "prompt_lengths", "learning_rate": "learning_rates"}


def number_list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="published", help="model, data and training settings of every trial")
    parser.add_argument("--local", action="store_true", help="run offline on this machine with plain Optuna")
    parser.add_argument("--output-dir", help="local: study, trials and hpo_summary.json (default runs/hpo-<preset>)")
    space = parser.add_argument_group("search space (parameter names as the train step exposes them)")
    space.add_argument("--lora-ranks", type=number_list(int), default=[4, 8, 16, 32], help="values of lora_rank (default 4,8,16,32)")
    space.add_argument("--prompt-lengths", type=number_list(int), default=[10, 20, 50], help="values of prompt_length (default 10,20,50)")
    space.add_argument("--learning-rates", type=number_list(float), default=[], help="values of learning_rate (default: the preset's, not swept)")
    parser.add_argument("--trials", type=int, default=12, help="number of trials (total jobs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    parser.add_argument("--epochs", type=float, help="training epochs of each trial (default: the preset's)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps of each trial")
    parser.add_argument("--metric", default=SELECTION_METRIC, help="test metric recorded with the registered model")
    parser.add_argument("--preprocess-task-id", help="local: train on this preprocess task's data (default: run ingest and preprocess first)")
    server = parser.add_argument_group("ClearML server")
    server.add_argument("--template-task-id", help="train task whose clones are the trials")
    server.add_argument("--project", default=CLEARML_PROJECT)
    server.add_argument("--queue", default="gpu", help="queue of the trials and of the final evaluation")
    server.add_argument("--cpu-queue", default="cpu", help="queue of the register step")
    server.add_argument("--concurrent", type=int, default=2, help="trials running at the same time")
    server.add_argument("--trial-time-limit", type=float, default=None, help="minutes one trial may run")
    server.add_argument("--time-limit", type=float, default=None, help="minutes the whole sweep may run")
    server.add_argument("--run-on", metavar="QUEUE", help="enqueue this optimizer task on QUEUE (e.g. services) instead of running it here")
    return parser


def search_space(args: argparse.Namespace) -> dict[str, list]:
    """Swept train-step argument -> its values; empty lists are not swept."""
    space = {name: getattr(args, option) for name, option in SWEPT.items() if getattr(args, option)}
    for name, values in space.items():
        if len(set(values)) != len(values):
            raise UserError(f"--{SWEPT[name].replace('_', '-')} repeats a value: {values}.")
    return space


def trial_parameters(args: argparse.Namespace) -> dict:
    """Every pipeline parameter the trials share (the preset and --epochs/--max-steps)."""
    overrides = pipeline_parser().parse_args([])
    overrides.epochs, overrides.max_steps = args.epochs, args.max_steps
    return pipeline_parameters(PRESETS[args.preset], overrides)


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        offline = tracking.prepare_clearml("--local" in argv)
        if offline:
            from pipelines.hpo_local import run_local_sweep

            args = build_parser().parse_args(argv)
            output_dir = Path(args.output_dir or PROJECT_ROOT / "runs" / f"hpo-{args.preset}").resolve()
            return run_local_sweep(args, search_space(args), trial_parameters(args), output_dir)
        from pipelines.hpo_server import run_server_sweep

        task = tracking.init_task("HPO lora_rank x prompt_length", "optimizer")
        args = build_parser().parse_args(argv)  # after Task.init: captured as Args/, edited values apply on an agent
        if args.run_on:
            task.execute_remotely(queue_name=args.run_on, exit_process=True)
        return run_server_sweep(task, args, search_space(args))
    except UserError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
