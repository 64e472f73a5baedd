"""The agent queues a launch will use: checked on the server before anything is created there.

A fresh ClearML server has one queue, ``default``. The pipeline's ``gpu``, ``cpu`` and
``services`` queues exist only once something creates them, such as the README's agent
commands (``clearml-agent daemon --queue NAME --create-queue ...``). A launch that enqueues
on a missing queue would fail half-way, with its controller task already on the server;
so every queue is looked up first, and a missing one is one sentence naming it and the
command that serves it. A queue that exists but has no agent listening is only a warning:
its tasks wait there until one starts (an autoscaler may be about to).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from components.errors import UserError

# What serves each kind of queue: the README's agent commands (tests/test_server_errors.py keeps them equal).
AGENT_OPTIONS = {
    "gpu": "--gpus 0",
    "cpu": "--cpu-only",
    "services": "--services-mode --cpu-only",
}


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
        return f"clearml-agent daemon --queue {self.name} --create-queue {AGENT_OPTIONS[self.kind]}"


def _listened(names: Iterable[str]) -> dict[str, bool]:
    """The server's queues of these names, each with whether a worker listens to it (``queues.get_all``, ``workers.get_all``)."""
    from clearml.backend_api.session.client import APIClient

    client = APIClient()
    ids = {queue.id: queue.name
           for name in names for queue in client.queues.get_all(name=f"^{re.escape(name)}$", only_fields=["id", "name"])}
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
        raise MissingQueue(f"The ClearML server has no queue {queues}; start {agents} with {commands}, "
                           "or name existing queues with those options.")
    for use in uses:
        if not found[use.name]:
            print(f"warning: no agent is listening on queue {use.name!r} ({use.option}); its tasks wait there until one starts: "
                  f"`{use.agent_command}`.", file=sys.stderr, flush=True)
