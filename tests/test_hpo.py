"""The sweep: local Optuna over the train step, resuming, failures, and the server optimizer's names."""

import itertools
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import ASCII_LOCALE, run_script
from optuna.trial import TrialState
from reference_model import protocol_scores
from step_runs import stand_in_steps

from pipelines.controller import step_parser
from pipelines.definition import PRESETS, STEPS
from pipelines.run_hpo import SWEPT
from pipelines.sweep.local import OBJECTIVE, open_study
from pipelines.sweep.server import GridInTrialOrder

TRAIN = next(step for step in STEPS if step.name == "train")
# Four steps at a learning rate high enough to make the validation loss bounce, evaluated after each:
# a trial's best evaluation is neither always its first nor always its last (asserted below), so the
# objective "best validation loss" can be told from "first" and "last".
QUICK = [
    "--local",
    "--preset",
    "tiny",
    "--max-steps",
    "4",
    "--eval-every",
    "1",
    "--learning-rates",
    "0.05",
    "--prompt-lengths",
    "4,8",
    "--lora-ranks",
    "2,4",
]


@pytest.fixture(scope="module")
def sweep(clearml_home, tmp_path_factory) -> Path:
    """Three trials and the best pair's second seed, with the real steps (the sweep's own logic, a continued sweep and
    failing trials among it, is tested in seconds with stand-in steps below)."""
    out = tmp_path_factory.mktemp("hpo")
    run_script(clearml_home, "pipelines/run_hpo.py", *QUICK, "--trials", "3", "--noise-seeds", "2", "--output-dir", str(out))
    return out


