"""The production wiring, checked without a server: steps, parents, queues and parameter names."""

import json
import socket
import threading
import time
from dataclasses import dataclass

import pytest
from conftest import ASCII_LOCALE, ROOT, run_script
from forked import run_main

from clearml_adapter.connection import SERVER_CHECK_TIMEOUT_S
from cli.options import option_flag
from components.errors import UserError
from components.settings import setting
from pipelines import definition
from pipelines.controller import step_parser
from pipelines.definition import (
    PARAMETERS,
    PRESETS,
    STEP_BY_NAME,
    STEPS,
    UPSTREAM_ARGUMENTS,
    Parameter,
    RunOptions,
    configuration_reference,
    declared_parameters,
    grid_size,
    preset_values,
    run_steps,
    script_path,
    step_arguments,
)
from pipelines.local import StepFailed, as_flags, run_step_locally
from pipelines.run_hpo import build_parser as build_hpo_parser
from pipelines.run_pipeline import build_parser, pipeline_parameters


def print_offline_dag(_argv) -> None:
    """The published pipeline's controller, built offline with ``--lora-rank 16``: its DAG and parameters as one line."""
    from clearml_adapter.connection import enter_offline_mode
    from pipelines.controller import build_controller

    enter_offline_mode()
    parameters = pipeline_parameters(PRESETS["published"], build_parser().parse_args(["--lora-rank", "16"]))
    pipe = build_controller(parameters, {"cpu": "cpu-q", "gpu": "gpu-q"}, project="proj", name="pipe")
    dag = {
        name: {"parents": node.parents, "queue": node.queue, "parameters": node.parameters, "cache": node.cache_executed_step}
        for name, node in pipe.get_pipeline_dag().items()
    }
    print("DAG=" + json.dumps({"dag": dag, "pipeline": pipe.get_parameters()}))


@pytest.fixture  # per test, in a forked run: mutmut counts a fixture's calls for the first test that uses it only
def controller(clearml_home):
    completed = run_main(print_offline_dag, [], clearml_home)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(next(line for line in completed.stdout.splitlines() if line.startswith("DAG="))[4:])


def test_steps_parents_and_queues(controller):
    dag = controller["dag"]
    assert list(dag) == ["ingest", "preprocess", "train", "evaluate", "register"]
    assert {name: node["parents"] for name, node in dag.items()} == {
        "ingest": [],
        "preprocess": ["ingest"],
        "train": ["preprocess"],
        "evaluate": ["train"],
        "register": ["evaluate"],
    }
    assert {name: node["queue"] for name, node in dag.items()} == {
        "ingest": "cpu-q",
        "preprocess": "cpu-q",
        "train": "gpu-q",
        "evaluate": "gpu-q",
        "register": "cpu-q",
    }
    assert [name for name, node in dag.items() if node["cache"]] == ["ingest", "preprocess", "train", "evaluate"]


def test_pipeline_parameters_reach_the_steps(controller):
    dag, pipeline = controller["dag"], controller["pipeline"]
    assert pipeline["lora_rank"] == 16 and pipeline["prompt_length"] == 20 and pipeline["model"] == "ai-forever/ruT5-large"
    assert dag["train"]["parameters"]["Args/lora_rank"] == "${pipeline.lora_rank}"
    assert dag["train"]["parameters"]["Args/preprocess_task_id"] == "${preprocess.id}"
    assert dag["evaluate"]["parameters"]["Args/ingest_task_id"] == "${ingest.id}"
    assert dag["register"]["parameters"]["Args/candidates"] == "${evaluate.id}"
    referenced = {v[len("${pipeline.") : -1] for node in dag.values() for v in node["parameters"].values() if v.startswith("${pipeline.")}
    assert referenced == set(pipeline) - {"export", "export_ctranslate2"}  # export adds the export step, which is not in this run


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
def test_every_override_names_an_argument_of_its_step(step):
    """A name that is not an argparse dest of the step would silently override nothing on an agent."""
    dests = {action.dest for action in step_parser(step)._actions}
    everything = {name: "x" for name in PARAMETERS}
    arguments = step_arguments(step.name, everything, {s.name: "id" for s in STEPS})
    assert set(arguments) <= dests, set(arguments) - dests
    assert set(UPSTREAM_ARGUMENTS.get(step.name, {})) <= set(arguments)


