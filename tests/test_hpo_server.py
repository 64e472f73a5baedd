"""``pipelines/sweep/server.py`` on the test ClearML server, in forked runs (``tests/server_runs.py``): the template a sweep
finds or makes, the optimizer it builds (read back from ClearML's objects), and whole sweeps with ClearML's
HyperParameterOptimizer and OptimizerOptuna, the agents' part played by the test (each trial reports the validation
losses the test chooses, or fails, or is stopped). The sweep on real agents is flow 5 of
``tests/e2e/test_sweep_and_errors.py``."""

from __future__ import annotations

import itertools
import json

from forked import run_main
from server_runs import arguments_of, on_server, server  # noqa: F401 (server is a fixture)

from pipelines.sweep.server import GridInTrialOrder

PROJECT = "Подбор"
CODE = {"repository": "https://git.example.com/team/rut5.git", "branch": "main", "commit": "0123abc", "diff": "", "requirements": "clearml\n"}

# The validation losses each trial (lora_rank, prompt_length) reports at its evaluations (steps 2, 4, 6), and how it ends.
# The best by its lowest loss, (2, 3), is not the best by its last loss, (4, 3); lower losses still are reported by the
# trials that fail or are stopped, and (8, 1) reports none.
TRIALS = {
    (2, 1): ([0.9, 0.8, 0.85], "completed"),
    (2, 3): ([0.5, 0.3, 0.6], "completed"),
    (4, 1): ([0.2], "failed"),
    (4, 3): ([0.6, 0.45, 0.4], "completed"),
    (8, 1): ([], "completed"),
    (8, 3): ([0.1, 0.25], "stopped"),
}
SWEEP_OPTIONS = [
    "--project",
    PROJECT,
    "--lora-ranks",
    "2,4,8",
    "--prompt-lengths",
    "1,3",
    "--queue",
    "gpu-q",
    "--cpu-queue",
    "cpu-q",
    "--trials",
    "5",
    "--seed",
    "2",
    "--max-steps",
    "6",
    "--eval-every",
    "2",
    "--metric",
    "rouge1",
]


def completed_task(api, name: str, project: str = PROJECT, **args: str) -> str:
    """A task of this name and ``Args`` that ran to completion (as an agent marks it)."""
    from clearml import Task

    task = Task.create(project_name=project, task_name=name)
    task.set_parameters({f"Args/{key}": value for key, value in args.items()})
    api.call("tasks.started", task=task.id)
    api.call("tasks.completed", task=task.id)
    return task.id


def test_the_template_is_the_projects_newest_completed_train_task(server, tmp_path):
    """Newest by its last update: of three, the one created second (neither the first nor the last created, which the
    server's natural order or the newest first would give); running tasks, other names and other projects do not count."""

    def template() -> dict:
        from clearml import Task

        from pipelines.controller import CodeVersion
        from pipelines.sweep.server import find_template

        api = server.api
        completed_task(api, "train")
        updated_last = Task.create(project_name=PROJECT, task_name="train")
        created_last = completed_task(api, "train")
        api.call("tasks.started", task=updated_last.id)
        api.call("tasks.completed", task=updated_last.id)
        completed_task(api, "train (copy)")
        completed_task(api, "train", project=f"{PROJECT} 2")
        running = Task.create(project_name=PROJECT, task_name="train")
        api.call("tasks.started", task=running.id)
        return {"found": find_template(PROJECT, CodeVersion(**CODE)), "updated_last": updated_last.id, "created_last": created_last}

    made = on_server(server, tmp_path, template)
    assert made["found"] == made["updated_last"] != made["created_last"]


OPTIMIZER_OPTIONS = [
    "--project",
    PROJECT,
    "--learning-rates",
    "1e-4,3e-4",
    "--warmup-ratios",
    "0,0.1",
    "--queue",
    "gpu-q",
    "--concurrent",
    "3",
    "--trials",
    "50",
    "--epochs",
    "2",
    "--max-steps",
    "50",
    "--eval-every",
    "5",
    "--nproc-per-node",
    "4",
    "--seed",
    "7",
    "--trial-time-limit",
    "5",
    "--time-limit",
    "30",
    "--preprocess-task-id",
    "the-data",
]


