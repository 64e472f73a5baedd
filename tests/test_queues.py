"""``pipelines.queues`` in this process against the test server: which queues a launch finds, refuses or warns about,
and what following an enqueued task says for each state an agent leaves it in. The launches that call them, as a user
runs them: test_server_errors.py."""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable

import clearml.task
import pytest
from clearml.backend_api.session.client import APIClient

from pipelines import queues
from pipelines.queues import MissingQueue, QueueUse, StartFailed
from tests.clearml_server import ClearMLTestServer
from tests.e2e.server_api import ServerApi

GPU = QueueUse("gpu", "gpu", "--gpu-queue", "train, evaluate")
CPU = QueueUse("cpu", "cpu", "--cpu-queue", "ingest, preprocess")
AGENT = "CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE=none clearml-agent daemon --queue"


@pytest.fixture
def api(unconfigured_sdk, tmp_path, monkeypatch) -> ServerApi:
    """A fresh test server (only the ``default`` queue) that the SDK in this process talks to, as a new user's would."""
    with ClearMLTestServer(tmp_path / "state") as server:
        for name, value in server.environment().items():
            monkeypatch.setenv(name, value)
        yield ServerApi(os.environ["CLEARML_API_HOST"], os.environ["CLEARML_API_ACCESS_KEY"], os.environ["CLEARML_API_SECRET_KEY"])


def test_a_missing_queue_is_one_sentence_with_the_command_that_serves_it(api):
    with pytest.raises(MissingQueue) as refused:
        queues.check_queues([GPU, QueueUse("default", "cpu", "--cpu-queue", "ingest")])
    assert str(refused.value) == (
        "The ClearML server has no queue 'gpu' (--gpu-queue, for train, evaluate); start its agent with "
        f"`{AGENT} gpu --create-queue --gpus 0`, or name existing queues with those options."
    )


def test_missing_queues_are_named_together_each_once(api):
    services = QueueUse("services", "services", "--controller-queue", "the controller")
    with pytest.raises(MissingQueue) as refused:
        queues.check_queues([GPU, CPU, QueueUse("gpu", "gpu", "--gpu-queue", "train"), services])
    assert str(refused.value) == (
        "The ClearML server has no queue 'gpu' (--gpu-queue, for train) nor 'cpu' (--cpu-queue, for ingest, preprocess) nor "
        "'services' (--controller-queue, for the controller); start their agents with "
        f"`{AGENT} gpu --create-queue --gpus 0`, `{AGENT} cpu --create-queue --cpu-only`, "
        f"`{AGENT} services --create-queue --services-mode --cpu-only`, or name existing queues with those options."
    )


@pytest.mark.parametrize("existing", ["gpu-large", "my-gpu", "g.u"])
def test_a_queue_is_found_by_its_whole_name_only(api, existing):
    api.queue_id(existing, create=True)
    with pytest.raises(MissingQueue, match="^The ClearML server has no queue 'gpu' "):
        queues.check_queues([GPU] if existing != "g.u" else [QueueUse("g.u", "gpu", "--gpu-queue", "train"), GPU])


def test_a_queue_without_an_agent_is_a_warning_and_one_with_an_agent_is_silent(api, capsys):
    for name in ("gpu", "cpu"):
        api.queue_id(name, create=True)
    api.call("workers.register", worker="gpu-box:0", queues=[api.queue_id("gpu")])
    queues.check_queues([GPU, CPU])
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        "warning: no agent is listening on queue 'cpu' (--cpu-queue); its tasks wait there until one "
        f"starts: `{AGENT} cpu --create-queue --cpu-only`.\n",
    )


@pytest.fixture
def queued(api) -> str:
    """A task enqueued on ``gpu``, where agent ``gpu-box:0`` listens."""
    queue = api.queue_id("gpu", create=True)
    api.call("workers.register", worker="gpu-box:0", queues=[queue])
    task_id = api.call("tasks.create", name="train", type="training")["id"]
    api.call("tasks.enqueue", task=task_id, queue=queue)
    return task_id


def reported(api: ServerApi, task_id: str) -> None:
    """Agent ``gpu-box:0``'s status report naming the task as its current one (which writes ``last_worker`` on it)."""
    api.call("workers.status_report", worker="gpu-box:0", timestamp=int(time.time() * 1000), task=task_id)


def taken(api: ServerApi, task_id: str, reason: str) -> None:
    """What the agent does when it takes the task: reports it as its task, marks it started with its reason."""
    reported(api, task_id)
    api.call("tasks.started", task=task_id, status_reason=reason, force=True)


def followed_while(meanwhile: Callable[[], object], task_id: str, capsys) -> str:
    """What ``follow_start`` (60 s at most) prints while ``meanwhile`` runs 1.5 s after it began, as an agent acts."""
    timer = threading.Timer(1.5, meanwhile)
    timer.start()
    try:
        queues.follow_start(task_id, "gpu", 60)
    finally:
        timer.join()
    return capsys.readouterr().out


def log(api: ServerApi, task_id: str, *lines: str) -> None:
    if not lines:
        return
    stamp = int(time.time() * 1000)
    api.call_batch(
        "events.add_batch",
        [{"task": task_id, "type": "log", "timestamp": stamp - len(lines) + n, "level": "info", "msg": line} for n, line in enumerate(lines)],
    )


