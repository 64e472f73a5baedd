"""The sweep on a ClearML server: HyperParameterOptimizer with OptimizerOptuna over a template train task.

Trials are clones of the template with ``Args/<name>`` overridden, enqueued on the GPU
queue; the objective is the scalar the train step reports (``loss`` / ``validation``,
its minimum over the run, since the best checkpoint is what the trial keeps). As in the
local sweep, the grid is enumerated in a seeded random order (no combination twice, at any
concurrency: see ``GridInTrialOrder``) and no trial is pruned. A failed trial is recorded and the sweep
goes on. The best completed trial is then evaluated on test and registered by the
evaluate and register steps, run at the optimizer task's own code.
"""

from __future__ import annotations

import argparse
import itertools
import random
from dataclasses import dataclass

import optuna

from clearml_adapter import tracking
from components.errors import UserError
from pipelines.controller import CodeVersion, new_step_task
from pipelines.definition import OBJECTIVE, STEP_BY_NAME, grid_size

MAX_TRIAL_STEPS = 10**9


@dataclass(frozen=True)
class TrialRecord:
    task_id: str
    status: str
    value: float | None  # the objective's minimum over the trial; None if it never reported one
    params: dict[str, str]


class GridInTrialOrder(optuna.samplers.BaseSampler):
    """Trial number n takes the n-th combination of the grid, in an order shuffled with ``seed``.

    ClearML's OptimizerOptuna runs the study with one thread per concurrent trial (``n_jobs``).
    BruteForceSampler picks what no earlier trial holds, so two threads sampling at once can
    draw the same pair; ClearML then prunes the second as a duplicate, and the pair counts as
    done: a 2-pair sweep at concurrency 2 ran one trial. A trial's number is unique from its
    creation, so every trial gets its own combination however many run at once, and the study
    never asks for more trials than the grid has (``total_max_jobs``).
    """

    def __init__(self, values: dict[str, list], seed: int):
        self._grid = [dict(zip(values, combination)) for combination in itertools.product(*values.values())]
        random.Random(seed).shuffle(self._grid)

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name: str, param_distribution):
        if trial.number >= len(self._grid):
            raise RuntimeError(f"Trial {trial.number} asked for a combination past the grid's {len(self._grid)}; the study should have stopped.")
        return self._grid[trial.number][param_name]


def trial_overrides(args: argparse.Namespace) -> dict[str, object]:
    """What every trial sets besides the swept values: the sweep's own flags, and no resume."""
    fixed: dict[str, object] = {"resume_from_task_id": ""}  # a trial trains from scratch, whatever its template did
    for name in ("epochs", "max_steps", "eval_every", "nproc_per_node", "preprocess_task_id"):
        if getattr(args, name) is not None:
            fixed[name] = getattr(args, name)
    return fixed


def build_optimizer(template_task_id: str, args: argparse.Namespace, space: dict[str, list]):
    """The optimizer, built but not started."""
    from clearml.automation import DiscreteParameterRange, HyperParameterOptimizer
    from clearml.automation.optuna import OptimizerOptuna

    swept_and_fixed = {**space, **{name: [value] for name, value in trial_overrides(args).items()}}
    values = {f"Args/{name}": choices for name, choices in swept_and_fixed.items()}
    return HyperParameterOptimizer(
        base_task_id=template_task_id,
        hyper_parameters=[DiscreteParameterRange(name, values=choices) for name, choices in values.items()],
        objective_metric_title=OBJECTIVE["title"],
        objective_metric_series=OBJECTIVE["series"],
        objective_metric_sign=f"{OBJECTIVE['sign']}_global",
        optimizer_class=OptimizerOptuna,
        execution_queue=args.queue,
        max_number_of_concurrent_tasks=args.concurrent,
        optimization_time_limit=args.time_limit,
        time_limit_per_job=args.trial_time_limit,
        total_max_jobs=min(args.trials, grid_size(space)),
        # Iterations are optimizer steps; ClearML stops a trial past this, and a trial must
        # be allowed to finish its epochs (the published run is 4,050 steps).
        max_iteration_per_job=MAX_TRIAL_STEPS,
        # Our Args are the single source of the ranges; connecting the optimizer's own
        # copy to the task would let stale values override what was edited in the UI.
        auto_connect_task=False,
        # No pair twice, in a seeded order, and no pruning: Optuna's defaults (TPE, MedianPruner)
        # would repeat pairs and abort trials.
        optuna_sampler=GridInTrialOrder(values, seed=args.seed),
        optuna_pruner=optuna.pruners.NopPruner(),
        # A trial's status and objective are polled every 3 s (ClearML's default is 2 min,
        # which would leave the queue idle that long after every short trial).
        pool_period_min=0.05,
    )


