"""The sweep on this machine: Optuna over the train step's arguments, each trial an offline task.

Trials enumerate the grid in a seeded random order (Optuna's BruteForceSampler), so no
(lora_rank, prompt_length, ...) combination is trained twice. The study is stored in
SQLite; a trial left running by an interrupted sweep is marked failed and queued again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

from clearml_adapter import tracking
from components.errors import UserError
from pipelines.definition import OBJECTIVE, STEP_BY_NAME, grid_size, step_arguments
from pipelines.local import StepFailed, run_step_locally

STUDY_NAME = "hpo"


def open_study(output_dir: Path, space: dict[str, list], seed: int) -> optuna.Study:
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{output_dir / 'hpo_study.db'}",
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.BruteForceSampler(seed=seed),
    )
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", space)
    elif stored != space:
        raise UserError(f"The study in {output_dir} was made for the space {stored}, not {space}; use another --output-dir.")
    for stale in study.get_trials(states=(TrialState.RUNNING,)):  # the sweep was killed during this trial
        study.tell(stale.number, state=TrialState.FAIL)
        study.enqueue_trial(stale.params)
        print(f"Trial {stale.number} was interrupted; it is queued again.")
    return study


def prepare_data(args: argparse.Namespace, parameters: dict, output_dir: Path) -> dict[str, str]:
    """Task ids of ingest and preprocess: given, or made by running both steps once."""
    if args.preprocess_task_id:
        ingest_id = tracking.get_task(args.preprocess_task_id).get_parameters().get("Args/ingest_task_id")
        if not ingest_id:
            raise UserError(f"Task {args.preprocess_task_id} has no Args/ingest_task_id; give a preprocess task made from an ingest task.")
        return {"ingest": ingest_id, "preprocess": args.preprocess_task_id}
    ids: dict[str, str] = {}
    for name in ("ingest", "preprocess"):
        result = run_step_locally(STEP_BY_NAME[name], step_arguments(name, parameters, ids), output_dir / "data" / name)
        ids[name] = result["task_id"]
    return ids


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL))


def best_so_far(study: optuna.Study) -> str:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    if not complete:
        return "none yet"
    best = min(complete, key=lambda t: t.value)
    return f"{best.value:.4f} with {best.params}"


def objective(study: optuna.Study, space: dict, parameters: dict, ids: dict, output_dir: Path, total: int):
    """One trial: the train step with the sampled arguments; its value is the best validation loss."""

    def train(trial: optuna.Trial) -> float:
        params = {name: trial.suggest_categorical(name, values) for name, values in space.items()}
        print(f"\n### Trial {len(finished(study)) + 1} of {total}: {params} (best so far: {best_so_far(study)})", flush=True)
        try:
            result = run_step_locally(
                STEP_BY_NAME["train"], step_arguments("train", {**parameters, **params}, ids), output_dir / "trials" / f"trial-{trial.number}"
            )
        except StepFailed as error:
            trial.set_user_attr("error", str(error))
            print(f"Trial {trial.number} failed; the sweep goes on.")
            raise
        trial.set_user_attr("task_id", result["task_id"])
        return result["outputs"]["best_value"]

    return train


def trial_record(trial: optuna.trial.FrozenTrial) -> dict:
    return {
        "number": trial.number,
        "params": trial.params,
        "value": trial.value,
        "task_id": trial.user_attrs.get("task_id"),
        "status": "completed" if trial.state == TrialState.COMPLETE else "failed",
        **({"error": trial.user_attrs["error"]} if "error" in trial.user_attrs else {}),
    }


def print_table(trials: list[dict], best_number: int | None) -> None:
    names = sorted({name for t in trials for name in t["params"]})
    print("\n" + "  ".join(["trial", *names, "status   ", "validation loss"]))
    for t in trials:
        cells = [f"{t['number']:>5}", *(f"{t['params'].get(n, ''):>{len(n)}}" for n in names), f"{t['status']:<9}"]
        value = "" if t["value"] is None else f"{t['value']:.4f}" + ("  <- best" if t["number"] == best_number else "")
        print("  ".join([*cells, value]))


def seed_noise(params: dict, parameters: dict, ids: dict, output_dir: Path, seeds: list[int], first_value: float) -> dict:
    """The objective of one pair trained with other seeds: the spread that trial differences must exceed to mean anything.

    ``first_value`` is the pair's own trial (the first seed); each other seed is one more train step,
    kept in ``noise/seed-<seed>`` (a continued sweep reuses the runs that finished).
    """
    values = [first_value]
    for seed in seeds[1:]:
        directory = output_dir / "noise" / f"seed-{seed}"
        done = directory / tracking.RESULT_FILE
        if done.exists():
            result = json.loads(done.read_text(encoding="utf-8"))
        else:
            print(f"\n### Seed-to-seed noise: {params} with seed {seed}", flush=True)
            result = run_step_locally(STEP_BY_NAME["train"], step_arguments("train", {**parameters, **params, "seed": seed}, ids), directory)
        values.append(result["outputs"]["best_value"])
    return {"params": params, "seeds": seeds, "values": values, "spread": max(values) - min(values)}


def run_local_sweep(args: argparse.Namespace, space: dict[str, list], parameters: dict, output_dir: Path) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    total = min(args.trials, grid_size(space))
    if total < args.trials:
        print(f"The grid has {grid_size(space)} combinations: running {total} trials, not {args.trials}.")
    study = open_study(output_dir, space, args.seed)
    ids = study.user_attrs.get("data_task_ids")  # a continued sweep trains on the data its first trials used
    if ids is None:
        ids = prepare_data(args, parameters, output_dir)
        study.set_user_attr("data_task_ids", ids)
    remaining = total - len(finished(study))
    if remaining > 0:
        study.optimize(objective(study, space, parameters, ids, output_dir, total), n_trials=remaining, catch=(StepFailed,))

    trials = [trial_record(t) for t in finished(study)]
    complete = [t for t in trials if t["status"] == "completed"]
    summary = {"objective": OBJECTIVE, "space": space, "trials": trials, "best": None, "data_task_ids": ids, "noise": None}
    summary_path = output_dir / "hpo_summary.json"
    if not complete:  # the summary still holds every trial's error
        summary_path.write_text(tracking.to_json(summary), encoding="utf-8")
        raise UserError(f"All {len(trials)} trials failed; their errors are in {summary_path} and above.")
    best = min(complete, key=lambda t: t["value"])
    noise = None
    if args.noise_seeds > 1:
        seeds = [parameters["seed"] + i for i in range(args.noise_seeds)]
        noise = seed_noise(best["params"], parameters, ids, output_dir, seeds, best["value"])
    evaluate = run_step_locally(
        STEP_BY_NAME["evaluate"], step_arguments("evaluate", parameters, {**ids, "train": best["task_id"]}), output_dir / "best" / "evaluate"
    )
    register = run_step_locally(
        STEP_BY_NAME["register"],
        step_arguments("register", {**parameters, "metric": args.metric}, {"evaluate": evaluate["task_id"]}),
        output_dir / "best" / "register",
    )
    summary["best"] = {
        "params": best["params"],
        "value": best["value"],
        "task_id": best["task_id"],
        "model_dir": register["outputs"]["model_dir"],
        "test_metrics": register["outputs"]["metrics"],
    }
    summary["noise"] = noise
    summary_path.write_text(tracking.to_json(summary), encoding="utf-8")
    print_table(trials, best["number"])
    if noise:
        values = [t["value"] for t in complete]
        print(
            f"\nSeed-to-seed spread of {noise['params']} over seeds {noise['seeds']}: {noise['spread']:.4f} "
            f"({', '.join(f'{v:.4f}' for v in noise['values'])}); the trials span {max(values) - min(values):.4f}."
        )
    print(f"\nBest: {best['params']} (validation loss {best['value']:.4f}); registered model directory {summary['best']['model_dir']}.")
    print(f"Summary: {summary_path}")
    return summary