def test_following_a_task_says_where_it_is_when_the_wait_ends(api, queued, capsys):
    queues.follow_start(queued, "gpu", 0)
    assert capsys.readouterr().out == (
        f"Task {queued} is still queued on 'gpu' after 0 s: no agent of that queue has taken it yet; it continues there.\n"
    )
    for reason in queues.PREPARING_REASONS:
        taken(api, queued, reason)
        queues.follow_start(queued, "gpu", 0.4)
        assert capsys.readouterr().out == (
            f"Task {queued} is being prepared by agent gpu-box:0 (queue 'gpu') after 0 s: its environment is being built; it continues there.\n"
        )
    taken(api, queued, "worker starting task execution")
    queues.follow_start(queued, "gpu", 60)
    assert capsys.readouterr().out == f"Task {queued} started on agent gpu-box:0 (queue 'gpu').\n"


def test_following_waits_until_the_agent_starts_the_task(api, queued, capsys):
    started = time.monotonic()
    said = followed_while(lambda: taken(api, queued, "worker starting task execution"), queued, capsys)
    assert said == f"Task {queued} started on agent gpu-box:0 (queue 'gpu').\n"
    assert 1.5 <= time.monotonic() - started < 10


def test_a_task_started_before_its_agent_reported_it_is_followed_until_the_agent_is_known(api, queued, capsys):
    """The task's own process marks it started; the agent's status report, which names it on the task, can come later."""
    api.call("tasks.started", task=queued, status_reason="worker starting task execution", force=True)
    queues.follow_start(queued, "gpu", 0.4)  # no report within the wait: the agent is not named
    assert capsys.readouterr().out == f"Task {queued} started (queue 'gpu').\n"
    api.call("tasks.started", task=queued, status_reason="worker started execution", force=True)
    queues.follow_start(queued, "gpu", 0.4)
    assert capsys.readouterr().out == (
        f"Task {queued} is being prepared (queue 'gpu') after 0 s: its environment is being built; it continues there.\n"
    )
    api.call("tasks.started", task=queued, status_reason="worker starting task execution", force=True)
    assert followed_while(lambda: reported(api, queued), queued, capsys) == f"Task {queued} started on agent gpu-box:0 (queue 'gpu').\n"


def test_a_queue_no_agent_listens_on_is_not_waited_for(api, capsys):
    queue = api.queue_id("gpu", create=True)
    task_id = api.call("tasks.create", name="train", type="training")["id"]
    api.call("tasks.enqueue", task=task_id, queue=queue)
    queues.follow_start(task_id, "gpu", 60)
    assert capsys.readouterr().out == f"Task {task_id} is queued on 'gpu', where no agent listens; it starts when one does.\n"


@pytest.mark.parametrize("status", ["failed", "stopped"])
@pytest.mark.parametrize(
    "lines, reason, said",
    [
        (
            ["Collecting torch", "ERROR: no wheel for torch", "pip exit code 1", "  "],
            "worker execution exit code 1",
            "(worker execution exit code 1); its log ends: ERROR: no wheel for torch",
        ),
        (
            ["Collecting torch", "An Error in the last line\nand one more line", "done"],
            "",
            "(no reason given); its log ends: An Error in the last line",
        ),
        (["Collecting torch", "Killed  "], "", "(no reason given); its log ends: Killed"),
        ([], "aborted", "(aborted); its log ends: (empty)"),
    ],
)
def test_a_task_that_ends_before_it_starts_is_one_sentence_with_its_reason_and_last_error(api, queued, status, lines, reason, said):
    taken(api, queued, "worker started execution")
    log(api, queued, *lines)
    api.call(f"tasks.{status}", task=queued, status_reason=reason, force=True)
    with pytest.raises(StartFailed) as refused:
        queues.follow_start(queued, "gpu", 60)
    assert str(refused.value) == f"Task {queued} {status} on queue 'gpu' before it started {said}"


def test_the_error_is_the_last_one_of_the_log_however_long(api, queued):
    """The agent's reason is at the end of the log: its last lines are read (clearml-agent's setup logs hundreds)."""
    taken(api, queued, "worker started execution")
    lines = [f"line {n}" for n in range(300)]
    lines[50], lines[250] = "ERROR: an early one", "ERROR: the one it gave up on"
    log(api, queued, *lines)
    assert queues.last_log_error(APIClient(), queued) == "ERROR: the one it gave up on"


def test_the_log_is_read_in_time_order(api, queued):
    taken(api, queued, "worker started execution")
    now = int(time.time() * 1000)
    api.call_batch(
        "events.add_batch",
        [
            {"task": queued, "type": "log", "timestamp": now, "level": "info", "msg": "error: the last"},
            {"task": queued, "type": "log", "timestamp": now - 5000, "level": "info", "msg": "error: the first"},
        ],
    )
    assert queues.last_log_error(APIClient(), queued) == "error: the last"


def test_enqueue_and_follow_runs_the_enqueue_that_would_end_the_process_then_follows(api, queued, capsys):
    taken(api, queued, "worker starting task execution")
    queues.enqueue_and_follow(lambda: print("enqueued") or clearml.task.leave_process(0), queued, "gpu", 60)  # as execute_remotely ends
    assert capsys.readouterr().out == f"enqueued\nTask {queued} started on agent gpu-box:0 (queue 'gpu').\n"


def test_the_wait_option_is_seconds_with_its_default_shown():
    parser = argparse.ArgumentParser()
    queues.add_wait_for_start(parser, "the controller")
    assert parser.parse_args([]).wait_for_start == queues.WAIT_FOR_START_S == 60
    assert parser.parse_args(["--wait-for-start", "2.5"]).wait_for_start == 2.5
    assert " ".join(parser.format_help().split()).endswith(
        "--wait-for-start SECONDS after enqueuing the controller, follow it this long until an agent starts it; one that fails "
        "first ends the command with its reason and exit status 1 (0: do not wait; default 60)"
    )
