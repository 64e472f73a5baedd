"""``clearml_adapter.tracking`` called directly: a step's run and its ``result.json``, the one-line errors and the failed
task they leave, reading upstream tasks' artifacts (and each refusal), the reports, and models on a server."""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ASCII_LOCALE
from forked import run_main
from step_runs import make_task, task_record

from clearml_adapter import tracking
from components.errors import UserError
from tests.clearml_server.process import ServerProcess
from tests.e2e.server_api import ServerApi


def test_json_is_indented_utf_8_text_with_paths_as_strings():
    assert tracking.to_json({"путь": Path("/a/б"), "n": 1}) == '{\n  "путь": "/a/б",\n  "n": 1\n}\n'


def step_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--word", default="слово")
    parser.add_argument("--fail", choices=["user", "bug"])
    tracking.add_common_arguments(parser)
    return parser


def step_body(args, task) -> dict:
    if args.fail == "user":
        raise UserError("the setting --word is wrong")
    if args.fail == "bug":
        raise KeyError("missing")
    time.sleep(0.05)
    return {"word": args.word, "output_dir": str(args.output_dir), "task": task.name}


def run_test_step(argv: list[str], env: dict):
    return run_main(lambda arguments: tracking.run_step("a step", "custom", step_parser, step_body, arguments), argv, env)


def run_from_the_command_line(arguments: list[str]) -> None:
    """``run_step`` without ``argv``, as a step's ``main()`` is called: it reads ``sys.argv``."""
    sys.argv = ["steps/a_step.py", *arguments]
    tracking.run_step("a step", "custom", step_parser, step_body)


def assert_whole_milliseconds(result: dict) -> None:
    """The step's and ClearML's seconds are rounded to milliseconds (each test that reads a result checks it again: one
    rounding to 4 decimals in ten ends in a 0 and passes one reading)."""
    assert all(isinstance(value, float) and round(value, 3) == value for value in result["seconds"].values()), result["seconds"]


def test_a_step_runs_as_its_own_task_and_writes_its_result(clearml_home, tmp_path):
    """From the command line, into an output folder that does not exist yet, under ``ASCII_LOCALE`` (its result holds
    Russian text, written as UTF-8 whatever the locale)."""
    out = tmp_path / "new" / "out"
    started = time.perf_counter()
    completed = run_main(run_from_the_command_line, ["--word", "другое", "--local", "--output-dir", str(out)], {**clearml_home, **ASCII_LOCALE})
    elapsed = time.perf_counter() - started
    assert completed.returncode == 0, completed.stderr
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["outputs"] == {"word": "другое", "output_dir": str(out), "task": "a step"}
    assert (result["step"], result["offline"]) == ("a step", True) and result["task_id"].startswith("offline-")
    assert result["offline_session"] == str(Path(clearml_home["CLEARML_CACHE_DIR"]) / "offline" / result["task_id"]) + ".zip"
    assert Path(result["offline_session"]).is_file()
    seconds = result["seconds"]
    assert 0.05 <= seconds["step"] < elapsed and 0 < seconds["clearml"] < seconds["step"]
    assert_whole_milliseconds(result)
    record = task_record(result)
    assert (record["name"], record["type"], record["project_name"]) == ("a step", "custom", "ruT5 LoRA+Prompt")
    assert record["hyperparams"]["Args"]["word"]["value"] == "другое"


def test_without_an_output_folder_a_step_writes_to_a_new_temporary_one(clearml_home, tmp_path):
    listing = tmp_path / "result.json"

    def main(arguments):
        result = tracking.run_step("named", "custom", step_parser, step_body, arguments)
        listing.write_text(json.dumps(result), encoding="utf-8")

    assert run_main(main, ["--local"], {**clearml_home, "TMPDIR": str(tmp_path)}).returncode == 0
    result = json.loads(listing.read_text(encoding="utf-8"))
    assert_whole_milliseconds(result)
    output_dir = Path(result["outputs"]["output_dir"])
    assert output_dir.parent == tmp_path and output_dir.name.startswith("named-") and (output_dir / "result.json").is_file()