def test_a_step_gets_its_upstream_task_ids_and_the_parameters_it_takes():
    """Locally as on a server: each upstream argument holds that upstream step's task id; parameters of other steps,
    and parameters left at None (the step's own default), are not passed."""
    parameters = {name: None for name in PARAMETERS} | {"max_test_samples": 16, "lora_rank": 4, "decoding": "beam"}
    ids = {"ingest": "task-i", "train": "task-t"}
    assert step_arguments("evaluate", parameters, ids) == {
        "max_samples": 16,
        "decoding": "beam",
        "train_task_id": "task-t",
        "ingest_task_id": "task-i",
    }


def test_a_sweeps_grid_is_the_product_of_its_value_counts_and_each_step_is_a_script_of_the_repository():
    assert grid_size({"lora_rank": [4, 8, 16], "prompt_length": [10, 20]}) == 6 and grid_size({"lora_rank": [8]}) == 1
    for step in STEPS:
        assert script_path(STEP_BY_NAME[step.name]) == str(ROOT / "steps" / f"{step.name}.py")


def test_a_local_step_gets_its_arguments_as_flags_and_hands_back_its_result(clearml_home, tmp_path, monkeypatch, capsys):
    """Texts keep their case, booleans are true/false; a step that fails is one sentence with the command to rerun it."""
    assert as_flags({"model": "ai-forever/ruT5-large", "compare_base": True, "export": False, "lora_rank": 8}) == [
        "--model",
        "ai-forever/ruT5-large",
        "--compare-base",
        "true",
        "--export",
        "false",
        "--lora-rank",
        "8",
    ]
    for name, value in clearml_home.items():
        monkeypatch.setenv(name, value)
    splits = {"train_tsv": str(ROOT / "data" / "sample" / "train.tsv"), "test_tsv": str(ROOT / "data" / "sample" / "test.tsv")}
    result = run_step_locally(STEP_BY_NAME["ingest"], {**splits, "validation_size": 7}, tmp_path / "ingest")
    assert result["step"] == "ingest" and result["outputs"]["rows"]["validation"] == 7
    assert f"=== ingest: {ROOT / 'steps' / 'ingest.py'} --local --output-dir {tmp_path / 'ingest'} --train-tsv" in capsys.readouterr().out
    with pytest.raises(StepFailed) as failed:
        run_step_locally(STEP_BY_NAME["ingest"], {"train_tsv": str(tmp_path / "absent.tsv")}, tmp_path / "failed")
    assert str(failed.value) == (
        f"Step ingest failed with exit status 1 (its output is above); rerun it alone with: {ROOT / 'steps' / 'ingest.py'} "
        f"--local --output-dir {tmp_path / 'failed'} --train-tsv {tmp_path / 'absent.tsv'}"
    )


