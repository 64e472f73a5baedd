"""A new user's first pipeline on a server: agents that build their own virtualenvs, from empty caches.

    python benchmarks/first_run_on_agents.py [--work-dir DIR]

Starts the ClearML test server (tests/clearml_server: only the ``default`` queue), a git remote
the project is pushed to, and the README's three agent commands, verbatim, each agent with a
fresh HOME and empty virtualenv and pip caches (on separate machines each builds its own
virtualenv once); then runs the README's first launch (``--preset tiny``) and waits for the
controller to complete. Prints the launch's and the run's wall time and, for each task, how long it
waited from its creation until an agent took it, and how long it ran from then on (its environment
build included: clearml-agent marks a task started before it builds the virtualenv). The agents run with the
e2e harness's environment (``tests/e2e/harness.py``, ``TEST_ONLY_SETTINGS``: this machine's pip
constraint needs pip's current resolver), the launching shell with the SDK's default configuration.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.clearml_server import ClearMLTestServer  # noqa: E402
from tests.e2e.harness import Agents, Processes, ProjectRunner, ServerTarget, start_git_remote  # noqa: E402
from tests.e2e.server_api import ServerApi  # noqa: E402
from tests.readme_commands import agent_commands, the_command  # noqa: E402

RUN_TIMEOUT_S = 3600


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not (start and end):
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", help="server state, agents' homes and caches (default: a new temporary folder)")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="first-run-")).resolve()
    (work / "logs").mkdir(parents=True)
    server = ClearMLTestServer(work / "server").start()
    processes = Processes(work / "logs")
    try:
        env = server.environment()
        target = ServerTarget(env=env, api=ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"]))
        clone = start_git_remote(processes, work / "git").clone
        agents = Agents(processes, target, work)
        for queue, command in agent_commands().items():
            if queue == "multinode":
                continue
            caches = work / f"caches-{queue}"
            agents.start(
                command,
                builds_venv=True,
                extra_env={"CLEARML_AGENT__AGENT__VENVS_CACHE__PATH": str(caches / "venvs"), "PIP_CACHE_DIR": str(caches / "pip")},
            )
        home = work / "user-home"
        (home / "tmp").mkdir(parents=True)
        shell = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))},
            **env,
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
        }
        launch = the_command("python pipelines/run_pipeline.py", "--preset tiny")
        started = time.monotonic()
        ran = ProjectRunner(clone, shell).run(launch, timeout_s=RUN_TIMEOUT_S)
        launch_s = time.monotonic() - started
        [controller_id] = ProjectRunner.created_task_ids(ran.stdout + ran.stderr)
        target.api.wait_for_status(controller_id, ("completed",), timeout_s=RUN_TIMEOUT_S, diagnostics=lambda: agents.log("services"))
        run_s = time.monotonic() - started
        tasks = {}
        for task in target.api.tasks(order_by=["created"]):
            if "template" in (task.get("tags") or []):
                continue
            tasks[task["name"]] = {
                "waited_s": seconds_between(task.get("created"), task.get("started")),
                "ran_s": seconds_between(task.get("started"), task.get("completed")),
                "status": task["status"],
            }
    finally:
        processes.stop_all()
        server.stop()
    result = {
        "benchmark": "first_run_on_agents.py",
        "launch_s": round(launch_s, 1),
        "run_s": round(run_s, 1),
        "tasks": tasks,
        "device": f"CPU ({os.uname().machine}, {os.cpu_count()} cores)",
        "work_dir": str(work),
    }
    print(f"launch {launch_s:.0f} s; the run, launch to controller completed: {run_s:.0f} s")
    for name, timing in tasks.items():
        print(f"  {name:<40} waited {timing['waited_s']} s for its agent, ran {timing['ran_s']} s ({timing['status']})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
