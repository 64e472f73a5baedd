"""Hyperparameter sweep over lora_rank and prompt_length (and any other sweepable parameter: --help lists them).

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

from clearml_adapter import tracking
from clearml_adapter.connection import prepare_clearml, running_on_agent
from cli.options import ArgumentParser, exit_if_help_asked, option_flag
from components.errors import UserError
from components.settings import CLEARML_PROJECT, PROJECT_ROOT, SELECTION_METRIC
from pipelines.definition import PARAMETERS, PRESETS
from pipelines.queues import QueueUse, add_wait_for_start, check_queues, enqueue_and_follow
from pipelines.repository import check_repository
from pipelines.run_pipeline import build_parser as pipeline_parser
from pipelines.run_pipeline import pipeline_parameters

# The sweepable train-step arguments: the pipeline parameters declared with ``sweep`` (steps/config.py).
SWEPT = {name: parameter for name, parameter in PARAMETERS.items() if parameter.sweep is not None}


def parse_values(text: str, kind: type, option: str) -> list:
    """``4,8`` as typed on the command line, or ``[4, 8]`` as a list is written when edited in the ClearML UI.

    The options are plain strings for argparse, so ClearML shows and stores them as typed.
    """
    items = [item.strip() for item in text.strip().removeprefix("[").removesuffix("]").split(",") if item.strip()]
    try:
        values = [kind(item) for item in items]
    except ValueError:
        raise UserError(f"{option} expects comma-separated {kind.__name__} values such as 4,8 or [4, 8]; got {text!r}.") from None
    if len(set(values)) != len(values):
        raise UserError(f"{option} repeats a value: {values}.")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--local", action="store_true", help="run offline on this machine with plain Optuna")
    local = parser.add_argument_group("local sweep only (on a server, trials take these from the template train task)")
    local.add_argument("--preset", choices=sorted(PRESETS), help="model, data and training settings of every trial (default published)")
    local.add_argument("--output-dir", help="study, trials and hpo_summary.json (default runs/hpo-<preset>)")
    space = parser.add_argument_group("search space (parameter names as the train step exposes them)")
    for name, parameter in SWEPT.items():
        space.add_argument(
            option_flag(parameter.sweep_option),
            default=parameter.sweep,
            help=f"values of {name} (default: {parameter.sweep or 'not swept: the value of the preset, or of the template'})",
        )
    parser.add_argument("--trials", type=int, default=12, help="number of trials (total jobs)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler (the order in which the grid is tried)")
    parser.add_argument("--epochs", type=float, help="training epochs of each trial (default: the preset's, or the template's)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps of each trial (default: the steps of --epochs)")
    parser.add_argument(
        "--eval-every",
        type=int,
        help="optimizer steps between a trial's evaluations, its objective being the best of them (default: the preset's, or the template's)",
    )
    parser.add_argument(
        "--nproc-per-node", type=int, help="ranks of each trial's train step: GPUs of its agent (default: the preset's 1, or the template's)"
    )
    parser.add_argument("--metric", default=SELECTION_METRIC, help="test metric recorded with the registered model")
    local.add_argument(
        "--noise-seeds",
        type=int,
        default=3,
        help="train the best pair with this many seeds (its trial's and the next ones) and record the objective's "
        "spread as hpo_summary.json's noise; 1 or 0: do not",
    )
    parser.add_argument(
        "--preprocess-task-id",
        help="train every trial on this preprocess task's data (default: locally, run ingest and preprocess first; on a server, the template's data)",
    )
    server = parser.add_argument_group("ClearML server")
    server.add_argument(
        "--template-task-id",
        help="train task whose clones are the trials (default: the newest completed train task of --project, else one made from "
        "its newest completed preprocess task)",
    )
    server.add_argument(
        "--project",
        default=CLEARML_PROJECT,
        help="ClearML project of the optimizer, its trials and the final evaluate and register tasks; its newest "
        "completed train task is the template unless --template-task-id names one",
    )
    server.add_argument("--queue", default="gpu", help="queue of the trials and of the final evaluation")
    server.add_argument("--cpu-queue", default="cpu", help="queue of the register step")
    server.add_argument("--concurrent", type=int, default=2, help="trials running at the same time")
    server.add_argument("--trial-time-limit", type=float, default=None, help="minutes one trial may run (default: no limit)")
    server.add_argument("--time-limit", type=float, default=None, help="minutes the whole sweep may run (default: no limit)")
    server.add_argument("--run-on", metavar="QUEUE", help="enqueue this optimizer task on QUEUE (e.g. services) (default: run it here)")
    add_wait_for_start(server, "the optimizer (--run-on)")
    server.add_argument(
        "--allow-local-repository", action="store_true", help="accept a git remote that is a path on this machine (every agent runs on this machine)"
    )
    return parser


def search_space(args: argparse.Namespace) -> dict[str, list]:
    """Swept train-step argument -> its values; an empty option is not swept."""
    space = {name: parse_values(getattr(args, p.sweep_option), p.kind, option_flag(p.sweep_option)) for name, p in SWEPT.items()}
    return {name: values for name, values in space.items() if values}


def trial_parameters(args: argparse.Namespace) -> dict:
    """Every pipeline parameter the local trials share (the preset and --epochs/--max-steps/--eval-every/--nproc-per-node)."""
    overrides = pipeline_parser().parse_args([])
    overrides.epochs, overrides.max_steps, overrides.eval_every = args.epochs, args.max_steps, args.eval_every
    overrides.nproc_per_node = args.nproc_per_node
    return pipeline_parameters(PRESETS[args.preset], overrides)


def run_local(args: argparse.Namespace) -> dict:
    from pipelines.sweep.local import run_local_sweep

    for option in ("template_task_id", "run_on"):
        if getattr(args, option):
            raise UserError(
                f"{option_flag(option)} applies to a sweep on a ClearML server; this one runs locally (--local, or no server configured)."
            )
    args.preset = args.preset or "published"
    output_dir = Path(args.output_dir or PROJECT_ROOT / "runs" / f"hpo-{args.preset}").resolve()
    return run_local_sweep(args, search_space(args), trial_parameters(args), output_dir)


def check_server_sweep(args: argparse.Namespace) -> None:
    """What a sweep on a server can refuse, checked before its optimizer task exists."""
    for option in ("preset", "output_dir"):
        if getattr(args, option):
            raise UserError(
                f"{option_flag(option)} applies to a local sweep; on a server every trial takes its settings "
                "from the template train task (--template-task-id)."
            )
    search_space(args)
    if args.template_task_id:
        tracking.get_task(args.template_task_id)  # it exists
    check_queues(sweep_queues(args))
    if args.run_on and not running_on_agent():
        check_repository(allow_local=args.allow_local_repository)


def run_on_server(task, args: argparse.Namespace) -> dict | None:
    from pipelines.sweep.server import run_server_sweep

    if args.run_on and not running_on_agent():
        enqueue_and_follow(lambda: task.execute_remotely(queue_name=args.run_on, exit_process=True), task.id, args.run_on, args.wait_for_start)
        return None
    return run_server_sweep(task, args, search_space(args))


def sweep_queues(args: argparse.Namespace) -> list[QueueUse]:
    """The trials' and the final steps' queues, and ``--run-on`` (the optimizer's own) when it is enqueued from here."""
    uses = [
        QueueUse(args.queue, "gpu", "--queue", "the trials and the winner's evaluation"),
        QueueUse(args.cpu_queue, "cpu", "--cpu-queue", "the winner's register step"),
    ]
    if args.run_on and not running_on_agent():
        uses.append(QueueUse(args.run_on, "services", "--run-on", "the sweep's optimizer"))
    return uses


def main(argv: list[str] | None = None) -> dict | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    exit_if_help_asked(parser, argv)
    with tracking.failures_end_the_process():
        if prepare_clearml("--local" in argv):
            return run_local(parser.parse_args(argv))
        args = tracking.parse_task_arguments(parser, argv)  # stored on the optimizer task, read back on an agent
        check_server_sweep(args)
        task = tracking.init_task("HPO lora_rank x prompt_length", "optimizer", project=args.project)
        return run_on_server(task, args)


if __name__ == "__main__":
    main()