def test_help_is_printed_before_any_task(clearml_home):
    offline = Path(clearml_home["CLEARML_CACHE_DIR"], "offline")
    before = set(offline.glob("*"))
    completed = run_test_step(["--local", "--help"], clearml_home)
    assert completed.returncode == 0 and completed.stdout.startswith("usage: ") and "--output-dir OUTPUT_DIR" in completed.stdout
    assert set(offline.glob("*")) == before  # no offline session: no task


def test_on_a_server_local_runs_offline_and_a_failure_is_the_tasks_reason(clearml_home, tmp_path):
    with ServerProcess(tmp_path / "state") as server:  # not in this process: the test forks
        env = {**clearml_home, **server.environment()}
        api = ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
        local = run_test_step(["--local", "--output-dir", str(tmp_path / "local")], env)
        assert local.returncode == 0, local.stderr
        result = json.loads((tmp_path / "local" / "result.json").read_text(encoding="utf-8"))
        assert result["offline"] is True
        assert_whole_milliseconds(result)
        assert api.call("tasks.get_all", only_fields=["id"])["tasks"] == []
        failed = run_test_step(["--fail", "user", "--output-dir", str(tmp_path / "failed")], env)
        [task] = api.call("tasks.get_all", only_fields=["status", "status_reason", "status_message"])["tasks"]
    assert (failed.returncode, failed.stderr.splitlines()[-1]) == (1, "error: the setting --word is wrong")
    assert (task["status"], task["status_reason"], task["status_message"]) == ("failed", "the setting --word is wrong", "the setting --word is wrong")


@pytest.mark.parametrize(
    "fail, last_line, traceback",
    [("user", "error: the setting --word is wrong", False), ("bug", "error: KeyError: 'missing' (the traceback is above)", True)],
)
def test_an_error_is_one_line_exit_status_1_and_the_task_closed_failed(fail, last_line, traceback, clearml_home, tmp_path):
    offline = Path(clearml_home["CLEARML_CACHE_DIR"], "offline")
    before = set(offline.glob("offline-*.zip"))
    completed = run_test_step(["--local", "--fail", fail, "--output-dir", str(tmp_path / "out")], clearml_home)
    assert (completed.returncode, completed.stderr.splitlines()[-1]) == (1, last_line)
    assert ("Traceback (most recent call last)" in completed.stderr) is traceback
    assert not (tmp_path / "out" / "result.json").exists()
    assert len(set(offline.glob("offline-*.zip")) - before) == 1  # the failed task was closed: its session written


def test_an_error_before_any_task_ends_the_process_the_same_way(clearml_home):
    def main(_argv):
        with tracking.failures_end_the_process():
            raise UserError("no task yet")

    completed = run_main(main, [], clearml_home)
    assert (completed.returncode, completed.stderr) == (1, "error: no task yet\n")


class Exited(Exception):
    pass


@pytest.mark.parametrize("poll_period, wait", [(None, 6.0), ("", 6.0), ("2.5", 3.5)])
def test_on_an_agent_a_failed_step_outlives_one_poll_period_of_its_agent(poll_period, wait, monkeypatch):
    """So that clearml-agent, which checks the task once per ``CLEARML_AGENT_QUEUE_POLL_FREQ_SEC`` (5 s unset or empty),
    sees the failure and keeps its reason. The task and the exit are doubles here: a real run of this wait is
    end-to-end flow 6."""
    monkeypatch.delenv("TRAINS_TASK_ID", raising=False)  # the SDK's older name for it
    monkeypatch.setenv("CLEARML_TASK_ID", "a task the agent runs")
    if poll_period is None:
        monkeypatch.delenv("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC", raising=False)
    else:
        monkeypatch.setenv("CLEARML_AGENT_QUEUE_POLL_FREQ_SEC", poll_period)
    events = []
    monkeypatch.setattr(tracking, "_current_task", lambda: "the task")
    monkeypatch.setattr(tracking, "close_failed", lambda task, message: events.append(("closed", task, message)))
    monkeypatch.setattr(time, "sleep", lambda seconds: events.append(("slept", seconds)))

    def exit(status):
        events.append(("exit", status))
        raise Exited

    monkeypatch.setattr(tracking.os, "_exit", exit)
    with pytest.raises(Exited):
        tracking.exit_with_error("bad input")
    assert events == [("closed", "the task", "bad input"), ("slept", wait), ("exit", 1)]
    monkeypatch.delenv("CLEARML_TASK_ID")
    events.clear()
    with pytest.raises(Exited):
        tracking.exit_with_error("bad input")
    assert events == [("closed", "the task", "bad input"), ("exit", 1)]  # not on an agent: no wait


