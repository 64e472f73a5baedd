"""The sweep on a ClearML server: HyperParameterOptimizer with OptimizerOptuna over a template train task.

Trials are clones of the template with ``Args/<name>`` overridden, enqueued on the GPU
queue; the objective is the scalar the train step reports (``loss`` / ``validation``,
its minimum over the run, since the best checkpoint is what the trial keeps). A failed
trial is recorded and the sweep goes on. The best trial is then evaluated on test and
registered by the evaluate and register steps, cloned from their templates.
"""

from __future__ import annotations

import argparse

from components.errors import UserError
from pipelines.controller import template_factory
from pipelines.definition import OBJECTIVE, STEP_BY_NAME

MAX_TRIAL_STEPS = 10**9


def build_optimizer(template_task_id: str, args: argparse.Namespace, space: dict[str, list]):
    """The optimizer, built but not started."""
    from clearml.automation import DiscreteParameterRange, HyperParameterOptimizer
    from clearml.automation.optuna import OptimizerOptuna

    return HyperParameterOptimizer(
        base_task_id=template_task_id,
        hyper_parameters=[DiscreteParameterRange(f"Args/{name}", values=values) for name, values in space.items()],
        objective_metric_title=OBJECTIVE["title"],
        objective_metric_series=OBJECTIVE["series"],
        objective_metric_sign=f"{OBJECTIVE['sign']}_global",
        optimizer_class=OptimizerOptuna,
        execution_queue=args.queue,
        max_number_of_concurrent_tasks=args.concurrent,
        optimization_time_limit=args.time_limit,
        time_limit_per_job=args.trial_time_limit,
        total_max_jobs=args.trials,
        # Iterations are optimizer steps; ClearML stops a trial past this, and a trial must
        # be allowed to finish its epochs (the published run is 4,050 steps).
        max_iteration_per_job=MAX_TRIAL_STEPS,
        # Our Args are the single source of the ranges; connecting the optimizer's own
        # copy to the task would let stale values override what was edited in the UI.
        auto_connect_task=False,
    )


def find_template(project: str) -> str:
    """The newest completed train task, else a new train task on the newest completed preprocess task's data."""
    from clearml import Task

    def newest(name: str):
        found = Task.get_tasks(project_name=project, task_name=f"^{name}$",
                               task_filter={"status": ["completed"], "order_by": ["-last_update"], "search_hidden": True})
        return found[0] if found else None

    train = newest("train")
    if train is not None:
        return train.id
    preprocess = newest("preprocess")
    if preprocess is None:
        raise UserError(f"No completed train or preprocess task in project {project!r}: run pipelines/run_pipeline.py first, or pass --template-task-id.")
    template = template_factory(STEP_BY_NAME["train"], project)(None)
    template.set_parameters({"Args/preprocess_task_id": preprocess.id, "Args/model": preprocess.get_parameters()["Args/model"]})
    return template.id


def launch_step(name: str, arguments: dict, queue: str, project: str):
    """Clone a step's template, set its Args, enqueue it and wait for it to complete."""
    from clearml import Task

    task = template_factory(STEP_BY_NAME[name], project)(None)
    task.set_parameters({f"Args/{key}": value for key, value in arguments.items()})
    Task.enqueue(task, queue_name=queue)
    task.wait_for_status(status=(Task.TaskStatusEnum.completed,), raise_on_status=(Task.TaskStatusEnum.failed, Task.TaskStatusEnum.stopped))
    return task


def report_trials(task, optimizer_task_id: str) -> list[dict]:
    from clearml import Task

    rows = []
    for trial in Task.get_tasks(task_filter={"parent": optimizer_task_id}):
        params = trial.get_parameters()
        values = trial.get_reported_scalars().get(OBJECTIVE["title"], {}).get(OBJECTIVE["series"], {}).get("y", [])
        rows.append({"task_id": trial.id, "status": str(trial.status), "value": min(values) if values else None,
                     **{k[len("Args/"):]: params.get(k) for k in ("Args/lora_rank", "Args/prompt_length", "Args/learning_rate")}})
    import pandas as pd

    task.get_logger().report_table("trials", "all", iteration=0, table_plot=pd.DataFrame(rows))
    return rows


def run_server_sweep(task, args: argparse.Namespace, space: dict[str, list]) -> dict:
    from clearml import Task

    template_id = args.template_task_id or find_template(args.project)
    print(f"Sweeping {space} over clones of train task {template_id} on queue {args.queue!r}.")
    optimizer = build_optimizer(template_id, args, space)
    optimizer.set_report_period(1.0)
    optimizer.start()
    optimizer.wait()
    top = optimizer.get_top_experiments(1)
    optimizer.stop()
    trials = report_trials(task, task.id)
    if not top:
        raise UserError(f"No trial of optimizer task {task.id} completed; see their logs in the ClearML UI.")
    best = top[0]
    preprocess_id = best.get_parameters()["Args/preprocess_task_id"]
    ingest_id = Task.get_task(task_id=preprocess_id).get_parameters()["Args/ingest_task_id"]
    evaluate = launch_step("evaluate", {"train_task_id": best.id, "ingest_task_id": ingest_id}, args.queue, args.project)
    register = launch_step("register", {"candidates": evaluate.id, "metric": args.metric}, args.cpu_queue, args.project)
    print(f"Best trial {best.id}; evaluated by {evaluate.id}, registered by {register.id}.")
    return {"objective": OBJECTIVE, "trials": trials, "best": {"task_id": best.id, "evaluate_task_id": evaluate.id, "register_task_id": register.id}}