@pytest.mark.numeric
def test_local_sweep_summary(sweep):
    out = sweep
    summary = json.loads((out / "hpo_summary.json").read_text())
    assert summary["objective"] == {"title": "loss", "series": "validation", "sign": "min"}
    assert len(summary["trials"]) == 3
    pairs = {(t["params"]["lora_rank"], t["params"]["prompt_length"]) for t in summary["trials"]}
    assert len(pairs) == 3  # the grid is enumerated without repeats
    completed = [t for t in summary["trials"] if t["status"] == "completed"]
    assert summary["best"]["value"] == min(t["value"] for t in completed)
    histories = {
        t["number"]: [
            entry["validation_loss"] for entry in json.loads((out / "trials" / f"trial-{t['number']}" / "training.json").read_text())["history"]
        ]
        for t in completed
    }
    assert all(len(losses) == 4 for losses in histories.values())  # --eval-every 1 reached every trial
    # Discriminating: in some trial the best evaluation is not the last, in some other not the first.
    assert any(min(losses) < losses[-1] for losses in histories.values()) and any(min(losses) < losses[0] for losses in histories.values())
    assert {t["number"]: t["value"] for t in completed} == {number: min(losses) for number, losses in histories.items()}
    assert summary["best"]["params"] == min(completed, key=lambda t: t["value"])["params"]
    assert (Path(summary["best"]["model_dir"]) / "adapter.safetensors").exists()
    # The winner's test figures, recomputed from its predictions on the metric libraries directly
    predictions = pd.read_csv(out / "best" / "evaluate" / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    expected = protocol_scores(predictions["prediction"].tolist(), predictions["output"].tolist())
    assert {name: summary["best"]["test_metrics"][name] for name in expected} == pytest.approx(
        expected
    )  # the same libraries: only a mean's order differs
    evaluation = json.loads((out / "best" / "evaluate" / "evaluation.json").read_text())
    assert evaluation["train_task_id"] == summary["best"]["task_id"] and summary["best"]["test_metrics"] == evaluation["metrics"]
    config = json.loads((Path(summary["best"]["model_dir"]) / "adapter_config.json").read_text())
    assert (config["lora_rank"], config["prompt_length"]) == (summary["best"]["params"]["lora_rank"], summary["best"]["params"]["prompt_length"])


def test_the_seed_to_seed_noise_is_the_best_pair_trained_with_other_seeds(sweep):
    out = sweep
    summary = json.loads((out / "hpo_summary.json").read_text())
    noise = summary["noise"]
    assert noise["params"] == summary["best"]["params"] and noise["seeds"] == [42, 43]
    assert noise["values"][0] == summary["best"]["value"]
    other = json.loads((out / "noise" / "seed-43" / "result.json").read_text())["outputs"]
    assert noise["values"][1] == other["best_value"]
    history = json.loads((out / "noise" / "seed-43" / "training.json").read_text())["history"]
    assert other["best_value"] == min(entry["validation_loss"] for entry in history)
    assert noise["spread"] == max(noise["values"]) - min(noise["values"])  # the same float subtraction
    args = json.loads((out / "noise" / "seed-43" / "training.json").read_text())
    assert args["training"]["seed"] == 43 and (args["adapter"]["lora_rank"], args["adapter"]["prompt_length"]) == (
        noise["params"]["lora_rank"],
        noise["params"]["prompt_length"],
    )


def test_a_trial_left_running_is_failed_and_queued_again(tmp_path, capsys):
    space = {"lora_rank": [2, 4], "prompt_length": [4]}
    study = open_study(tmp_path, space, seed=0)
    distributions = {name: optuna.distributions.CategoricalDistribution(v) for name, v in space.items()}
    killed = study.ask(distributions)
    capsys.readouterr()
    reopened = open_study(tmp_path, space, seed=0)
    assert capsys.readouterr().out == f"Trial {killed.number} was interrupted; it is queued again.\n"
    states = {t.number: t.state for t in reopened.get_trials()}
    assert states[killed.number] == TrialState.FAIL
    assert reopened.ask(distributions).params == killed.params  # the next trial reruns it
    with pytest.raises(Exception, match="made for the space"):
        open_study(tmp_path, {"lora_rank": [8]}, seed=0)


def test_swept_names_are_arguments_of_the_train_step():
    dests = {action.dest for action in step_parser(TRAIN)._actions}
    assert set(SWEPT) <= dests


def test_the_objective_is_what_the_train_step_reports(tiny_model_dir, tmp_path):
    from components.data import preprocess, read_tsv
    from components.modeling import apply_peft, load_base_model, load_tokenizer
    from components.training import TrainConfig, train_adapters

    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = preprocess(read_tsv("data/sample/train.tsv").iloc[:16], tokenizer, 16, 16)
    reported = set()
    model = apply_peft(load_base_model(str(tiny_model_dir)), lora_rank=2, prompt_length=2)
    train_adapters(
        model,
        tokenizer,
        data,
        data,
        TrainConfig(max_steps=1, gradient_checkpointing=False),
        output_dir=tmp_path,
        report=lambda title, series, value, step: reported.add((title, series)),
    )
    assert (OBJECTIVE["title"], OBJECTIVE["series"]) in reported


SMALL_GRID = {"Args/lora_rank": [4, 16], "Args/prompt_length": [10, 20], "Args/resume_from_task_id": [""]}  # 2 x 2, one fixed value


def test_the_server_sampler_gives_trials_started_together_their_own_pairs():
    """ClearML's OptimizerOptuna runs the study with one thread per concurrent trial; the worst case is every trial
    started before any has drawn, each drawing a value while the others hold only their earlier ones. Four trials
    interleaved that way get the four pairs of a 2 x 2 grid once each (BruteForceSampler, seeded alike, gave
    (4, 20) twice and never (16, 10): it reads the pairs that other trials hold, and here they hold none yet)."""
    study = optuna.create_study(sampler=GridInTrialOrder(SMALL_GRID, seed=3), pruner=optuna.pruners.NopPruner())
    trials = [study.ask() for _ in range(4)]
    for name, choices in SMALL_GRID.items():
        for trial in trials:
            trial.suggest_categorical(name, choices)
    assert sorted(tuple(trial.params[name] for name in SMALL_GRID) for trial in trials) == sorted(itertools.product(*SMALL_GRID.values()))


def test_the_server_sampler_refuses_a_trial_past_the_grid_in_one_sentence():
    """The optimizer never asks for one (its total_max_jobs is the grid's size); were it to, the trial would fail saying why."""
    study = optuna.create_study(sampler=GridInTrialOrder({"Args/lora_rank": [4]}, seed=0))
    first, second = study.ask(), study.ask()
    assert first.suggest_categorical("Args/lora_rank", [4, 8]) == 4  # (a single choice would not ask the sampler)
    with pytest.raises(RuntimeError) as refused:
        second.suggest_categorical("Args/lora_rank", [4, 8])
    assert str(refused.value) == "Trial 1 asked for a combination past the grid's 1; the study should have stopped."


@pytest.mark.parametrize("concurrency", [2, 6])
def test_the_server_sampler_covers_the_grid_with_the_optimizers_threads(concurrency):
    """The study as ClearML runs it, ``optimize(n_trials, n_jobs=concurrency)``, with 2 threads and with more threads
    than pairs: every pair once, every trial complete (ClearML prunes a trial whose pair was already run)."""
    drawn = []

    def objective(trial: optuna.Trial) -> float:
        drawn.append(tuple(trial.suggest_categorical(name, choices) for name, choices in SMALL_GRID.items()))
        return 0.0

    study = optuna.create_study(sampler=GridInTrialOrder(SMALL_GRID, seed=3), pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=4, n_jobs=concurrency)
    assert sorted(drawn) == sorted(itertools.product(*SMALL_GRID.values()))
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 4


# The objective of each (lora_rank, prompt_length) as the stand-in train step reports it with the preset's seed (42); each
# further seed adds 0.01 per seed. (4, 1) fails. The sampler's seed 0 tries (4, 3), (4, 1), (2, 3), (2, 1), (8, 1), then (8, 3):
# the best of the first four, (2, 3), is neither the first nor the last to complete.
STAND_IN_VALUES = {(2, 1): 0.9, (2, 3): 0.3, (4, 3): 0.7, (8, 1): 0.6, (8, 3): 0.5}
FAILING_PAIR = (4, 1)


def stand_in_outputs(step: str, arguments: dict, output_dir: Path) -> dict:
    """What each step hands the sweep, without training (tests/step_runs.py's ``stand_in_steps``). A step the sweep should
    not run fails loudly."""
    from pipelines.local import StepFailed

    if step == "train":
        pair = (arguments["lora_rank"], arguments["prompt_length"])
        if pair == FAILING_PAIR:
            raise StepFailed(f"Step train failed with exit status 1 (pair {pair})")
        return {"best_value": STAND_IN_VALUES[pair] + (arguments["seed"] - 42) * 0.01}
    if step == "register":
        return {"model_dir": f"/models/{arguments['candidates']}", "metrics": {"bleu": 0.25, "chrf": 0.5}}
    assert step in ("ingest", "preprocess", "evaluate"), step
    return {}


def run_stand_in_sweep(argv: list[str], env: dict, record: Path, preprocess_arguments: dict | None = None, outputs_of=stand_in_outputs):
    """``python pipelines/run_hpo.py --local ...`` in a fork, its steps the stand-ins (handing back ``outputs_of``'s outputs);
    their calls are written to ``record``.

    With ``preprocess_arguments``, an offline preprocess task holding them as ``Args`` is made first and given as
    ``--preprocess-task-id`` (its id is the first call recorded)."""
    from forked import run_main

    def sweep_main(argv: list[str]) -> None:
        from clearml_adapter import tracking
        from clearml_adapter.connection import prepare_clearml
        from pipelines import run_hpo
        from pipelines.sweep import local as hpo_local

        calls = []
        if preprocess_arguments is not None:
            prepare_clearml(True)
            task = tracking.init_task("preprocess", "data_processing")
            task.connect(dict(preprocess_arguments), name="Args")
            task.close()
            calls.append({"preprocess_task_id": task.id})
            argv = [*argv, "--preprocess-task-id", task.id]
        record.write_text(json.dumps(calls), encoding="utf-8")  # a refusal ends the process at once (os._exit)
        hpo_local.run_step_locally = stand_in_steps(calls, outputs_of)
        run_hpo.main(argv)
        record.write_text(json.dumps(calls), encoding="utf-8")

    return run_main(sweep_main, ["--local", "--preset", "tiny", "--lora-ranks", "2,4,8", "--prompt-lengths", "1,3", *argv], env)


def test_the_sweeps_choices_are_its_trials_values(clearml_home, tmp_path):
    """Four of the six pairs, one failing, the best neither the first nor the last; then the best pair's second seed, the
    winner's evaluation and its registration with the metric asked for, every number of the summary and the table read
    back from what the stand-in steps reported. Continued with 5 trials, the sweep runs one more; asked for 7, the grid's 6."""
    out, record = tmp_path / "runs" / "sweep", tmp_path / "calls.json"
    shared = ["--epochs", "1.5", "--max-steps", "3", "--eval-every", "2", "--nproc-per-node", "2"]  # every trial's, each away from the preset's
    completed = run_stand_in_sweep(
        ["--trials", "4", "--noise-seeds", "2", "--metric", "bleu", *shared, "--output-dir", str(out)], clearml_home, record
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    calls = json.loads(record.read_text(encoding="utf-8"))
    summary = json.loads((out / "hpo_summary.json").read_text(encoding="utf-8"))
    lines = completed.stdout.splitlines()

    assert [call["step"] for call in calls] == ["ingest", "preprocess", *["train"] * 4, "train", "evaluate", "register"]
    ingest, preprocess, *trials, noise_43, evaluate, register = calls
    assert [ingest["output_dir"], preprocess["output_dir"]] == [str(out / "data" / "ingest"), str(out / "data" / "preprocess")]
    assert preprocess["arguments"]["ingest_task_id"] == "ingest-1"
    for call in (*trials, noise_43):
        assert {name: call["arguments"][name] for name in ("preprocess_task_id", "model", "epochs", "max_steps", "eval_every", "nproc_per_node")} == {
            "preprocess_task_id": "preprocess-2",
            "model": PRESETS["tiny"]["model"],
            "epochs": 1.5,
            "max_steps": 3,
            "eval_every": 2,
            "nproc_per_node": 2,
        }
    pairs = [(call["arguments"]["lora_rank"], call["arguments"]["prompt_length"]) for call in trials]
    assert len(set(pairs)) == 4 and FAILING_PAIR in pairs
    assert [call["output_dir"] for call in trials] == [str(out / "trials" / f"trial-{number}") for number in range(4)]
    completed_pairs = [pair for pair in pairs if pair != FAILING_PAIR]
    best_pair = min(completed_pairs, key=STAND_IN_VALUES.get)
    assert best_pair not in (completed_pairs[0], completed_pairs[-1])  # the configuration tells the best from the first and the last
    best_number = pairs.index(best_pair)

    expected_trials = [
        {
            "number": number,
            "params": {"lora_rank": pair[0], "prompt_length": pair[1]},
            "value": None,
            "task_id": None,
            "status": "failed",
            "error": f"Step train failed with exit status 1 (pair {pair})",
        }
        if pair == FAILING_PAIR
        else {
            "number": number,
            "params": {"lora_rank": pair[0], "prompt_length": pair[1]},
            "value": STAND_IN_VALUES[pair],
            "task_id": f"train-{number + 3}",
            "status": "completed",
        }
        for number, pair in enumerate(pairs)
    ]
    assert summary["trials"] == expected_trials
    best_params = expected_trials[best_number]["params"]
    assert ((noise_43["arguments"]["seed"], noise_43["arguments"]["lora_rank"], noise_43["arguments"]["prompt_length"]), noise_43["output_dir"]) == (
        (43, *best_pair),
        str(out / "noise" / "seed-43"),
    )
    noise_values = [STAND_IN_VALUES[best_pair], STAND_IN_VALUES[best_pair] + 0.01]
    assert summary["noise"] == {"params": best_params, "seeds": [42, 43], "values": noise_values, "spread": max(noise_values) - min(noise_values)}
    assert evaluate["arguments"]["train_task_id"] == f"train-{best_number + 3}"
    assert [evaluate["output_dir"], register["output_dir"]] == [str(out / "best" / "evaluate"), str(out / "best" / "register")]
    assert (out / "hpo_study.db").is_file()  # the study, where the README says it lives
    assert (register["arguments"]["candidates"], register["arguments"]["metric"]) == ("evaluate-8", "bleu")
    assert summary["best"] == {
        "params": best_params,
        "value": STAND_IN_VALUES[best_pair],
        "task_id": f"train-{best_number + 3}",
        "model_dir": "/models/evaluate-8",
        "test_metrics": {"bleu": 0.25, "chrf": 0.5},
    }
    assert summary["data_task_ids"] == {"ingest": "ingest-1", "preprocess": "preprocess-2"}

    # What the sweep says, each line before the output of the step it announces (flushed: steps write past its buffer).
    assert not any(line.startswith("The grid has") for line in lines)  # 4 of 6: all asked for are run
    for number, trial in enumerate(expected_trials):
        done = [earlier for earlier in expected_trials[:number] if earlier["value"] is not None]
        best_yet = min(done, key=lambda earlier: earlier["value"], default=None)
        so_far = "none yet" if best_yet is None else f"{best_yet['value']:.4f} with {best_yet['params']}"
        header = lines.index(f"### Trial {number + 1} of 4: {trial['params']} (best so far: {so_far})")
        assert lines[header + 1] == "(output of train)"
        if trial["status"] == "failed":
            assert lines[header + 2] == f"Trial {number} failed; the sweep goes on."
    assert lines[lines.index(f"### Seed-to-seed noise: {best_params} with seed 43") + 1] == "(output of train)"
    assert "\n\ntrial  lora_rank  prompt_length  status     validation loss\n" in completed.stdout
    table = lines[lines.index("trial  lora_rank  prompt_length  status     validation loss") :]
    for line, trial in zip(table[1:5], expected_trials):
        value = "" if trial["value"] is None else f"{trial['value']:.4f}" + ("  <- best" if trial["number"] == best_number else "")
        assert (
            line == f"{trial['number']:>5}  {trial['params']['lora_rank']:>9}  {trial['params']['prompt_length']:>13}  {trial['status']:<9}  {value}"
        )
    values = [trial["value"] for trial in expected_trials if trial["value"] is not None]
    assert table[5:] == [
        "",
        f"Seed-to-seed spread of {best_params} over seeds [42, 43]: {summary['noise']['spread']:.4f} "
        f"({', '.join(f'{v:.4f}' for v in noise_values)}); the trials span {max(values) - min(values):.4f}.",
        "",
        f"Best: {best_params} (validation loss {STAND_IN_VALUES[best_pair]:.4f}); registered model directory /models/evaluate-8.",
        f"Summary: {out / 'hpo_summary.json'}",
    ]

    # Continued with one trial more: the fifth pair only, the noise run read back, not trained again.
    completed = run_stand_in_sweep(["--trials", "5", "--noise-seeds", "2", "--output-dir", str(out)], clearml_home, record)
    assert completed.returncode == 0, completed.stderr[-3000:]
    calls = json.loads(record.read_text(encoding="utf-8"))
    assert [call["step"] for call in calls] == ["train", "evaluate", "register"]
    assert calls[2]["arguments"]["metric"] == "chrf"  # the default --metric
    fifth = (calls[0]["arguments"]["lora_rank"], calls[0]["arguments"]["prompt_length"])
    # Asked for more trials than the grid holds: the sixth pair, and no more.
    completed = run_stand_in_sweep(["--trials", "7", "--noise-seeds", "2", "--output-dir", str(out)], clearml_home, record)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "The grid has 6 combinations: running 6 trials, not 7." in completed.stdout.splitlines()
    calls = json.loads(record.read_text(encoding="utf-8"))
    assert [call["step"] for call in calls] == ["train", "evaluate", "register"]
    sixth = (calls[0]["arguments"]["lora_rank"], calls[0]["arguments"]["prompt_length"])
    assert sorted([*pairs, fifth, sixth]) == sorted([*STAND_IN_VALUES, FAILING_PAIR])
    # The study was made for its space: another one is refused.
    completed = run_stand_in_sweep(["--prompt-lengths", "1", "--output-dir", str(out)], clearml_home, record)
    assert (completed.returncode, completed.stderr.splitlines()[-1]) == (
        1,
        f"error: The study in {out} was made for the space {{'lora_rank': [2, 4, 8], 'prompt_length': [1, 3]}}, not "
        "{'lora_rank': [2, 4, 8], 'prompt_length': [1]}; use another --output-dir.",
    )


def test_a_sweep_whose_trials_all_fail_is_one_sentence(clearml_home, tmp_path):
    out = tmp_path / "sweep"
    completed = run_stand_in_sweep(["--lora-ranks", "4", "--prompt-lengths", "1", "--output-dir", str(out)], clearml_home, tmp_path / "calls.json")
    assert (completed.returncode, completed.stderr.splitlines()[-1]) == (
        1,
        f"error: All 1 trials failed; their errors are in {out / 'hpo_summary.json'} and above.",
    )
    assert json.loads((out / "hpo_summary.json").read_text(encoding="utf-8")) == {
        "objective": OBJECTIVE,
        "space": {"lora_rank": [4], "prompt_length": [1]},
        "trials": [
            {
                "number": 0,
                "params": {"lora_rank": 4, "prompt_length": 1},
                "value": None,
                "task_id": None,
                "status": "failed",
                "error": "Step train failed with exit status 1 (pair (4, 1))",
            }
        ],
        "best": None,
        "data_task_ids": {"ingest": "ingest-1", "preprocess": "preprocess-2"},
        "noise": None,
    }


def in_folders_named_in_russian(step: str, arguments: dict, output_dir: Path) -> dict:
    """``stand_in_outputs`` as steps run in folders a Russian user named hand them back: text that a locale encoding other
    than UTF-8 cannot hold (ASCII here; Windows' cp1252 as well)."""
    from pipelines.local import StepFailed

    try:
        outputs = stand_in_outputs(step, arguments, output_dir)
    except StepFailed as failed:
        raise StepFailed(f"{failed}; rerun it alone with: steps/train.py --output-dir /эксперименты/{output_dir.name}") from None
    folder = {"train": "adapter_dir", "register": "model_dir"}.get(step)
    return {**outputs, folder: f"/эксперименты/{output_dir.name}"} if folder else outputs


def test_the_sweeps_files_are_utf_8_whatever_the_locale(clearml_home, tmp_path):
    """Under a locale whose encoding cannot hold Russian (with the terminal's UTF-8): the summary of a sweep whose trials
    all failed, of one that finished, and the seed run's result that a continued sweep reads back instead of training."""
    env, record = {**clearml_home, **ASCII_LOCALE, "PYTHONIOENCODING": "utf-8"}, tmp_path / "calls.json"
    failed = run_stand_in_sweep(
        ["--lora-ranks", "4", "--prompt-lengths", "1", "--output-dir", str(tmp_path / "failed")], env, record, outputs_of=in_folders_named_in_russian
    )
    assert failed.returncode == 1, failed.stderr[-3000:]
    [trial] = json.loads((tmp_path / "failed" / "hpo_summary.json").read_text(encoding="utf-8"))["trials"]
    assert trial["error"].endswith("--output-dir /эксперименты/trial-0")
    out = tmp_path / "sweep"
    for run in ("first", "continued"):
        completed = run_stand_in_sweep(
            ["--lora-ranks", "2,8", "--prompt-lengths", "3", "--trials", "2", "--noise-seeds", "2", "--output-dir", str(out)],
            env,
            record,
            outputs_of=in_folders_named_in_russian,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert json.loads((out / "hpo_summary.json").read_text(encoding="utf-8"))["best"]["model_dir"] == "/эксперименты/register"
        steps = [call["step"] for call in json.loads(record.read_text(encoding="utf-8"))]
        assert steps == (["ingest", "preprocess", "train", "train", "train", "evaluate", "register"] if run == "first" else ["evaluate", "register"])
    assert json.loads((out / "noise" / "seed-43" / "result.json").read_text(encoding="utf-8"))["outputs"]["adapter_dir"] == "/эксперименты/seed-43"


def test_a_sweep_on_a_given_preprocess_task_trains_on_its_data_and_evaluates_on_its_ingest(clearml_home, tmp_path):
    record = tmp_path / "calls.json"
    completed = run_stand_in_sweep(
        ["--lora-ranks", "2", "--prompt-lengths", "1,3", "--noise-seeds", "1", "--output-dir", str(tmp_path / "sweep")],
        clearml_home,
        record,
        preprocess_arguments={"ingest_task_id": "the-ingest-task"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    given, *calls = json.loads(record.read_text(encoding="utf-8"))
    assert [call["step"] for call in calls] == ["train", "train", "evaluate", "register"]  # no ingest, no preprocess
    assert [call["arguments"]["preprocess_task_id"] for call in calls[:2]] == [given["preprocess_task_id"]] * 2
    assert calls[2]["arguments"]["ingest_task_id"] == "the-ingest-task"
    assert json.loads((tmp_path / "sweep" / "hpo_summary.json").read_text(encoding="utf-8"))["noise"] is None  # one seed: no spread to measure

    completed = run_stand_in_sweep(["--output-dir", str(tmp_path / "other")], clearml_home, record, preprocess_arguments={"model": "tiny"})
    given = json.loads(record.read_text(encoding="utf-8"))[0]["preprocess_task_id"]
    assert (completed.returncode, completed.stderr.splitlines()[-1]) == (
        1,
        f"error: Task {given} has no Args/ingest_task_id; give a preprocess task made from an ingest task.",
    )