def test_an_unknown_task_or_artifact_is_named_in_one_sentence(clearml_home, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "file.txt").write_text("x", encoding="utf-8")
    task_id = make_task("upstream", {"b": folder, "a": folder}, clearml_home, tmp_path)
    empty_id = make_task("empty", {}, clearml_home, tmp_path)
    found = tmp_path / "found.json"

    def main(_argv):
        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(True)
        messages = {}
        for name, call in (
            ("unknown", lambda: tracking.get_task("offline-nope")),
            ("artifact", lambda: tracking.artifact_path(task_id, "c")),
            ("none", lambda: tracking.artifact_path(empty_id, "c")),
            ("neither", lambda: tracking.upstream_input(None, "a", None, ("--x-task-id", "--x-dir"), "a folder of x")),
        ):
            try:
                call()
            except tracking.StepInputError as error:
                messages[name] = str(error)
        messages["by id"] = str(tracking.upstream_input(task_id, "a", "/not/used", ("--x-task-id", "--x-dir"), "a folder"))
        messages["by path"] = str(tracking.upstream_input(None, "a", "some/dir", ("--x-task-id", "--x-dir"), "a folder"))
        found.write_text(json.dumps(messages), encoding="utf-8")

    assert run_main(main, [], clearml_home).returncode == 0
    messages = json.loads(found.read_text(encoding="utf-8"))
    assert messages.pop("by path") == "some/dir" and (Path(messages.pop("by id")) / "file.txt").read_text(encoding="utf-8") == "x"
    assert messages == {
        "unknown": "No ClearML task with id 'offline-nope' in the offline sessions of this machine; check the *-task-id argument.",
        "artifact": f"Task {task_id} (upstream) has no artifact 'c'; it has ['a', 'b'].",
        "none": f"Task {empty_id} (empty) has no artifact 'c'; it has none.",
        "neither": "Give --x-task-id (a ClearML task id) or --x-dir (a folder of x).",
    }