def test_a_local_steps_result_is_read_as_utf_8_whatever_the_locale(clearml_home, tmp_path, monkeypatch):
    """A step's ``result.json`` is UTF-8 with its text as it is (``tracking.to_json``); the runner reads it back under a
    locale whose encoding cannot hold Russian (ASCII here; Windows' cp1252 as well)."""
    from pipelines import local

    step = tmp_path / "step.py"
    step.write_text(
        "import sys, pathlib\nout = pathlib.Path(sys.argv[sys.argv.index('--output-dir') + 1])\nout.mkdir()\n"
        "(out / 'result.json').write_bytes('{\"model_dir\": \"/модели/дообученная\"}'.encode('utf-8'))\n",
        encoding="utf-8",
    )
    monkeypatch.setattr(local, "script_path", lambda _step: str(step))  # in the forked run below
    read = tmp_path / "read.json"
    completed = run_main(
        lambda _argv: read.write_text(json.dumps(run_step_locally(STEP_BY_NAME["ingest"], {}, tmp_path / "out"))),
        [],
        {**clearml_home, **ASCII_LOCALE},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(read.read_text()) == {"model_dir": "/модели/дообученная"}


LOCAL_STEP_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from pipelines.definition import STEP_BY_NAME
from pipelines.local import run_step_locally
run_step_locally(STEP_BY_NAME["ingest"], {"train_tsv": "data/sample/train.tsv", "test_tsv": "data/sample/test.tsv"}, __import__("pathlib").Path(sys.argv[2]))
"""


def test_a_local_step_runs_from_the_repository_and_its_header_comes_before_its_output(clearml_home, tmp_path):
    """Run from another folder with its output in a pipe: the data paths are the repository's (README commands name
    them from its root), and the === header is flushed before the step writes a line."""
    import subprocess
    import sys

    buffered = {name: value for name, value in clearml_home.items() if name != "PYTHONUNBUFFERED"}  # a pipe, as on an agent
    ran = subprocess.run(
        [sys.executable, "-c", LOCAL_STEP_SCRIPT, str(ROOT), str(tmp_path / "ingest")],
        cwd=tmp_path,
        env=buffered,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    lines = [line for line in ran.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("=== ingest: ") and len(lines) > 1


def test_the_export_step_runs_only_when_asked():
    """The controller above was built without --export: five steps. The local runner and the controller take the same steps."""

    def steps_of(*argv: str) -> list[str]:
        return [step.name for step in run_steps(pipeline_parameters(PRESETS["tiny"], build_parser().parse_args(list(argv))))]

    assert steps_of() == steps_of("--export", "false") == ["ingest", "preprocess", "train", "evaluate", "register"]
    assert (
        steps_of("--export", "true")
        == steps_of("--export", "true", "--export-ctranslate2", "true")
        == ["ingest", "preprocess", "train", "evaluate", "register", "export"]
    )
    with pytest.raises(UserError) as refused:
        steps_of("--export-ctranslate2", "true")
    assert "set export (--export true) too" in str(refused.value)


def test_every_pipeline_parameter_is_a_launch_option_with_help():
    """The help is the parameter's description in the UI (tests/e2e: the pipeline page)."""
    described = {action.dest: action.help for action in build_parser()._actions}
    assert {name: bool(described.get(name)) for name in PARAMETERS} == dict.fromkeys(PARAMETERS, True)


@pytest.mark.parametrize("parser", [build_parser, build_hpo_parser], ids=["run_pipeline", "run_hpo"])
def test_every_option_of_a_launch_is_described_as_the_ui_shows_it(parser):
    """ClearML stores each option's help, as written, as its description in the task's Args: none is missing
    (the UI would show "None") and none holds an argparse placeholder such as ``%(default)s``."""
    unreadable = {action.dest: action.help for action in parser()._actions if action.dest != "help" and (not action.help or "%(" in action.help)}
    assert unreadable == {}


def test_a_preset_is_the_published_configuration_with_the_values_it_names():
    """Every parameter of a run has a value: the preset's, else the default the steps declare (the published configuration)."""
    published = pipeline_parameters(PRESETS["published"], build_parser().parse_args([]))
    assert published == {name: parameter.default for name, parameter in PARAMETERS.items()}
    assert {
        name: published[name]
        for name in (
            "model",
            "validation_size",
            "lora_rank",
            "prompt_length",
            "batch_size",
            "grad_accum_steps",
            "learning_rate",
            "epochs",
            "max_new_tokens",
            "eval_every",
            "nproc_per_node",
            "precision",
            "decoding",
            "metric",
            "compare_base",
            "export",
            "export_ctranslate2",
        )
    } == {
        "model": "ai-forever/ruT5-large",
        "validation_size": 1000,
        "lora_rank": 8,
        "prompt_length": 20,
        "batch_size": 8,
        "grad_accum_steps": 4,
        "learning_rate": 3e-4,
        "epochs": 10.0,
        "max_new_tokens": None,
        "eval_every": None,
        "nproc_per_node": 1,
        "precision": "auto",
        "decoding": "greedy",
        "metric": "chrf",
        "compare_base": True,
        "export": False,
        "export_ctranslate2": False,
    }
    tiny = pipeline_parameters(PRESETS["tiny"], build_parser().parse_args([]))
    assert (
        {name for name in PARAMETERS if tiny[name] != published[name]}
        == set(PRESETS["tiny"])
        == {
            "model",
            "train_tsv",
            "test_tsv",
            "validation_size",
            "grad_accum_steps",
            "learning_rate",
            "epochs",
            "gradient_checkpointing",
            "eval_every",
            "max_new_tokens",
        }
    )
    with pytest.raises(KeyError, match=r"\['lora_ranks'\], which are no pipeline parameters"):
        preset_values({"lora_ranks": 4})