def test_the_optimizer_is_built_with_the_sweeps_options_over_the_templates_arguments(server, tmp_path):
    """Read back from ClearML's optimizer, built in an optimizer task over the train step's template as the sweep makes it."""

    def optimizer() -> dict:
        import time

        from clearml import Task

        from pipelines.controller import CodeVersion
        from pipelines.run_hpo import build_parser, search_space
        from pipelines.sweep.server import build_optimizer, find_template

        completed_task(server.api, "preprocess", model="tiny", ingest_task_id="i")
        template = find_template(PROJECT, CodeVersion(**CODE))
        own = Task.init(
            project_name=PROJECT,
            task_name="HPO",
            task_type=Task.TaskTypes.optimizer,
            auto_connect_frameworks=False,
            auto_connect_arg_parser=False,
            auto_resource_monitoring=False,
            auto_connect_streams=False,
        )
        args = build_parser().parse_args(OPTIMIZER_OPTIONS)
        built = build_optimizer(template, args, search_space(args))
        strategy = built.optimizer
        objective = strategy._objective_metric
        return {
            "template": template,
            "own": own.id,
            "params": [(p.name, list(p.values)) for p in strategy._hyper_parameters],
            "limits": [strategy.time_limit_per_job, round((built.optimization_timeout - time.time()) / 60), strategy.max_iteration_per_job],
            "objective": [objective.title, objective.series, objective.order, objective.extremum],
            "jobs": [strategy._execution_queue, strategy._num_concurrent_workers, strategy.total_max_jobs, strategy.pool_period_minutes],
            "optuna": [type(strategy._optuna_sampler).__name__, type(strategy._optuna_pruner).__name__],
            "grid": strategy._optuna_sampler._grid,
        }

    made = on_server(server, tmp_path, optimizer)
    params = [tuple(param) for param in made["params"]]
    assert params == [
        ("Args/lora_rank", [4, 8, 16, 32]),
        ("Args/prompt_length", [10, 20, 50]),
        ("Args/learning_rate", [1e-4, 3e-4]),
        ("Args/warmup_ratio", [0.0, 0.1]),
        ("Args/resume_from_task_id", [""]),
        ("Args/epochs", [2.0]),
        ("Args/max_steps", [50]),
        ("Args/eval_every", [5]),
        ("Args/nproc_per_node", [4]),
        ("Args/preprocess_task_id", ["the-data"]),
    ]  # every trial: from scratch, the sweep's flags
    template = server.api.task(made["template"])
    assert {name for name, _ in params} <= {f"Args/{name}" for name in template["hyperparams"]["Args"]}  # each an argument of the train step
    assert made["limits"] == [5.0, 30, 10**9]  # minutes per trial, minutes left of the whole sweep, a trial's steps never cut short
    assert made["objective"] == [["loss"], ["validation"], ["min"], [True]]  # the lowest validation loss over the trial
    assert made["jobs"] == ["gpu-q", 3, 48, 0.05]  # 50 trials asked, 48 combinations: none twice; polled every 3 s
    # every combination once, in an order --seed sets, and no pruning (Optuna's defaults are TPE and MedianPruner)
    assert made["optuna"] == ["GridInTrialOrder", "NopPruner"]
    assert sorted(tuple(combination.values()) for combination in made["grid"]) == sorted(itertools.product(*[values for _, values in params]))
    assert made["grid"] == GridInTrialOrder(dict(params), seed=7)._grid != GridInTrialOrder(dict(params), seed=8)._grid
    # The sweep's Args are the single source of its ranges: ClearML's own copy is not connected to the optimizer task.
    own = server.api.task(made["own"])
    assert (own.get("hyperparams", {}), own.get("configuration", {})) == ({}, {})