def test_an_artifact_object_is_its_json(clearml_home, tmp_path):
    """Uploaded by ``upload_json`` and read back by ``artifact_object`` under ``ASCII_LOCALE``: UTF-8 whatever the locale."""
    found = tmp_path / "found.json"

    def main(_argv):
        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(True)
        task = tracking.init_task("upstream", "custom")
        written = tracking.upload_json(task, "value", {"числа": [1, 2]}, tmp_path)
        task.close()
        found.write_text(json.dumps([written.read_bytes().decode("utf-8"), tracking.artifact_object(task.id, "value")]), encoding="utf-8")

    completed = run_main(main, [], {**clearml_home, **ASCII_LOCALE})
    assert completed.returncode == 0, completed.stderr
    assert json.loads(found.read_text(encoding="utf-8")) == [tracking.to_json({"числа": [1, 2]}), {"числа": [1, 2]}]


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_url_is_downloaded_and_a_path_is_used_as_it_is(clearml_home, tmp_path):
    """As the ingest step reads a TSV URL: offline (--local), with ClearML's StorageManager."""
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "train.tsv").write_text("a\tb\n", encoding="utf-8")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Files(*a, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base, found = f"http://127.0.0.1:{server.server_port}", tmp_path / "found.json"

    def main(_argv):
        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(True)
        copies = {"url": tracking.local_copy(f"{base}/train.tsv"), "path": tracking.local_copy("data/sample/train.tsv")}
        try:
            tracking.local_copy(f"{base}/missing.tsv")
        except tracking.StepInputError as error:
            copies["missing"] = str(error)
        found.write_text(json.dumps(copies), encoding="utf-8")

    try:
        completed = run_main(main, [], clearml_home)
    finally:
        server.shutdown()
        server.server_close()
    assert completed.returncode == 0, completed.stderr
    copies = json.loads(found.read_text(encoding="utf-8"))
    assert Path(copies["url"]).read_text(encoding="utf-8") == "a\tb\n" and copies["path"] == "data/sample/train.tsv"
    assert copies["missing"] == f"Cannot download {base}/missing.tsv; check the URL and the storage credentials in clearml.conf."


class RecordingLogger:
    """The ClearML Logger calls the reports make, recorded in order (any other call fails: no such attribute)."""

    def __init__(self):
        self.calls = []

    def report_single_value(self, name, value):
        self.calls.append(("single", name, value))

    def report_scalar(self, title, series, value, iteration):
        self.calls.append(("scalar", title, series, value, iteration))

    def report_table(self, title, series, iteration, table_plot):
        self.calls.append(("table", title, series, iteration, len(table_plot)))

    def flush(self, wait):
        self.calls.append(("flush", wait))


class RecordingTask:
    def __init__(self):
        self.logger, self.uploads = RecordingLogger(), []

    def get_logger(self):
        return self.logger

    def upload_artifact(self, name, artifact_object, wait_on_upload):
        self.uploads.append((name, artifact_object, wait_on_upload))

    def is_offline(self):
        return True


def test_metrics_are_single_values_and_test_series_with_the_base_beside_them():
    import pandas as pd

    task = RecordingTask()
    tracking.report_metrics(task, {"bleu": 0.5, "loss": 2.0}, pd.DataFrame({"a": [1, 2, 3]}), base_metrics={"bleu": 0.125})
    assert task.logger.calls == [
        ("single", "bleu", 0.5),
        ("scalar", "bleu", "test", 0.5, 0),
        ("single", "base bleu", 0.125),
        ("single", "bleu tuned - base", 0.375),
        ("scalar", "bleu", "base", 0.125, 0),
        ("single", "loss", 2.0),
        ("scalar", "loss", "test", 2.0, 0),
        ("table", "predictions", "samples", 0, 3),
    ]
    task = RecordingTask()
    tracking.report_metrics(task, {"bleu": 0.5}, pd.DataFrame({"a": [1]}))
    assert task.logger.calls == [("single", "bleu", 0.5), ("scalar", "bleu", "test", 0.5, 0), ("table", "predictions", "samples", 0, 1)]


def test_a_reporter_reports_scalars_and_flushing_waits(tmp_path):
    task = RecordingTask()
    report = tracking.reporter(task)
    report("loss", "train", 1.5, 7)
    tracking.flush_reports(task)
    assert task.logger.calls == [("scalar", "loss", "train", 1.5, 7), ("flush", True)]
    path = tracking.upload_json(task, "summary", {"ч": 1}, tmp_path)
    tracking.upload_path(task, "folder", tmp_path)
    assert path == tmp_path / "summary.json" and path.read_text(encoding="utf-8") == '{\n  "ч": 1\n}\n'
    assert task.uploads == [("summary", path, True), ("folder", tmp_path, True)]
    assert tracking.register_model(task, "m", tmp_path, tags=[], metadata={}) is None  # offline: no registry


def test_clearml_seconds_count_nested_calls_once(monkeypatch):
    monkeypatch.setattr(tracking._ClearMLClock, "seconds", 0.0)

    @tracking._ClearMLClock.measure
    def inner():
        time.sleep(0.05)

    @tracking._ClearMLClock.measure
    def outer():
        inner()
        time.sleep(0.05)

    outer()
    assert 0.1 <= tracking._ClearMLClock.seconds < 0.2 and tracking._ClearMLClock.depth == 0
    with pytest.raises(ZeroDivisionError):
        tracking._ClearMLClock.measure(lambda: 1 / 0)()
    assert tracking._ClearMLClock.depth == 0


def force_the_edit_lock_race(made_by: Path) -> None:
    """In this (forked) process, ClearML's threads first use a task's edit lock in the order that hung Task.init in a CI
    run, wherever a repository-detection thread runs beside Task.init's: that thread detects the repository once Task.init's
    thread is creating the lock, creates one of its own meanwhile, and waits for Task.init's thread to take its lock. The
    threads that created one are appended to ``made_by``."""
    import clearml.utilities.locks.utils as locks
    from clearml.backend_interface.task.repo import ScriptInfo

    main_creating, other_creating, main_took = threading.Event(), threading.Event(), threading.Event()
    create, acquire, detect = locks.RLock.__init__, locks.RLock.acquire, ScriptInfo.get
    in_main_thread = lambda: threading.current_thread() is threading.main_thread()  # noqa: E731

    def late_detect(*args, **kwargs):
        if not in_main_thread():
            main_creating.wait(10)
        return detect(*args, **kwargs)

    def interleaved_create(lock, filename, *args, **kwargs):
        create(lock, filename, *args, **kwargs)
        if not Path(filename).name.startswith("clearml_"):  # a cache's lock, not the task's edit lock
            return
        with made_by.open("a", encoding="utf-8") as record:
            record.write(threading.current_thread().name + "\n")
        if in_main_thread():
            main_creating.set()
            repository = [thread for thread in threading.enumerate() if thread.name.endswith("(_update_repository)")]
            while repository and repository[0].is_alive() and not other_creating.wait(0.05):
                pass
        else:
            other_creating.set()
            main_took.wait(10)

    def noted_acquire(lock, *args, **kwargs):
        taken = acquire(lock, *args, **kwargs)
        if in_main_thread():
            main_took.set()
        return taken

    ScriptInfo.get = late_detect
    locks.RLock.__init__, locks.RLock.acquire = interleaved_create, noted_acquire


@pytest.mark.parametrize("where", ["server", "--local"])
def test_a_steps_task_is_created_however_clearmls_threads_interleave(where, clearml_home, tmp_path):
    made_by = tmp_path / "edit-locks-made-by.txt"

    def main(argv):
        sys.argv = [__file__, *argv]  # a script in the repository, as a step's is: ClearML detects its repository
        force_the_edit_lock_race(made_by)
        tracking.run_step("a step", "custom", step_parser, step_body, argv)

    argv = ["--output-dir", str(tmp_path / "out"), *([where] if where == "--local" else [])]
    with ServerProcess(tmp_path / "state") as server:  # not in this process: the test forks
        completed = run_main(main, argv, {**clearml_home, **server.environment()}, timeout_s=60)
    assert completed.returncode == 0, completed.stderr
    assert json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))["offline"] is (where == "--local")
    assert made_by.read_text(encoding="utf-8") == "MainThread\n"  # one lock, made by Task.init's own thread