def test_compare_base_is_a_pipeline_parameter_the_evaluate_step_receives(controller):
    assert controller["pipeline"]["compare_base"] is True
    assert controller["dag"]["evaluate"]["parameters"]["Args/compare_base"] == "${pipeline.compare_base}"
    parameters = pipeline_parameters(PRESETS["tiny"], build_parser().parse_args(["--compare-base", "false"]))
    flags = as_flags(step_arguments("evaluate", parameters, {"train": "t", "ingest": "i"}))
    assert flags[flags.index("--compare-base") + 1] == "false"
    evaluate = next(step for step in STEPS if step.name == "evaluate")
    assert step_parser(evaluate).parse_args(flags).compare_base is False


def test_a_server_that_does_not_answer_stops_the_step_after_5_seconds(clearml_home, tmp_path):
    """A listener that accepts the connection and never answers: the step waits SERVER_CHECK_TIMEOUT_S
    (5 s, as the README says), then exits 1 with one line naming the address (ClearML alone retries for hours)."""
    waited = []

    def wait_for_hang_up(listener: socket.socket) -> None:
        try:
            connection, _ = listener.accept()
        except OSError:
            return  # nobody connected: the assertions below say so
        with connection:
            accepted = time.monotonic()
            while connection.recv(65536):  # the request, then nothing until the client gives up
                pass
            waited.append(time.monotonic() - accepted)

    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(120)
        host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        watcher = threading.Thread(target=wait_for_hang_up, args=(silent,), daemon=True)
        watcher.start()
        env = {**clearml_home, "CLEARML_API_HOST": host, "CLEARML_API_ACCESS_KEY": "k", "CLEARML_API_SECRET_KEY": "s"}
        completed = run_script(
            env,
            "steps/ingest.py",
            "--train-tsv",
            "data/sample/train.tsv",
            "--test-tsv",
            "data/sample/test.tsv",
            "--output-dir",
            str(tmp_path),
            check=False,
            timeout=120,
        )
        watcher.join(timeout=10)
    assert completed.returncode == 1
    last_line = completed.stderr.strip().splitlines()[-1]
    assert f"{host} did not answer within 5 s" in last_line and "--local" in last_line
    assert "Traceback" not in completed.stderr
    # The listener's clock starts when its thread gets the connection, a little after the client's
    # (4.995 s was seen on a busy machine): the client waited the whole timeout, and not much more.
    assert len(waited) == 1 and SERVER_CHECK_TIMEOUT_S - 0.5 <= waited[0] < SERVER_CHECK_TIMEOUT_S + 3


@pytest.mark.parametrize(
    "where, variables, conf",
    [
        ("offline", {}, None),
        (
            "on an agent, whatever its configuration says",
            {"CLEARML_TASK_ID": "abc"},
            "sdk.development { report_use_subprocess: true, vcs_repo_detect_async: true }",
        ),
    ],
)
def test_every_process_reports_from_a_thread_and_detects_the_repository_in_task_inits(where, variables, conf, clearml_home, tmp_path):
    env = {**clearml_home, **variables}
    if conf:
        (tmp_path / "clearml.conf").write_text(conf, encoding="utf-8")
        env["CLEARML_CONFIG_FILE"] = str(tmp_path / "clearml.conf")
    script = (
        "import sys; sys.path.insert(0, '.'); from clearml_adapter.connection import prepare_clearml; print(prepare_clearml(False));"
        "from clearml.config import config; print(config.get('development.report_use_subprocess'), config.get('development.vcs_repo_detect_async'))"
    )
    assert run_script(env, "-c", script).stdout.split()[-3:] == [str(where == "offline"), "False", "False"]


