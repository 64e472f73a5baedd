"""End-to-end harness: a ClearML server (the test double, or a real one), a git remote
served by ``git daemon``, a clone of the project pushed to it, and real ``clearml-agent``
daemons, all started and stopped by the tests.

Every process is started in its own process group and killed (group and all) when the
test session ends, whether the tests passed or not. All state lives under pytest's
temporary directories.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.server_api import ServerApi
from tests.readme_commands import environment_and_argv

ROOT = Path(__file__).resolve().parents[2]
REMOTE_NAME = "project.git"
AGENT_POLL_S = "1"  # CLEARML_AGENT_QUEUE_POLL_FREQ_SEC: poll queues every second instead of 5
# A real server instead of the test double: set all of these (or none).
REAL_SERVER_VARIABLES = (
    "CLEARML_E2E_API_HOST",
    "CLEARML_E2E_API_ACCESS_KEY",
    "CLEARML_E2E_API_SECRET_KEY",
    "CLEARML_E2E_FILES_HOST",
    "CLEARML_E2E_WEB_HOST",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_git() -> None:
    """git and its daemon are needed to serve the repository the agents clone."""
    git = shutil.which("git")
    if git is None:
        raise RuntimeError("The end-to-end tests need git on PATH (apt-get install git); it was not found.")
    exec_path = subprocess.run([git, "--exec-path"], capture_output=True, text=True, check=True).stdout.strip()
    if not (Path(exec_path) / "git-daemon").exists():
        raise RuntimeError(f"The end-to-end tests serve the repository with `git daemon`, but {exec_path}/git-daemon is missing; install a full git.")


class Processes:
    """Background processes of a test session, each in its own process group."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        log = self.log_dir / f"{name}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._started.append((process, log))
        return process

    def log_of(self, process: subprocess.Popen) -> str:
        log = next(path for started, path in self._started if started is process)
        return log.read_text(errors="replace")

    def stop_all(self, grace_s: float = 5.0) -> None:
        for process, _ in reversed(self._started):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process, _ in reversed(self._started):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # children the agent left behind, too
            process.wait()
        self._started.clear()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def run_in_group(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
    """Run a command in its own process group and kill the whole group afterwards, so nothing
    it started (ClearML's reporting subprocess, say) outlives it, even on a timeout."""
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{what} did not end within {timeout_s:.0f} s:\n{(stdout + stderr)[-6000:]}") from None
    finally:
        _signal_group(process, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def git(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    completed = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}:\n{completed.stderr}")
    return completed.stdout.strip()


def git_env(home: Path) -> dict[str, str]:
    """git with no user or system configuration, and an identity for commits."""
    return {
        **os.environ,
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "e2e",
        "GIT_AUTHOR_EMAIL": "e2e@example.invalid",
        "GIT_COMMITTER_NAME": "e2e",
        "GIT_COMMITTER_EMAIL": "e2e@example.invalid",
    }


@dataclass
class GitRemote:
    """A bare repository served at ``url`` and a clone of the project whose origin it is."""

    url: str
    bare: Path
    clone: Path
    env: dict[str, str]

    def commit_and_push(self, message: str) -> str:
        """Commit every change in the clone and push it; returns the new commit id."""
        git("add", "--all", cwd=self.clone, env=self.env)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.clone, env=self.env)
        git("push", "--quiet", "origin", "HEAD", cwd=self.clone, env=self.env)
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.clone, env=self.env)


def start_git_remote(processes: Processes, workdir: Path) -> GitRemote:
    """Serve a bare repository with ``git daemon`` and push the project to it: the current
    HEAD plus the working tree's uncommitted changes to tracked files (committed in the clone),
    so that a developer's local run tests the code as it is."""
    require_git()
    home = workdir / "git-home"
    home.mkdir(parents=True)
    env = git_env(home)
    base = workdir / "remote"
    bare = base / REMOTE_NAME
    git("init", "--quiet", "--bare", str(bare), cwd=workdir, env=env)
    git("config", "daemon.receivepack", "true", cwd=bare, env=env)
    port = free_port()
    processes.start(
        "git-daemon",
        [
            "git",
            "daemon",
            f"--base-path={base}",
            "--export-all",
            "--enable=receive-pack",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        env,
        workdir,
    )
    url = f"git://127.0.0.1:{port}/{REMOTE_NAME}"
    branch = git("rev-parse", "--abbrev-ref", "HEAD", cwd=ROOT, env=env)
    branch = "e2e" if branch == "HEAD" else branch
    git("push", "--quiet", "--no-verify", str(bare), f"HEAD:refs/heads/{branch}", cwd=ROOT, env=env)
    git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=bare, env=env)
    clone = workdir / "clone"
    _wait_for_port(port, "git daemon")
    git("clone", "--quiet", url, str(clone), cwd=workdir, env=env)
    diff = subprocess.run(["git", "diff", "HEAD", "--binary"], cwd=ROOT, env=env, capture_output=True, check=True).stdout
    remote = GitRemote(url=url, bare=bare, clone=clone, env=env)
    if diff:
        subprocess.run(["git", "apply", "--index", "-"], cwd=clone, env=env, input=diff, check=True, capture_output=True)
        remote.commit_and_push("e2e: uncommitted changes of the working tree")
    return remote