def test_a_step_that_reports_gets_the_answers_to_its_own_requests(clearml_home, tmp_path):
    """A step reports (scalars and log lines) while it asks the server for tasks, a few seconds long: every answer is
    its own, and Task.init has forked no process to report from (one shared the step's connections to the server and
    read its answers: a step's tasks.get_all got an answer without tasks, or none for minutes)."""

    def reporting_and_asking(args, task) -> dict:
        import psutil
        from clearml import Task

        children = [child.pid for child in psutil.Process().children()]
        answers, end = [], time.monotonic() + 5
        while time.monotonic() < end:
            for value in range(20):
                task.get_logger().report_scalar("loss", "train", value, iteration=len(answers) * 20 + value)
                print("строка", value)
            asked = time.monotonic()
            found = [found.id for found in Task.get_tasks(project_name=tracking.CLEARML_PROJECT, task_name="a step")]
            answers.append((found == [task.id], time.monotonic() - asked))
        return {
            "children": children,
            "answers": len(answers),
            "wrong": sum(not right for right, _ in answers),
            "slowest_s": max(seconds for _, seconds in answers),
        }

    with ServerProcess(tmp_path / "state") as server:  # not in this process: the test forks
        completed = run_main(
            lambda argv: tracking.run_step("a step", "custom", step_parser, reporting_and_asking, argv),
            ["--output-dir", str(tmp_path / "out")],
            {**clearml_home, **server.environment()},
        )
    assert completed.returncode == 0, completed.stderr
    outputs = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))["outputs"]
    assert (outputs["children"], outputs["wrong"]) == ([], 0) and outputs["answers"] >= 5
    assert outputs["slowest_s"] < 5  # 0.16 s measured; the SDK waits 300 s for an answer that went to another process