def test_the_configuration_reference_is_current():
    """docs/configuration.md is written from the declarations: python -m pipelines.definition > docs/configuration.md."""
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == configuration_reference()


def test_the_configuration_reference_has_a_row_per_parameter_with_its_presets_steps_and_sweep():
    rows = {row.split(" | ")[0].strip("| `"): row.split(" | ")[1:] for row in configuration_reference().splitlines() if row.startswith("| `--")}
    assert list(rows) == [option_flag(name) for name in PARAMETERS]
    assert rows["--lora-rank"][:4] == ["`8`", "`8`", "train", "`--lora-ranks` (4,8,16,32)"]
    assert rows["--learning-rate"][:4] == ["`0.0003`", "`0.01`", "train", "`--learning-rates` (only when given)"]
    assert rows["--max-test-samples"][:4] == ["", "", "evaluate (`--max-samples`)", ""]
    assert rows["--export"][:4] == ["`false`", "`false`", "adds the export step", ""]
    assert rows["--seed"][4].startswith("ingest: seed of the validation split")  # the steps' help differ: each step's


def test_a_parameter_is_declared_alike_by_every_step_that_takes_it_and_only_the_train_step_declares_sweeps(monkeypatch):
    @dataclass(frozen=True)
    class Preprocess:
        max_length: int = setting(100, "tokens kept | cut", pipeline=True)
        seed: int = setting(1, "seed of the split", pipeline=True)

    @dataclass(frozen=True)
    class Train:
        lora_rank: int = setting(8, "rank", pipeline=True, sweep="4,8")
        seed: int = setting(1, "seed of the batches", pipeline=True)
        max_length: int = setting(100, "tokens kept | cut", pipeline=True)
        limit: int | None = setting(None, "rows scored", pipeline="max_rows", choices=(1, 2))
        own: float = setting(0.5, "not a parameter")

    declared_here = declared_parameters({"preprocess": Preprocess, "train": Train, None: RunOptions})
    assert declared_here == {
        "max_length": Parameter("max_length", int, 100, None, "tokens kept | cut", {"preprocess": "max_length", "train": "max_length"}, None),
        "seed": Parameter(
            "seed", int, 1, None, "preprocess: seed of the split; train: seed of the batches", {"preprocess": "seed", "train": "seed"}, None
        ),
        "lora_rank": Parameter("lora_rank", int, 8, None, "rank", {"train": "lora_rank"}, "4,8"),
        "max_rows": Parameter("max_rows", int, None, (1, 2), "rows scored", {"train": "limit"}, None),
        "export": Parameter("export", bool, False, None, PARAMETERS["export"].help, {}, None),
    }

    @dataclass(frozen=True)
    class Evaluate:
        lora_rank: int = setting(4, "rank", pipeline=True)

    @dataclass(frozen=True)
    class Export:
        max_input_length: int = setting(100, "tokens", pipeline=True, sweep="")

    with pytest.raises(TypeError, match=r"declare the pipeline parameter lora_rank with different types, defaults or choices"):
        declared_parameters({"train": Train, "evaluate": Evaluate})
    with pytest.raises(TypeError) as refused:
        declared_parameters({"export": Export})
    assert str(refused.value) == (
        "Export.max_input_length is sweepable: only a pipeline parameter of the train step (same name) can be, "
        "as a sweep sets it on trials of the train step."
    )
    monkeypatch.setattr(definition, "PARAMETERS", declared_here)
    monkeypatch.setattr(definition, "PRESETS", {"published": {}})
    assert "| `--max-length` | `100` | preprocess, train |  | tokens kept \\| cut |" in configuration_reference().splitlines()
