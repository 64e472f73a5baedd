"""The agent queues a launch will use: checked on the server before anything is created there.

A fresh ClearML server has one queue, ``default``. The pipeline's ``gpu``, ``cpu`` and
``services`` queues exist only once something creates them, such as the README's agent
commands (``clearml-agent daemon --queue NAME --create-queue ...``). A launch that enqueues
on a missing queue would fail half-way, with its controller task already on the server;
so every queue is looked up first, and a missing one is one sentence naming it and the
command that serves it. A queue that exists but has no agent listening is only a warning:
its tasks wait there until one starts (an autoscaler may be about to).

After a launch has enqueued its controller (or a sweep its optimizer), it follows that task
until an agent starts it, for ``--wait-for-start`` seconds: a task that fails before its code
runs (an agent that cannot build its environment, say) is one sentence with the reason and
exit status 1, not a launch that exits 0 while nothing runs.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from clearml_adapter.tracking import staying_after_enqueue
from components.errors import UserError

# What serves each kind of queue: the README's agent commands (tests/test_server_errors.py keeps them equal).
# The variable takes torch from the pip index; the agent's default looks on download.pytorch.org and fails on CPU machines.
AGENT_ENVIRONMENT = "CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE=none"
AGENT_OPTIONS = {"gpu": "--gpus 0", "cpu": "--cpu-only", "services": "--services-mode --cpu-only"}


class MissingQueue(UserError):
    pass


@dataclass(frozen=True)
class QueueUse:
    """A queue a command will enqueue on, what kind of agent serves it (a key of ``AGENT_OPTIONS``) and what runs there."""

    name: str
    kind: str
    option: str  # the command-line option that named it, e.g. --gpu-queue
    purpose: str  # what this command enqueues on it, e.g. "train, evaluate"

    @property
    def agent_command(self) -> str:
        return f"{AGENT_ENVIRONMENT} clearml-agent daemon --queue {self.name} --create-queue {AGENT_OPTIONS[self.kind]}"


def _listened(names: Iterable[str]) -> dict[str, bool]:
    """The server's queues of these names, each with whether a worker listens to it (``queues.get_all``, ``workers.get_all``)."""
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    ids = {queue.id: queue.name for name in names for queue in client.queues.get_all(name=f"^{re.escape(name)}$", only_fields=["id", "name"])}
    listened = {entry.id for worker in client.workers.get_all() for entry in worker.queues or []}
    return {name: queue_id in listened for queue_id, name in ids.items()}


def check_queues(uses: Iterable[QueueUse]) -> None:
    """Refuse a missing queue (one sentence), warn about a queue with no agent; nothing is created on the server."""
    uses = list({use.name: use for use in uses}.values())
    found = _listened(use.name for use in uses)
    missing = [use for use in uses if use.name not in found]
    if missing:
        queues = " nor ".join(f"{use.name!r} ({use.option}, for {use.purpose})" for use in missing)
        commands = ", ".join(f"`{use.agent_command}`" for use in missing)
        agents = "its agent" if len(missing) == 1 else "their agents"
        raise MissingQueue(f"The ClearML server has no queue {queues}; start {agents} with {commands}, or name existing queues with those options.")
    for use in uses:
        if not found[use.name]:
            print(
                f"warning: no agent is listening on queue {use.name!r} ({use.option}); its tasks wait there until one starts: `{use.agent_command}`.",
                file=sys.stderr,
                flush=True,
            )


# clearml-agent's status reasons while it prepares a task, before the task's own code runs
# (clearml_agent/commands/worker.py): the daemon's, then the environment build; "worker starting
# task execution" follows once the entry point starts.
PREPARING_REASONS = ("starting execution soon", "worker started execution")
STARTED_STATUSES = ("in_progress", "completed", "published", "closed")
FAILED_STATUSES = ("failed", "stopped")
WAIT_FOR_START_S = 60.0
FOLLOW_POLL_S = 1.0


class StartFailed(UserError):
    pass


def add_wait_for_start(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--wait-for-start",
        type=float,
        default=WAIT_FOR_START_S,
        metavar="SECONDS",
        help=f"after enqueuing {what}, follow it this long until an agent starts it; one that fails first "
        f"ends the command with its reason and exit status 1 (0: do not wait; default {WAIT_FOR_START_S:g})",
    )


def enqueue_and_follow(enqueue_and_leave: Callable[[], object], task_id: str, queue: str, wait_s: float) -> None:
    """Run ClearML's call that enqueues this process's own task and would end the process (``Task.execute_remotely``,
    ``PipelineController.start``), then follow that task."""
    with staying_after_enqueue():
        enqueue_and_leave()
    follow_start(task_id, queue, wait_s)


def follow_start(task_id: str, queue: str, wait_s: float) -> None:
    """Wait until an agent starts the task, it fails, or ``wait_s`` passed; say which (a failure is a StartFailed).
    With no agent listening on the queue (the launch warned of it) there is nothing to wait for."""
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    if not _listened([queue]).get(queue):
        print(f"Task {task_id} is queued on {queue!r}, where no agent listens; it starts when one does.", flush=True)
        return
    deadline = time.monotonic() + wait_s
    while True:
        task = client.tasks.get_by_id(task=task_id)
        status = str(task.status)  # an enum of the API's
        if status in FAILED_STATUSES:
            raise StartFailed(
                f"Task {task_id} {status} on queue {queue!r} before it started ({task.status_reason or 'no reason given'}); "
                f"its log ends: {last_log_error(client, task_id)}"
            )
        # The agent's name reaches the task with the agent's next status report, which can come after the task started.
        agent, ended = task.last_worker, time.monotonic() >= deadline
        if status in STARTED_STATUSES and task.status_reason not in PREPARING_REASONS and (agent or ended):
            print(f"Task {task_id} started{f' on agent {agent}' if agent else ''} (queue {queue!r}).", flush=True)
            return
        if ended:
            where = (
                f"is still queued on {queue!r} after {wait_s:.0f} s: no agent of that queue has taken it yet"
                if status == "queued"
                else f"is being prepared{f' by agent {agent}' if agent else ''} (queue {queue!r}) after {wait_s:.0f} s: "
                "its environment is being built"
            )
            print(f"Task {task_id} {where}; it continues there.", flush=True)
            return
        time.sleep(FOLLOW_POLL_S)


def last_log_error(client, task_id: str) -> str:
    """The task's last console line that reports an error (else its last line): what the agent said when it gave up."""
    events = sorted(client.events.get_task_log(task=task_id, navigate_earlier=True, batch_size=200).events, key=lambda e: e.get("timestamp", 0))
    lines = [line.strip() for event in events for line in str(event.get("msg", "")).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(empty)"])[-1]
