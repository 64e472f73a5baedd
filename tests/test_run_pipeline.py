"""``python pipelines/run_pipeline.py`` run locally, its steps stand-ins: the steps it runs and what each is handed, the
summary, the report and what it prints. Seconds per run instead of the minutes of the tiny pipeline's real run, whose
figures tests/test_pipeline_local.py and tests/test_reported_numbers.py recompute."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from conftest import ASCII_LOCALE, ROOT
from forked import run_main
from step_runs import stand_in_steps
from test_report import BASE_METRICS, METRICS, TRAINING

from clearml_adapter.tracking import to_json
from components.comparison import comparison_table
from components.settings import CLEARML_PROJECT
from pipelines.definition import PRESETS
from pipelines.report import HEADLINE_METRICS, REPORT_FILE

DECODING = "beam search, 2 beams"
# What the register step hands on: the headline metrics and others, which summary.json keeps under all_metrics only.
REGISTERED = {**{name: METRICS[name] for name in reversed(list(METRICS))}, "published_rouge1": 0.5}


def stand_in_outputs(step: str, arguments: dict, output_dir: Path) -> dict:
    """What each step hands the launch (tests/step_runs.py's ``stand_in_steps``); train and evaluate write the files the
    report reads, as the real steps do."""
    if step == "train":
        (output_dir / "training.json").write_text(to_json(TRAINING), encoding="utf-8")
    elif step == "evaluate":
        (output_dir / "evaluation.json").write_text(to_json({"rows": 2, "decoding": {"description": DECODING}}), encoding="utf-8")
        pd.DataFrame({"instruction": ["Вопрос", "Ещё"], "input": ["", ""], "output": ["да", "нет"], "prediction": ["да", "да"]}).to_csv(
            output_dir / "predictions.tsv", sep="\t", index=False
        )
        return {"decoding": {"description": DECODING}, "base_metrics": BASE_METRICS if arguments["compare_base"] else None}
    elif step == "register":
        return {"metrics": REGISTERED, "model_dir": f"/models/{arguments['candidates']}"}
    elif step == "export":
        return {"model_dir": "/exports/plain", **({"ctranslate2_dir": "/exports/ct2"} if arguments["ctranslate2"] else {})}
    return {}


def run_stand_in_pipeline(
    argv: list[str], env: dict, record: Path, project_root: Path, clock: list[float] | None = None, outputs_of=stand_in_outputs
):
    """``main(argv)`` in a fork, its steps the stand-ins (handing back ``outputs_of``'s outputs) and its default output
    folder under ``project_root``; with ``clock``, the readings of its timer."""

    def pipeline_main(argv: list[str]) -> None:
        import time

        from pipelines import run_pipeline

        calls = []
        run_pipeline.run_step_locally = stand_in_steps(calls, outputs_of)
        run_pipeline.PROJECT_ROOT = project_root
        if clock is not None:
            readings = iter(clock)
            run_pipeline.time = SimpleNamespace(perf_counter=lambda: next(readings), strftime=time.strftime)
        record.write_text(json.dumps(calls), encoding="utf-8")  # a refusal ends the process at once (os._exit)
        run_pipeline.main(argv)
        record.write_text(json.dumps(calls), encoding="utf-8")

    return run_main(pipeline_main, argv, env)


def expected_output(summary: dict, output_dir: Path, compared: bool, export: dict | None) -> list[str]:
    """The lines after the steps' output, as the README shows them."""
    table = comparison_table(
        {name: REGISTERED[name] for name in HEADLINE_METRICS}, {name: BASE_METRICS[name] for name in HEADLINE_METRICS} if compared else None
    )
    lines = [
        "",
        f"Pipeline finished (offline). Test metrics{' (the untuned base beside the fine-tuned model)' if compared else ''}, {DECODING}:",
        *table.split("\n"),
        "",
        f"Report:   {output_dir / REPORT_FILE}",
        "Model directory: /models/evaluate-4",
        '  try it:  python -m tools.generate --model-dir /models/evaluate-4 "Назови столицу Франции."',
    ]
    if export:
        lines.append(f"Exported: {export['model_dir']} (a plain Hugging Face checkpoint)")
        if "ctranslate2_dir" in export:
            lines.append(f"  for CTranslate2: {export['ctranslate2_dir']}")
    lines += [f"Summary:  {output_dir / 'summary.json'}", "Offline ClearML sessions, one per step; to import them into a server later:"]
    return lines + [f"  python -c \"from clearml import Task; Task.import_offline_session('{session}')\"" for session in summary["offline_sessions"]]


def test_a_local_run_hands_each_step_its_upstream_tasks_and_sums_up_what_they_hand_back(clearml_home, tmp_path):
    """--local with the base left out and a relative output folder and data file; the steps in order, each handed the
    upstream task ids; summary.json from what the steps handed back; the report; the lines printed."""
    record, out = tmp_path / "calls.json", tmp_path / "out"
    argv = [
        "--local",
        "--preset",
        "tiny",
        "--output-dir",
        os.path.relpath(out, ROOT),
        "--test-tsv",
        "data/tasks/test.tsv",
        "--compare-base",
        "false",
        "--lora-rank",
        "3",
        "--gradient-checkpointing",
        "false",
    ]
    clock = [100.0, 100.004, 101.0, 103.5, 110.0, 110.126, 200.0, 260.555, 300.0, 300.5]  # each step's start and end
    completed = run_stand_in_pipeline(argv, clearml_home, record, tmp_path, clock)
    assert completed.returncode == 0, completed.stderr[-3000:]
    calls = json.loads(record.read_text(encoding="utf-8"))
    assert [(call["step"], call["output_dir"]) for call in calls] == [
        (step, str(out / step)) for step in ("ingest", "preprocess", "train", "evaluate", "register")
    ]
    ingest, preprocess, train, evaluate, register = (call["arguments"] for call in calls)
    assert (ingest["test_tsv"], ingest["train_tsv"]) == (
        str(ROOT / "data" / "tasks" / "test.tsv"),
        str((ROOT / PRESETS["tiny"]["train_tsv"]).resolve()),
    )
    assert (preprocess["ingest_task_id"], train["preprocess_task_id"], train["lora_rank"]) == ("ingest-1", "preprocess-2", 3)
    assert (evaluate["train_task_id"], evaluate["ingest_task_id"], evaluate["compare_base"], register["candidates"]) == (
        "train-3",
        "ingest-1",
        False,
        "evaluate-4",
    )

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary.pop("step_seconds") == {"ingest": 0.0, "preprocess": 2.5, "train": 0.13, "evaluate": 60.56, "register": 0.5}  # to 0.01 s
    parameters = summary.pop("parameters")
    assert (parameters["lora_rank"], parameters["compare_base"], parameters["gradient_checkpointing"], parameters["test_tsv"]) == (
        3,
        False,
        False,
        str(ROOT / "data" / "tasks" / "test.tsv"),
    )  # true|false options read as booleans
    task_ids = {call["step"]: f"{call['step']}-{number}" for number, call in enumerate(calls, 1)}
    assert summary == {
        "metrics": {name: REGISTERED[name] for name in HEADLINE_METRICS},
        "base_metrics": None,
        "all_metrics": REGISTERED,
        "decoding": DECODING,
        "model_dir": "/models/evaluate-4",
        "task_ids": task_ids,
        "export": None,
        "offline_sessions": [f"/sessions/{task_id}.zip" for task_id in task_ids.values()],
        "report": str(out / REPORT_FILE),
    }
    assert list(summary["metrics"]) == list(HEADLINE_METRICS)  # in the protocol's order, whatever the step's
    assert (out / REPORT_FILE).read_text(encoding="utf-8").startswith("# Pipeline run:")

    lines = completed.stdout.splitlines()
    assert lines[:5] == [f"(output of {step})" for step in ("ingest", "preprocess", "train", "evaluate", "register")]
    assert lines[5:] == expected_output(summary, out, compared=False, export=None)


def test_without_a_server_the_run_is_local_said_so_in_a_dated_folder_and_exports_when_asked(clearml_home, tmp_path):
    """No --local and no server configured: the run says it runs offline, goes to runs/<preset>-<date>-<time> and, asked,
    ends with the export step (with CTranslate2's conversion) handed the register task."""
    record = tmp_path / "calls.json"
    completed = run_stand_in_pipeline(["--preset", "tiny", "--export", "true", "--export-ctranslate2", "true"], clearml_home, record, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    [out] = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"tiny-\d{8}-\d{6}", out.name)
    calls = json.loads(record.read_text(encoding="utf-8"))
    assert [call["step"] for call in calls] == ["ingest", "preprocess", "train", "evaluate", "register", "export"]
    assert (calls[5]["arguments"]["register_task_id"], calls[5]["arguments"]["ctranslate2"], calls[5]["output_dir"]) == (
        "register-5",
        True,
        str(out / "export"),
    )
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    export = {"model_dir": "/exports/plain", "ctranslate2_dir": "/exports/ct2"}
    assert (summary["export"], summary["base_metrics"]) == (export, {name: BASE_METRICS[name] for name in HEADLINE_METRICS})
    assert summary["task_ids"]["export"] == "export-6" and summary["parameters"]["export_ctranslate2"] is True
    lines = completed.stdout.splitlines()
    assert lines[0] == "No ClearML server to use (none configured, or CLEARML_OFFLINE_MODE set): running locally in offline mode."
    assert lines[7:] == expected_output(summary, out, compared=True, export=export)


def test_the_summary_is_utf_8_whatever_the_locale(clearml_home, tmp_path):
    """A model directory a Russian user named, under a locale whose encoding cannot hold it (ASCII here; Windows' cp1252 as
    well) with the terminal's UTF-8."""

    def in_a_folder_named_in_russian(step: str, arguments: dict, output_dir: Path) -> dict:
        outputs = stand_in_outputs(step, arguments, output_dir)
        return {**outputs, "model_dir": "/модели/дообученная"} if step == "register" else outputs

    out = tmp_path / "out"
    completed = run_stand_in_pipeline(
        ["--local", "--preset", "tiny", "--output-dir", str(out)],
        {**clearml_home, **ASCII_LOCALE, "PYTHONIOENCODING": "utf-8"},
        tmp_path / "calls.json",
        tmp_path,
        outputs_of=in_a_folder_named_in_russian,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["model_dir"] == "/модели/дообученная"
    assert "Model directory: /модели/дообученная" in completed.stdout.splitlines()


def test_a_conversion_without_the_export_it_converts_is_one_sentence_before_any_step(clearml_home, tmp_path):
    record = tmp_path / "calls.json"
    completed = run_stand_in_pipeline(
        ["--local", "--preset", "tiny", "--export-ctranslate2", "true", "--output-dir", str(tmp_path / "out")], clearml_home, record, tmp_path
    )
    assert (completed.returncode, completed.stderr.splitlines()[-1]) == (
        1,
        "error: export_ctranslate2 (--export-ctranslate2 true) converts the export step's checkpoint, and this run has no export step: "
        "set export (--export true) too.",
    )
    assert json.loads(record.read_text(encoding="utf-8")) == [] and not (tmp_path / "out").exists()


def launch_on_a_stand_in_server(argv: list[str], env: dict, log: Path, on_agent: bool = False):
    """``main(argv)`` in a fork with a server configured, its ClearML side stood in for: each call it makes is written to
    ``log``, one JSON line each (the controller's checks, the pipeline built and started, the task followed)."""

    def launch_main(argv: list[str]) -> None:
        import clearml

        from pipelines import controller, run_pipeline

        def record(*call) -> None:
            with log.open("a", encoding="utf-8") as file:
                file.write(json.dumps(call) + "\n")

        class Pipeline:
            def start(self, queue):
                record("start", queue)

            def start_locally(self, run_pipeline_steps_locally):
                record("start_locally", run_pipeline_steps_locally)

        run_pipeline.prepare_clearml = lambda local: record("prepare_clearml", local) or False
        run_pipeline.tracking.parse_task_arguments = lambda parser, argv: record("arguments", argv) or parser.parse_args(argv)
        run_pipeline.running_on_agent = lambda: on_agent
        run_pipeline.check_queues = lambda uses: record("check_queues", [[use.name, use.kind, use.option, use.purpose] for use in uses])
        run_pipeline.check_repository = lambda allow_local: record("check_repository", allow_local) or "the launch's code"
        run_pipeline.repository_path = lambda path, option: f"{option} {path} in the repository"
        run_pipeline.enqueue_and_follow = lambda enqueue, task_id, queue, wait_s: record("enqueue_and_follow", task_id, queue, wait_s) or enqueue()
        controller.build_controller = lambda parameters, queues, project, name: (
            record("build_controller", parameters, queues, project, name) or Pipeline()
        )
        controller.complete_controller_code = lambda task, launched: record("complete_controller_code", task.id, launched)
        clearml.Task.current_task = staticmethod(lambda: SimpleNamespace(id="controller-1"))
        run_pipeline.main(argv)

    log.unlink(missing_ok=True)
    completed = run_main(launch_main, argv, env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


STEP_QUEUES = [["cpu", "cpu", "--cpu-queue", "ingest, preprocess, register"], ["gpu", "gpu", "--gpu-queue", "train, evaluate"]]


def test_on_a_server_the_launch_checks_its_queues_and_repository_then_enqueues_the_controller_and_follows_it(clearml_home, tmp_path):
    log = tmp_path / "calls.jsonl"
    argv = [
        "--preset",
        "tiny",
        "--cpu-queue",
        "cpu2",
        "--controller-queue",
        "svc",
        "--wait-for-start",
        "9",
        "--project",
        "P",
        "--pipeline-name",
        "N",
        "--allow-local-repository",
        "--export",
        "true",
    ]
    calls = launch_on_a_stand_in_server(argv, clearml_home, log)
    assert [call[0] for call in calls] == [
        "prepare_clearml",
        "arguments",
        "check_queues",
        "check_repository",
        "build_controller",
        "complete_controller_code",
        "enqueue_and_follow",
        "start",
    ]
    assert calls[:2] == [["prepare_clearml", False], ["arguments", argv]]
    assert calls[2] == [
        "check_queues",
        [
            ["cpu2", "cpu", "--cpu-queue", "ingest, preprocess, register, export"],
            STEP_QUEUES[1],
            ["svc", "services", "--controller-queue", "the pipeline controller"],
        ],
    ]
    assert calls[3] == ["check_repository", True]
    _, parameters, queues, project, name = calls[4]
    tiny = PRESETS["tiny"]
    assert (parameters["train_tsv"], parameters["test_tsv"]) == (
        f"--train-tsv {tiny['train_tsv']} in the repository",
        f"--test-tsv {tiny['test_tsv']} in the repository",
    )
    assert (parameters["model"], parameters["export"], queues, project, name) == (tiny["model"], True, {"cpu": "cpu2", "gpu": "gpu"}, "P", "N")
    assert calls[5:] == [
        ["complete_controller_code", "controller-1", "the launch's code"],
        ["enqueue_and_follow", "controller-1", "svc", 9.0],
        ["start", "svc"],
    ]


def test_the_controller_runs_in_the_launching_shell_or_on_its_agent_without_the_services_queue(clearml_home, tmp_path):
    log = tmp_path / "calls.jsonl"
    here = launch_on_a_stand_in_server(["--controller-here"], clearml_home, log)
    assert [call[0] for call in here] == [
        "prepare_clearml",
        "arguments",
        "check_queues",
        "check_repository",
        "build_controller",
        "complete_controller_code",
        "start_locally",
    ]
    assert (here[2], here[3], here[-1]) == (["check_queues", STEP_QUEUES], ["check_repository", False], ["start_locally", False])
    assert here[4][3:] == [CLEARML_PROJECT, "ruT5 LoRA+prompt fine-tuning"]
    on_agent = launch_on_a_stand_in_server(["--controller-queue", "svc"], clearml_home, log, on_agent=True)
    assert [call[0] for call in on_agent] == ["prepare_clearml", "arguments", "check_queues", "build_controller", "start"]
    assert (on_agent[2], on_agent[-1]) == (["check_queues", STEP_QUEUES], ["start", "svc"])


def test_help_lists_the_options_before_anything_else(clearml_home):
    from pipelines import run_pipeline

    helped = run_main(run_pipeline.main, ["--help"], clearml_home)
    assert (helped.returncode, helped.stdout.split()[0], "--lora-rank LORA_RANK" in helped.stdout) == (0, "usage:", True)