def test_without_a_completed_train_or_preprocess_task_the_sweep_asks_for_one_in_one_sentence(server, tmp_path):
    def template() -> str:
        from clearml import Task

        from components.errors import UserError
        from pipelines.controller import CodeVersion
        from pipelines.sweep.server import find_template

        completed_task(server.api, "preprocess", project=f"{PROJECT} 2", model="tiny")
        Task.create(project_name=PROJECT, task_name="train")  # not run
        try:
            find_template(PROJECT, CodeVersion(**CODE))
        except UserError as refused:
            return str(refused)
        return "no error"

    assert on_server(server, tmp_path, template) == (
        f"No completed train or preprocess task in project {PROJECT!r}: run pipelines/run_pipeline.py first, or pass --template-task-id."
    )


def sweep(server, tmp_path, trials: dict, options: list[str], template_args: dict | None = None):
    """``run_server_sweep`` as ``pipelines/run_hpo.py`` calls it in an optimizer task, over the template it makes from the
    newest completed preprocess task (of two, and one not run), or over a completed train task with ``template_args`` on
    that data, with the agents' part played by hand: each trial reports ``trials[pair]``'s losses and ends as it says;
    evaluate and register end as ``trials[name]`` says (else they complete). Returns the summary (or the sentence the sweep stopped with), the optimizer task's
    id, each task as an agent took it, and the standard output."""
    output = tmp_path / "sweep.json"

    def main(_argv) -> None:
        import threading
        import time

        from clearml import Task

        from clearml_adapter import tracking
        from clearml_adapter.connection import prepare_clearml
        from components.errors import UserError
        from pipelines.run_hpo import build_parser, search_space
        from pipelines.sweep.server import run_server_sweep

        prepare_clearml(False)
        api = server.api
        ingest = completed_task(api, "ingest")
        completed_task(api, "preprocess", model="ai-forever/ruT5-large", ingest_task_id="an-older-ingest")
        preprocess = completed_task(api, "preprocess", model="tiny", ingest_task_id=ingest)
        Task.create(project_name=PROJECT, task_name="preprocess")  # not run
        if template_args is not None:
            completed_task(api, "train", preprocess_task_id=preprocess, **template_args)
        queues = {name: api.queue_id(name, create=True) for name in ("gpu-q", "cpu-q")}
        taken: list[dict] = []

        def run(task: dict, queue: str) -> None:
            args = arguments_of(task)
            step = task["name"].split(":")[0]
            taken.append({"step": step, "queue": queue, "id": task["id"], "parent": task["parent"], "args": args})
            api.call("tasks.started", task=task["id"])
            losses, end = trials[(int(args["lora_rank"]), int(args["prompt_length"]))] if step == "train" else trials.get(step, ([], "completed"))
            if losses:
                api.call_batch(
                    "events.add_batch",
                    [
                        {
                            "task": task["id"],
                            "type": "training_stats_scalar",
                            "metric": "loss",
                            "variant": "validation",
                            "value": loss,
                            "iter": 2 * (number + 1),
                            "timestamp": int(time.time() * 1000),
                        }
                        for number, loss in enumerate(losses)
                    ],
                )
            api.call(f"tasks.{end}", task=task["id"])

        def agents() -> None:
            while not taken or taken[-1]["step"] != "register":  # (a daemon: it ends with the process otherwise)
                for queue, queue_id in queues.items():
                    entry = api.call("queues.get_next_task", queue=queue_id).get("entry")
                    if entry:
                        run(api.task(entry["task"]), queue)
                time.sleep(0.05)

        threading.Thread(target=agents, daemon=True).start()
        optimizer = Task.init(
            project_name=PROJECT,
            task_name="HPO",
            task_type=Task.TaskTypes.optimizer,
            auto_connect_frameworks=False,
            auto_resource_monitoring=False,
            auto_connect_streams=False,
        )
        args = build_parser().parse_args(options)
        try:
            outcome = run_server_sweep(optimizer, args, search_space(args))
            optimizer.close()  # its reports sent, as when pipelines/run_hpo.py's process ends
        except UserError as stopped:  # as pipelines/run_hpo.py's main ends the task for it (then the process, with status 1)
            outcome = str(stopped)
            tracking.close_failed(optimizer, outcome)
        output.write_text(
            json.dumps({"outcome": outcome, "optimizer": optimizer.id, "taken": taken, "ingest": ingest, "preprocess": preprocess}), encoding="utf-8"
        )

    completed = run_main(main, [], server.env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(output.read_text(encoding="utf-8")), completed.stdout


def trials_table(api, task_id: str) -> list[dict]:
    """The ``trials`` table the optimizer task reported (its series ``all``, once), row by row (ClearML sends a table as a
    plotly table)."""
    [event] = [
        e
        for e in api.call("events.get_task_events", task=task_id, event_type="plot")["events"]
        if (e["metric"], e["variant"], e["iter"]) == ("trials", "all", 0)
    ]
    table = json.loads(event["plot_str"])["data"][0]
    header, columns = table["header"]["values"], table["cells"]["values"]
    return [dict(zip([name for [name] in header], row)) for row in zip(*columns)]


def test_a_server_sweep_runs_its_grid_on_the_queue_and_evaluates_and_registers_the_completed_trial_with_the_lowest_loss(server, tmp_path):
    made, stdout = sweep(server, tmp_path, TRIALS, SWEEP_OPTIONS)
    api, optimizer = server.api, made["optimizer"]
    summary = made["outcome"]
    trials = [task for task in made["taken"] if task["step"] == "train"]
    # five trials (--trials) of the six pairs, in the order --seed gives the grid, none twice, each on --queue under the optimizer
    grid = GridInTrialOrder(
        {"lora_rank": ["2", "4", "8"], "prompt_length": ["1", "3"], "resume_from_task_id": [""], "max_steps": ["6"], "eval_every": ["2"]}, seed=2
    )._grid
    pairs = [(trial["args"]["lora_rank"], trial["args"]["prompt_length"]) for trial in trials]
    assert sorted(pairs) == sorted((combination["lora_rank"], combination["prompt_length"]) for combination in grid[:5])
    for trial in trials:
        assert (trial["queue"], trial["parent"]) == ("gpu-q", optimizer)
        # from scratch, with the sweep's flags, on the data and model of the newest completed preprocess task
        assert {name: trial["args"][name] for name in ("resume_from_task_id", "max_steps", "eval_every", "preprocess_task_id", "model")} == {
            "resume_from_task_id": "",
            "max_steps": "6",
            "eval_every": "2",
            "preprocess_task_id": made["preprocess"],
            "model": "tiny",
        }
        assert trial["args"]["learning_rate"] == "0.0003"  # not swept: the template's
    # every trial recorded with its status and lowest loss, in the order it was created
    created = [task["id"] for task in api.tasks(parent=optimizer, order_by=["created"]) if task["type"] == "training"]
    expected = []
    for trial_id in created:
        [trial] = [trial for trial in trials if trial["id"] == trial_id]
        losses, end = TRIALS[(int(trial["args"]["lora_rank"]), int(trial["args"]["prompt_length"]))]
        expected.append(
            {
                "task_id": trial_id,
                "status": end,
                "value": min(losses, default=None),
                "params": {"lora_rank": trial["args"]["lora_rank"], "prompt_length": trial["args"]["prompt_length"]},
            }
        )
    assert summary["trials"] == expected
    assert summary["objective"] == {"title": "loss", "series": "validation", "sign": "min"}
    [best] = [trial for trial in trials if (trial["args"]["lora_rank"], trial["args"]["prompt_length"]) == ("2", "3")]
    [evaluate] = [task for task in made["taken"] if task["step"] == "evaluate"]
    [register] = [task for task in made["taken"] if task["step"] == "register"]
    assert summary["best"] == {"task_id": best["id"], "evaluate_task_id": evaluate["id"], "register_task_id": register["id"]}
    assert (evaluate["queue"], evaluate["parent"], evaluate["args"]["train_task_id"], evaluate["args"]["ingest_task_id"]) == (
        "gpu-q",
        optimizer,
        best["id"],
        made["ingest"],
    )
    assert (register["queue"], register["parent"], register["args"]["candidates"], register["args"]["metric"]) == (
        "cpu-q",
        optimizer,
        evaluate["id"],
        "rouge1",
    )
    own = api.task(optimizer)
    for step in (*trials, evaluate, register):  # the optimizer's own code (the trials' template's too), in its project
        task = api.task(step["id"])
        assert (task["script"]["repository"], task["script"]["version_num"], task["project"]) == (
            own["script"]["repository"],
            own["script"]["version_num"],
            own["project"],
        )
    [template] = api.tasks(project=[own["project"]], name="^train$", status=["created"])  # the trials are its clones
    assert (
        f"Sweeping {{'lora_rank': [2, 4, 8], 'prompt_length': [1, 3]}} over clones of train task {template['id']} (train) on queue 'gpu-q'."
        in stdout.splitlines()
    )
    assert (
        f"Best trial {best['id']} ({{'lora_rank': '2', 'prompt_length': '3'}}, validation loss 0.3000); evaluated by {evaluate['id']}, "
        f"registered by {register['id']}." in stdout
    )
    table = trials_table(api, optimizer)
    assert [(row["task_id"], row["status"], row["lora_rank"], row["prompt_length"], row["best"]) for row in table] == [
        (
            trial["task_id"],
            trial["status"],
            trial["params"]["lora_rank"],
            trial["params"]["prompt_length"],
            "yes" if trial["task_id"] == best["id"] else "",
        )
        for trial in expected
    ]
    assert [row["validation_loss"] for row in table] == ["nan" if trial["value"] is None else trial["value"] for trial in expected]


def test_a_server_sweep_whose_trials_all_fail_reports_them_and_stops_in_one_sentence(server, tmp_path):
    failing = {(2, 1): ([0.5], "failed"), (2, 3): ([], "completed")}  # the second completes without a validation loss
    made, _ = sweep(
        server, tmp_path, failing, ["--project", PROJECT, "--lora-ranks", "2", "--prompt-lengths", "1,3", "--queue", "gpu-q", "--cpu-queue", "cpu-q"]
    )
    optimizer = made["optimizer"]
    assert made["outcome"] == f"No trial of optimizer task {optimizer} completed with a loss/validation value; see the trials' logs."
    assert {task["step"] for task in made["taken"]} == {"train"}
    assert server.api.task(optimizer)["status"] == "failed"
    assert sorted((row["status"], row["best"]) for row in trials_table(server.api, optimizer)) == [("completed", ""), ("failed", "")]


def test_a_sweep_over_a_train_task_that_resumed_trains_from_scratch_and_stops_in_one_sentence_when_its_evaluation_is_aborted(server, tmp_path):
    """The evaluation stopped (aborted in the UI): ClearML's wait would go on for a completion that never comes."""
    made, _ = sweep(
        server,
        tmp_path,
        {(2, 3): ([0.4], "completed"), "evaluate": ([], "stopped")},
        ["--project", PROJECT, "--lora-ranks", "2", "--prompt-lengths", "3", "--queue", "gpu-q", "--cpu-queue", "cpu-q"],
        template_args={"model": "tiny", "resume_from_task_id": "an-earlier-train", "lora_rank": "8", "prompt_length": "20"},
    )
    [trial, evaluate] = made["taken"]
    assert (trial["step"], trial["args"]["resume_from_task_id"], trial["args"]["model"]) == ("train", "", "tiny")
    assert (
        made["outcome"]
        == f"The sweep's evaluate task {evaluate['id']} ended with status stopped (queue 'gpu-q'); its log in the ClearML UI says why."
    )
    assert server.api.task(made["optimizer"])["status"] == "failed"
