"""``python pipelines/run_hpo.py``'s own decisions, with ClearML's calls stood in for: the values it reads, its defaults,
its refusals, and on a server what it checks before its optimizer task exists and where it goes from there. The sweeps
themselves run in tests/test_hpo.py (locally), tests/test_server_options.py and tests/e2e (on the test server)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from forked import run_main

from components.errors import UserError
from components.settings import BASE_MODEL, CLEARML_PROJECT
from pipelines import run_hpo
from pipelines.queues import QueueUse
from pipelines.run_hpo import build_parser, parse_values, search_space
from pipelines.sweep import local as hpo_local
from pipelines.sweep import server as hpo_server


@pytest.mark.parametrize(
    "text, kind, values", [("4,8", int, [4, 8]), (" [4, 8] ", int, [4, 8]), ("[1e-4]", float, [1e-4]), ("[]", int, []), ("16,", int, [16])]
)
def test_values_are_read_as_typed_on_the_command_line_or_as_a_list_edited_in_the_ui(text, kind, values):
    assert parse_values(text, kind, "--lora-ranks") == values


def test_values_that_are_not_numbers_or_repeat_are_one_sentence_naming_the_option():
    with pytest.raises(UserError) as error:
        search_space(build_parser().parse_args(["--prompt-lengths", "10,twenty"]))
    assert str(error.value) == "--prompt-lengths expects comma-separated int values such as 4,8 or [4, 8]; got '10,twenty'."
    with pytest.raises(UserError) as error:
        parse_values("[4, 8, 4]", int, "--lora-ranks")
    assert str(error.value) == "--lora-ranks repeats a value: [4, 8, 4]."


def test_a_local_sweep_defaults_to_the_published_preset_in_runs_hpo_published(monkeypatch, tmp_path):
    swept = []
    monkeypatch.setattr(
        hpo_local, "run_local_sweep", lambda args, space, parameters, output_dir: swept.append((args.preset, space, parameters, output_dir))
    )
    monkeypatch.setattr(run_hpo, "PROJECT_ROOT", tmp_path)
    run_hpo.run_local(build_parser().parse_args(["--local", "--learning-rates", "1e-3"]))
    [(preset, space, parameters, output_dir)] = swept
    assert (preset, output_dir) == ("published", tmp_path / "runs" / "hpo-published")
    assert space == {"lora_rank": [4, 8, 16, 32], "prompt_length": [10, 20, 50], "learning_rate": [1e-3]}
    assert parameters["model"] == BASE_MODEL


@pytest.mark.parametrize("option", [["--template-task-id", "t"], ["--run-on", "services"]])
def test_server_only_sweep_options_are_refused_locally_in_one_sentence(option):
    with pytest.raises(UserError) as error:
        run_hpo.run_local(build_parser().parse_args(["--local", *option]))
    assert str(error.value) == f"{option[0]} applies to a sweep on a ClearML server; this one runs locally (--local, or no server configured)."


@pytest.mark.parametrize("option", [["--preset", "tiny"], ["--output-dir", "x"]])
def test_local_only_sweep_options_are_refused_on_a_server_in_one_sentence(option):
    with pytest.raises(UserError) as error:
        run_hpo.check_server_sweep(build_parser().parse_args(["--template-task-id", "t", *option]))
    assert str(error.value) == (
        f"{option[0]} applies to a local sweep; on a server every trial takes its settings from the template train task (--template-task-id)."
    )


class ServerCalls:
    """The ClearML-side calls of run_hpo's server path, recorded (and written to ``log``, one JSON line each, for a forked
    run to hand back); ``on_agent`` is what ``running_on_agent`` answers."""

    def __init__(self, monkeypatch, on_agent: bool = False, log: Path | None = None):
        self.calls = []

        def record(call: tuple) -> None:
            self.calls.append(call)
            if log is not None:
                with log.open("a", encoding="utf-8") as file:
                    file.write(json.dumps(call, default=repr) + "\n")

        self.record = record
        monkeypatch.setattr(run_hpo, "running_on_agent", lambda: on_agent)
        monkeypatch.setattr(run_hpo, "check_queues", lambda uses: record(("check_queues", list(uses))))
        monkeypatch.setattr(run_hpo, "check_repository", lambda allow_local: record(("check_repository", allow_local)))
        monkeypatch.setattr(run_hpo.tracking, "get_task", lambda task_id: record(("get_task", task_id)))
        monkeypatch.setattr(
            run_hpo, "enqueue_and_follow", lambda enqueue, task_id, queue, wait_s: record(("enqueue_and_follow", task_id, queue, wait_s)) or enqueue()
        )
        monkeypatch.setattr(
            hpo_server, "run_server_sweep", lambda task, args, space: record(("run_server_sweep", task.id, args.queue, space)) or {"swept": True}
        )

    def task(self, task_id: str) -> SimpleNamespace:
        """The optimizer task, its ``execute_remotely`` recorded."""
        return SimpleNamespace(id=task_id, execute_remotely=lambda **options: self.record(("execute_remotely", options)))


def test_a_server_sweep_checks_its_template_and_queues_and_with_run_on_the_repository_first(monkeypatch):
    calls = ServerCalls(monkeypatch).calls
    run_hpo.check_server_sweep(
        build_parser().parse_args(["--template-task-id", "t-1", "--queue", "a100", "--run-on", "svc", "--allow-local-repository"])
    )
    assert calls == [
        ("get_task", "t-1"),
        (
            "check_queues",
            [
                QueueUse("a100", "gpu", "--queue", "the trials and the winner's evaluation"),
                QueueUse("cpu", "cpu", "--cpu-queue", "the winner's register step"),
                QueueUse("svc", "services", "--run-on", "the sweep's optimizer"),
            ],
        ),
        ("check_repository", True),
    ]
    calls.clear()
    run_hpo.check_server_sweep(build_parser().parse_args(["--cpu-queue", "cpu2"]))  # here: no template named, no --run-on
    assert calls == [
        (
            "check_queues",
            [
                QueueUse("gpu", "gpu", "--queue", "the trials and the winner's evaluation"),
                QueueUse("cpu2", "cpu", "--cpu-queue", "the winner's register step"),
            ],
        )
    ]
    with pytest.raises(UserError, match="--lora-ranks expects"):  # the space, before anything on the server
        run_hpo.check_server_sweep(build_parser().parse_args(["--lora-ranks", "eight", "--template-task-id", "t-1"]))
    assert calls == [
        (
            "check_queues",
            [
                QueueUse("gpu", "gpu", "--queue", "the trials and the winner's evaluation"),
                QueueUse("cpu2", "cpu", "--cpu-queue", "the winner's register step"),
            ],
        )
    ]


def test_on_the_agent_a_sweep_enqueued_with_run_on_runs_there_without_its_queue_or_the_repository_checked(monkeypatch):
    server = ServerCalls(monkeypatch, on_agent=True)
    args = build_parser().parse_args(["--run-on", "svc", "--lora-ranks", "2"])
    run_hpo.check_server_sweep(args)
    assert server.calls == [
        (
            "check_queues",
            [
                QueueUse("gpu", "gpu", "--queue", "the trials and the winner's evaluation"),
                QueueUse("cpu", "cpu", "--cpu-queue", "the winner's register step"),
            ],
        )
    ]
    assert run_hpo.run_on_server(server.task("opt-1"), args) == {"swept": True}
    assert server.calls[-1] == ("run_server_sweep", "opt-1", "gpu", {"lora_rank": [2], "prompt_length": [10, 20, 50]})


def test_with_run_on_the_optimizer_task_is_enqueued_and_followed_and_without_it_sweeps_here(monkeypatch):
    server = ServerCalls(monkeypatch)
    enqueued = build_parser().parse_args(["--run-on", "svc", "--wait-for-start", "7"])
    assert run_hpo.run_on_server(server.task("opt-1"), enqueued) is None
    assert server.calls == [("enqueue_and_follow", "opt-1", "svc", 7.0), ("execute_remotely", {"queue_name": "svc", "exit_process": True})]
    here = build_parser().parse_args(["--prompt-lengths", "5", "--queue", "a100"])
    assert run_hpo.run_on_server(server.task("opt-2"), here) == {"swept": True}
    assert server.calls[-1] == ("run_server_sweep", "opt-2", "a100", {"lora_rank": [4, 8, 16, 32], "prompt_length": [5]})


def test_on_a_server_the_optimizer_task_is_made_in_the_project_after_the_checks(monkeypatch, clearml_home, tmp_path):
    """main's server path (in a fork: a failure ends its process): the options read as a task's arguments, checked, then
    the optimizer task made in --project."""
    log = tmp_path / "calls.jsonl"
    record = ServerCalls(monkeypatch, log=log).record
    monkeypatch.setattr(run_hpo, "prepare_clearml", lambda local: record(("prepare_clearml", local)) or False)
    monkeypatch.setattr(run_hpo.tracking, "parse_task_arguments", lambda parser, argv: record(("arguments", argv)) or parser.parse_args(argv))
    monkeypatch.setattr(
        run_hpo.tracking, "init_task", lambda name, task_type, project: record(("init_task", name, task_type, project)) or SimpleNamespace(id="opt-1")
    )
    for argv, project in ((["--project", "Sweeps", "--lora-ranks", "2"], "Sweeps"), ([], CLEARML_PROJECT)):
        log.unlink(missing_ok=True)
        completed = run_main(run_hpo.main, argv, clearml_home)
        assert completed.returncode == 0, completed.stderr[-3000:]
        calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        assert [call[0] for call in calls] == ["prepare_clearml", "arguments", "check_queues", "init_task", "run_server_sweep"]
        assert calls[:2] == [["prepare_clearml", False], ["arguments", argv]]
        assert calls[3:] == [
            ["init_task", "HPO lora_rank x prompt_length", "optimizer", project],
            ["run_server_sweep", "opt-1", "gpu", {"lora_rank": [2] if argv else [4, 8, 16, 32], "prompt_length": [10, 20, 50]}],
        ]
    log.unlink()
    helped = run_main(run_hpo.main, ["--help"], clearml_home)  # the options, and nothing asked of a server
    assert (helped.returncode, helped.stdout.split()[0], "--lora-ranks LORA_RANKS" in helped.stdout, log.exists()) == (0, "usage:", True, False)