def find_template(project: str, code: CodeVersion) -> str:
    """The newest completed train task, else a new train task on the newest completed preprocess task's data."""
    from clearml import Task

    def newest(name: str):
        found = Task.get_tasks(
            project_name=project,
            task_name=f"^{name}$",
            task_filter={"status": ["completed"], "order_by": ["-last_update"], "page_size": 1, "page": 0},
        )
        return found[0] if found else None

    train = newest("train")
    if train is not None:
        return train.id
    preprocess = newest("preprocess")
    if preprocess is None:
        raise UserError(
            f"No completed train or preprocess task in project {project!r}: run pipelines/run_pipeline.py first, or pass --template-task-id."
        )
    template = new_step_task(STEP_BY_NAME["train"], project, code, parent_id=None)
    template.update_parameters({"Args/preprocess_task_id": preprocess.id, "Args/model": preprocess.get_parameters()["Args/model"]})
    return template.id


def launch_step(name: str, arguments: dict, queue: str, project: str, code: CodeVersion, parent_id: str):
    """Run a step as a new task (its template's settings, these ``Args``), enqueued; return it once it completed."""
    from clearml import Task

    task = new_step_task(STEP_BY_NAME[name], project, code, parent_id)
    task.update_parameters({f"Args/{key}": value for key, value in arguments.items()})
    Task.enqueue(task, queue_name=queue)
    try:
        task.wait_for_status(
            status=(Task.TaskStatusEnum.completed,), raise_on_status=(Task.TaskStatusEnum.failed, Task.TaskStatusEnum.stopped), check_interval_sec=3.0
        )
    except RuntimeError:  # the status it ended with
        raise UserError(
            f"The sweep's {name} task {task.id} ended with status {task.status} (queue {queue!r}); its log in the ClearML UI says why."
        ) from None
    return task


def trial_records(optimizer_task_id: str, swept: list[str]) -> list[TrialRecord]:
    """Every trial the optimizer started, whatever its status, with its objective value."""
    from clearml import Task

    records = []
    for trial in Task.get_tasks(task_filter={"parent": optimizer_task_id, "order_by": ["created"]}):
        objective = trial.get_last_scalar_metrics().get(OBJECTIVE["title"], {}).get(OBJECTIVE["series"], {})
        params = trial.get_parameters()
        records.append(
            TrialRecord(trial.id, str(trial.status), objective.get(OBJECTIVE["sign"]), {name: params.get(f"Args/{name}") for name in swept})
        )
    return records


def best_trial(records: list[TrialRecord]) -> TrialRecord | None:
    """The completed trial with the lowest objective; failed, aborted or silent trials never win."""
    eligible = [record for record in records if record.status == "completed" and record.value is not None]
    return min(eligible, key=lambda record: record.value, default=None)


def report_trials(task, records: list[TrialRecord], best: TrialRecord | None) -> None:
    import pandas as pd

    rows = [
        {
            "task_id": r.task_id,
            "status": r.status,
            "validation_loss": r.value,
            **r.params,
            "best": "yes" if best and r.task_id == best.task_id else "",
        }
        for r in records
    ]
    task.get_logger().report_table("trials", "all", iteration=0, table_plot=pd.DataFrame(rows))


def stop_with_final_report(optimizer) -> None:
    """Stop the optimizer once its trials are done, its summary reported as it ends.

    clearml 2.1.12: when the optimization ends by itself, ``stop()`` joins the reporter thread
    without waking it, so the final summary waits out the report period (up to a minute
    between the last trial and the evaluation). Setting the event ``stop()`` sets when it
    interrupts a running optimization wakes the reporter, which then reports once more and ends.
    """
    optimizer._stop_event.set()
    optimizer.stop()


def run_server_sweep(task, args: argparse.Namespace, space: dict[str, list]) -> dict:
    code = CodeVersion.of_task(task)
    template_id = args.template_task_id or find_template(args.project, code)
    template = tracking.get_task(template_id)
    print(f"Sweeping {space} over clones of train task {template_id} ({template.name}) on queue {args.queue!r}.")
    optimizer = build_optimizer(template_id, args, space)
    optimizer.set_report_period(1.0)
    optimizer.start()
    optimizer.wait()
    stop_with_final_report(optimizer)
    records = trial_records(task.id, list(space))
    best = best_trial(records)
    report_trials(task, records, best)
    if best is None:
        raise UserError(
            f"No trial of optimizer task {task.id} completed with a {OBJECTIVE['title']}/{OBJECTIVE['series']} value; see the trials' logs."
        )
    preprocess_id = tracking.get_task(best.task_id).get_parameters()["Args/preprocess_task_id"]
    ingest_id = tracking.get_task(preprocess_id).get_parameters()["Args/ingest_task_id"]
    evaluate = launch_step("evaluate", {"train_task_id": best.task_id, "ingest_task_id": ingest_id}, args.queue, args.project, code, task.id)
    register = launch_step("register", {"candidates": evaluate.id, "metric": args.metric}, args.cpu_queue, args.project, code, task.id)
    print(f"Best trial {best.task_id} ({best.params}, validation loss {best.value:.4f}); evaluated by {evaluate.id}, registered by {register.id}.")
    return {
        "objective": OBJECTIVE,
        "trials": [vars(r) for r in records],
        "best": {"task_id": best.task_id, "evaluate_task_id": evaluate.id, "register_task_id": register.id},
    }