def test_on_a_server_a_model_is_registered_with_its_metadata_parent_and_publication(clearml_home, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"weights")
    found = tmp_path / "found.json"

    def main(_argv):
        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(False)
        task = tracking.init_task("register", "custom")
        parent = tracking.register_model(task, "родитель", folder, tags=["a"], metadata={"config": {"rank": 8}}, publish=False)
        child = tracking.register_model(
            task,
            "дитя",
            folder,
            tags=["b", "c"],
            metadata={"score": 0.5, "steps": 3, "name": "x", "config": {"rank": 4}},
            publish=True,
            parent_id=parent,
        )
        found.write_text(
            json.dumps({"task": task.id, "parent": parent, "child": child, "last": tracking.output_model_of(task.id).id}), encoding="utf-8"
        )
        task.close()

    with ServerProcess(tmp_path / "state") as server:  # not in this process: the test forks
        env = {**clearml_home, **server.environment()}
        completed = run_main(main, [], env)
        assert completed.returncode == 0, completed.stderr
        ids = json.loads(found.read_text(encoding="utf-8"))
        api = ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
        parent, child = (api.call("models.get_by_id", model=ids[name])["model"] for name in ("parent", "child"))
    assert ids["last"] == ids["child"]
    assert (parent["name"], parent["tags"], parent["ready"], parent.get("parent"), parent.get("metadata", {})) == ("родитель", ["a"], False, None, {})
    assert (child["name"], child["tags"], child["ready"], child["parent"], child["task"]) == ("дитя", ["b", "c"], True, ids["parent"], ids["task"])
    assert {key: (entry["value"], entry["type"]) for key, entry in child["metadata"].items()} == {
        "score": ("0.5", "float"),
        "steps": ("3", "int"),
        "name": ("x", "str"),
    }
    assert child["uri"].startswith(server.files_host) and "rank = 4" in child["design"]["design"]


def test_a_checkpoint_extraction_cut_short_leaves_no_folder_that_a_later_one_would_take(clearml_home, tmp_path):
    """A folder artifact fetched anew (``force_download``) is extracted into a scratch folder and renamed when complete:
    an extraction that fails half-way (a full disk, a kill) leaves no folder under the content's name, so the next fetch
    extracts it whole instead of taking the half."""
    import shutil

    source = tmp_path / "checkpoint"
    source.mkdir()
    for name in ("adapter.safetensors", "state.json"):
        (source / name).write_text(name, encoding="utf-8")
    archive = Path(shutil.make_archive(str(tmp_path / "checkpoint"), "zip", source))
    listed = tmp_path / "listed.json"

    def extract_twice(_argv) -> None:
        import zipfile

        from clearml_adapter.connection import prepare_clearml

        prepare_clearml(True)
        unpack = shutil.unpack_archive

        def first_file_then_disk_full(path, folder, kind):
            with zipfile.ZipFile(path) as opened:
                opened.extract(opened.namelist()[0], folder)
            raise OSError(28, "No space left on device")

        shutil.unpack_archive = first_file_then_disk_full
        try:
            tracking._extracted_by_content(archive)
        except OSError:
            pass
        shutil.unpack_archive = unpack
        folder = tracking._extracted_by_content(archive)
        listed.write_text(json.dumps(sorted(path.name for path in folder.iterdir())), encoding="utf-8")

    completed = run_main(extract_twice, [], clearml_home)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(listed.read_text(encoding="utf-8")) == ["adapter.safetensors", "state.json"]