def _wait_for_port(port: int, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


@dataclass
class ServerTarget:
    """The ClearML server the tests run against: its environment and an API client.
    ``state_dir`` is set only for the test double (its saved state and call log)."""

    env: dict[str, str]
    api: ServerApi
    state_dir: Path | None = None
    agents: dict[str, subprocess.Popen] = field(default_factory=dict)


def real_server_from_environment() -> ServerTarget | None:
    """A real server when ``CLEARML_E2E_API_HOST`` is set (with its keys and hosts)."""
    if not os.environ.get("CLEARML_E2E_API_HOST"):
        return None
    missing = [name for name in REAL_SERVER_VARIABLES if not os.environ.get(name)]
    if missing:
        raise RuntimeError(f"CLEARML_E2E_API_HOST is set but {', '.join(missing)} is not; set all of {', '.join(REAL_SERVER_VARIABLES)}.")
    env = {name.replace("CLEARML_E2E_", "CLEARML_"): os.environ[name] for name in REAL_SERVER_VARIABLES}
    api = ServerApi(env["CLEARML_API_HOST"], env["CLEARML_API_ACCESS_KEY"], env["CLEARML_API_SECRET_KEY"])
    return ServerTarget(env=env, api=api)


def client_environment(server: ServerTarget, home: Path) -> dict[str, str]:
    """What a user's shell has: the server's variables and a clean HOME (and TMPDIR under it), no other ClearML setting:
    the SDK's default configuration (``TEST_ONLY_SETTINGS`` says why each setting differs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLEARML_", "TRAINS_"))}
    env.update(server.env)
    tmp = home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), PYTHONUNBUFFERED="1", TMPDIR=str(tmp))
    return env


# Everything the harness sets in a user's shell or an agent's environment that the README does not tell a user to
# set (the README's server variables and agent-command variables are a user's too), with the reason.
# tests/test_harness_settings.py fails on a setting that is missing here, or listed here and no longer set.
TEST_ONLY_SETTINGS = {
    "HOME": "a new user: a fresh HOME per shell and per agent, so nothing of this machine's ~/clearml.conf, caches or git identity is read",
    "TMPDIR": "temporary files inside the test session's folder, removed with it",
    "PYTHONUNBUFFERED": "a command's output reaches its log in the order it was printed (for failure messages)",
    "CLEARML_AGENT_QUEUE_POLL_FREQ_SEC": "agents poll their queues every second instead of every 5 s",
    "CLEARML_WORKER_ID": "each agent's worker id names its queue, so a test can tell which agent ran a task",
    "GIT_CONFIG_NOSYSTEM": "git in the agents reads no system configuration of this machine",
    "CLEARML_AGENT_SKIP_PIP_VENV_INSTALL": "all agents but the gpu-venv one run tasks with this Python instead of "
    "building a virtualenv per task (minutes each); the gpu-venv agent builds them",
    "CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL": "the same: no Python environment set up per task on those agents",
    "CLEARML_AGENT__AGENT__PACKAGE_MANAGER__PIP_LEGACY_RESOLVER": "the gpu-venv agent uses pip's current resolver: the "
    "legacy one, which the agent turns on for pip < 24.3, drops torch==2.13.0 for this machine's pip constraint "
    "torch<=2.14.1 (/etc/xdg/pip) and downloads a CUDA build",
    "CLEARML_AGENT__AGENT__VENVS_CACHE__PATH": "the gpu-venv agent keeps its virtualenv cache between test sessions "
    "(AGENT_CACHE), as an agent machine keeps ~/.clearml/venvs-cache",
    "PIP_CACHE_DIR": "the gpu-venv agent's pip cache, kept in AGENT_CACHE for the same reason",
}


# What the agent that builds virtualenvs keeps between test sessions (as a user's agent machine keeps
# its ~/.clearml/venvs-cache and pip cache): the first build of a requirements set takes minutes.
AGENT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rut5-peft" / "e2e-agent"


def agent_environment(server: ServerTarget, home: Path, worker_id: str, builds_venv: bool) -> dict[str, str]:
    """The environment of an agent started with a README command (whose own variables are added to it): the server's
    variables, a HOME of its own (its work folders, ``~/.clearml/vcs-cache``, ``venvs-builds``, ... go there), and

    * ``builds_venv``: the agent's default environment build, a virtualenv per task with the
      task's requirements installed by pip, as a user's agent does; pip's current resolver instead
      of the legacy one the agent turns on for pip < 24.3 (see ``TEST_ONLY_SETTINGS``). Its venv and
      pip caches live in ``AGENT_CACHE``.
    * otherwise the current Python instead of a venv per task
      (``CLEARML_AGENT_SKIP_PIP_VENV_INSTALL``, ``CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL``): the
      agent runs the task's entry point with this interpreter from a clone of the task's
      repository at its recorded commit, with its recorded diff. The flows that test what the
      steps do, not how their environment is built, save a venv per task that way.
    """
    env = client_environment(server, home)
    env.update(CLEARML_AGENT_QUEUE_POLL_FREQ_SEC=AGENT_POLL_S, CLEARML_WORKER_ID=worker_id, GIT_CONFIG_NOSYSTEM="1")
    if builds_venv:
        env.update(
            CLEARML_AGENT__AGENT__PACKAGE_MANAGER__PIP_LEGACY_RESOLVER="[]",
            CLEARML_AGENT__AGENT__VENVS_CACHE__PATH=str(AGENT_CACHE / "venvs-cache"),
            PIP_CACHE_DIR=str(AGENT_CACHE / "pip"),
        )
    else:
        env.update(CLEARML_AGENT_SKIP_PIP_VENV_INSTALL=sys.executable, CLEARML_AGENT_SKIP_PYTHON_ENV_INSTALL="1")
    return env


def agent_executable() -> str:
    """The ``clearml-agent`` script of this Python environment (requirements.txt installs it)."""
    script = Path(sys.executable).parent / "clearml-agent"
    found = str(script) if script.exists() else shutil.which("clearml-agent")
    if found is None:
        raise RuntimeError("clearml-agent is not installed in this environment; run `make install` (requirements.txt pins it).")
    return found


def queue_of(agent_command: str) -> str:
    _, argv = environment_and_argv(agent_command)
    return argv[argv.index("--queue") + 1]


class Agents:
    """clearml-agent daemons started with the README's command lines, one per queue."""

    def __init__(self, processes: Processes, server: ServerTarget, workdir: Path):
        self._processes, self._server, self._workdir = processes, server, workdir

    def start(self, command: str, builds_venv: bool = False, name: str | None = None, extra_env: dict[str, str] | None = None) -> None:
        """Run ``command`` (a README line, ``clearml-agent daemon --queue NAME ...``) and wait until
        its worker listens on the queue, which the command itself creates on a fresh server.

        An agent is known by its queue, or by ``name`` for a further agent of a queue (its worker id
        is ``e2e-<name>``); ``extra_env`` is what the README asks such agents' environment to hold."""
        queue = queue_of(command)
        name = name or queue
        if name in self._server.agents:
            return
        home = self._workdir / f"agent-{name}"
        home.mkdir(parents=True)
        command_env, argv = environment_and_argv(command)
        assert argv[0] == "clearml-agent", command
        env = {**agent_environment(self._server, home, f"e2e-{name}", builds_venv), **command_env, **(extra_env or {})}
        self._server.agents[name] = self._processes.start(f"agent-{name}", [agent_executable(), *argv[1:]], env, home)
        self._wait_for_worker(name, queue)

    def _wait_for_worker(self, name: str, queue: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(
            w["id"] == f"e2e-{name}" and any(q["name"] == queue for q in w.get("queues") or [])
            for w in self._server.api.call("workers.get_all")["workers"]
        ):
            process = self._server.agents[name]
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the agent {name!r} of queue {queue!r} is not listening (exit status {process.poll()}):\n{self.log(name)}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        """The daemon's own output (what it polled, pulled and ran). Without ``--foreground`` the
        agent writes it to a file whose name it prints first."""
        printed = self._processes.log_of(self._server.agents[name])
        named = re.search(r"writing stdout/stderr to (\S+)", printed)
        if named and Path(named.group(1)).exists():
            printed += Path(named.group(1)).read_text(errors="replace")
        return f"clearml-agent daemon {name}:\n" + printed


@dataclass
class ProjectRunner:
    """Runs the README's commands from the pushed clone, as a user's shell pointed at the server."""

    clone: Path
    env: dict[str, str]

    def run(self, command: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """``command`` as written in the README (``python ...``), run with this Python."""
        argv = shlex.split(command)
        if argv[0] == "python":
            argv[0] = sys.executable
        completed = run_in_group(argv, self.clone, self.env, timeout_s, what=f"`{command}`")
        if check and completed.returncode != 0:
            raise AssertionError(f"`{command}` exited {completed.returncode}:\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
        return completed

    @staticmethod
    def created_task_ids(output: str) -> list[str]:
        """Ids of the tasks a command created, from the SDK's "created new task id=" lines."""
        return re.findall(r"ClearML Task: created new task id=([0-9a-f]{32})", output)

    def python(self, code: str, timeout_s: float = 120) -> str:
        """Run Python code (e.g. SDK calls, as a user's script would) and return its stdout."""
        completed = run_in_group([sys.executable, "-c", code], self.clone, self.env, timeout_s, what="an SDK script")
        if completed.returncode != 0:
            raise AssertionError(f"SDK script exited {completed.returncode}:\n{code}\n{completed.stderr[-3000:]}")
        return completed.stdout
