"""What is checked on the launching machine before anything reaches a server or an agent."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from pathlib import Path

import certifi
import pytest
from conftest import run_script

from clearml_adapter import connection as clearml_connection
from clearml_adapter.connection import ServerMisconfigured, ServerUnreachable, prepare_clearml
from pipelines.repository import RepositoryNotReady, check_repository, is_local_path_remote, repository_path
from pipelines.sweep.server import TrialRecord, best_trial


@pytest.fixture
def decisions(unconfigured_sdk, monkeypatch):
    """A machine with no ClearML configuration (``unconfigured_sdk``); records what prepare_clearml does instead of doing it."""
    done = []
    monkeypatch.setattr(clearml_connection, "enter_offline_mode", lambda: done.append("offline"))
    monkeypatch.setattr(clearml_connection, "check_server_reachable", lambda config=None: done.append("ping"))
    return done


CREDENTIALS = 'api { api_server: "http://127.0.0.1:9", credentials { access_key: "k", secret_key: "s" } }'


def test_nothing_configured_runs_offline(decisions):
    assert prepare_clearml(local_flag=False) and decisions == ["offline"]


def test_a_configured_server_is_pinged(decisions, tmp_path):
    (tmp_path / "clearml.conf").write_text(CREDENTIALS)
    assert not prepare_clearml(local_flag=False) and decisions == ["ping"]


def test_local_flag_and_exported_offline_mode_win_over_a_configured_server(decisions, tmp_path, monkeypatch):
    (tmp_path / "clearml.conf").write_text(CREDENTIALS)
    assert prepare_clearml(local_flag=True)
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    assert prepare_clearml(local_flag=False)
    assert decisions == ["offline", "offline"]


def test_a_config_file_given_with_a_tilde_is_found(decisions, tmp_path, monkeypatch):
    (tmp_path / "elsewhere.conf").write_text(CREDENTIALS)
    monkeypatch.setenv("CLEARML_CONFIG_FILE", "~/elsewhere.conf")
    assert not prepare_clearml(local_flag=False) and decisions == ["ping"]


def test_a_server_address_without_credentials_is_one_clear_error(decisions, tmp_path):
    (tmp_path / "clearml.conf").write_text('api { api_server: "http://127.0.0.1:9" }')
    with pytest.raises(ServerMisconfigured, match=r"configured in .*clearml.conf but no credentials are; run clearml-init"):
        prepare_clearml(local_flag=False)
    assert decisions == []


def test_under_an_agent_nothing_is_decided_or_checked(decisions, monkeypatch):
    monkeypatch.setenv("CLEARML_TASK_ID", "abc")
    assert not prepare_clearml(local_flag=True) and decisions == []


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """A local HTTPS server with a self-signed certificate, answering every request."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(folder / "key.pem"),
            "-out",
            str(folder / "cert.pem"),
        ],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_self_signed_server_is_reachable_when_verification_is_off(https_server, unconfigured_sdk, monkeypatch, tmp_path):
    monkeypatch.setenv("CLEARML_API_HOST", https_server)
    with pytest.raises(ServerUnreachable, match="certificate this machine does not trust.*api.verify_certificate"):
        clearml_connection.check_server_reachable()
    (tmp_path / "clearml.conf").write_text("api { verify_certificate: false }")
    clearml_connection.check_server_reachable()  # answered: no exception
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # requests would let it override the session's setting
    clearml_connection.check_server_reachable()
    for name, value in {"CLEARML_API_ACCESS_KEY": "k", "CLEARML_API_SECRET_KEY": "s", "CLEARML_FILES_HOST": https_server}.items():
        monkeypatch.setenv(name, value)  # the log-in and the files server's ping too
    clearml_connection.check_server_reachable()


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repository(tmp_path) -> Path:
    root = tmp_path / "work"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.com")
    git(root, "config", "user.name", "t")
    (root / "train.tsv").write_text("instruction\tinput\toutput\tfull_output\n")
    git(root, "add", "train.tsv")
    git(root, "commit", "-q", "-m", "data")
    return root


def test_a_repository_without_remote_is_refused(repository):
    with pytest.raises(RepositoryNotReady, match="has no git remote; .*git remote add origin"):
        check_repository(repository)


def test_a_local_path_remote_needs_the_flag_and_an_unpushed_commit_is_refused(repository, tmp_path):
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", str(remote))
    git(repository, "remote", "add", "origin", str(remote))
    git(repository, "push", "-q", "-u", "origin", "main")
    with pytest.raises(RepositoryNotReady) as refused:
        check_repository(repository)
    assert str(refused.value) == (
        f"The git remote {remote} is a path on this machine, which agents elsewhere cannot clone; push to a shared "
        "remote, or pass --allow-local-repository if every agent runs on this machine."
    )
    check_repository(repository, allow_local=True)
    (repository / "more.txt").write_text("x")
    git(repository, "add", "more.txt")
    git(repository, "commit", "-q", "-m", "not pushed")
    with pytest.raises(RepositoryNotReady, match=r"Commit [0-9a-f]{12} is not on any branch of the remote .*git push"):
        check_repository(repository, allow_local=True)
    git(repository, "push", "-q")
    assert not check_repository(repository, allow_local=True).diff
    (repository / "more.txt").write_text("uncommitted")  # agents apply the recorded diff on top of the commit
    assert "+uncommitted" in check_repository(repository, allow_local=True).diff


def test_data_files_for_agents_are_committed_files_relative_to_the_repository(repository, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert repository_path(str(repository / "train.tsv"), "--train-tsv", root=repository) == "train.tsv"
    assert repository_path("work/train.tsv", "--train-tsv", root=repository) == "train.tsv"
    assert repository_path("s3://bucket/train.tsv", "--train-tsv", root=repository) == "s3://bucket/train.tsv"
    outside = tmp_path / "outside.tsv"
    outside.write_text("x")
    with pytest.raises(RepositoryNotReady, match="outside the repository .*commit the file into the repository or give a URL"):
        repository_path(str(outside), "--train-tsv", root=repository)
    (repository / "new.tsv").write_text("x")
    with pytest.raises(RepositoryNotReady, match="--test-tsv new.tsv is not committed"):
        repository_path(str(repository / "new.tsv"), "--test-tsv", root=repository)


@pytest.mark.parametrize(
    "url, local",
    [
        ("/srv/repo.git", True),
        ("../repo", True),
        ("file:///srv/repo.git", True),
        ("repo", True),
        ("https://github.com/org/repo.git", False),
        ("git@github.com:org/repo.git", False),
        ("ssh://git@host/repo.git", False),
        ("git://host/repo.git", False),
        ("host:org/repo.git", False),
        ("C:/nowhere", False),
        ("../odd:name/repo.git", True),
    ],
)
def test_a_remote_is_local_when_it_is_a_path_of_this_machine(url, local):
    """scp-like ``host:path`` names a machine; ``C:/...`` reads as one too (a Windows path is not a supported remote)."""
    assert is_local_path_remote(url) is local


def test_each_refusal_of_the_repository_is_its_whole_sentence(repository, tmp_path, monkeypatch):
    not_a_repository = tmp_path / "plain"
    not_a_repository.mkdir()
    with pytest.raises(RepositoryNotReady) as refused:
        check_repository(not_a_repository)
    assert str(refused.value) == f"{not_a_repository} is not a git repository; agents clone the code from a git remote: git init, commit and push it."
    empty = tmp_path / "empty"
    git(tmp_path, "init", "-q", str(empty))
    git(empty, "remote", "add", "origin", "https://example.invalid/repo.git")
    with pytest.raises(RepositoryNotReady) as refused:
        check_repository(empty)
    assert str(refused.value) == f"The repository {empty} has no commit yet; commit and push it."
    monkeypatch.chdir(repository)
    with pytest.raises(RepositoryNotReady) as refused:
        repository_path("absent.tsv", "--test-tsv", root=repository)
    assert str(refused.value) == "--test-tsv absent.tsv: no such file."
    (repository / "-n.tsv").write_text("x")  # a name git would read as an option without "--"
    git(repository, "add", "--", "-n.tsv")
    git(repository, "commit", "-q", "-m", "dash")
    assert repository_path("-n.tsv", "--test-tsv", root=repository) == "-n.tsv"


def test_the_best_trial_is_a_completed_one_that_reported_the_objective():
    trials = [
        TrialRecord("failed-early", "failed", 0.5, {}),
        TrialRecord("aborted", "stopped", 0.6, {}),
        TrialRecord("silent", "completed", None, {}),
        TrialRecord("worse", "completed", 2.0, {}),
        TrialRecord("better", "completed", 1.0, {}),
    ]
    assert best_trial(trials).task_id == "better"
    assert best_trial(trials[:3]) is None


UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once
# Each entry point with --local and an input that does not exist: the error it must reach is the offline
# one (the input named), past the server check that a configured server would fail.
LOCAL_RUNS = {
    "steps/ingest.py": (["--train-tsv", "missing.tsv", "--test-tsv", "data/sample/test.tsv"], "missing.tsv"),
    "steps/preprocess.py": (["--ingest-task-id", "offline-missing", "--model", "tiny"], "offline-missing"),
    "steps/train.py": (["--preprocess-task-id", "offline-missing", "--model", "tiny"], "offline-missing"),
    "steps/evaluate.py": (["--model-dir", "missing-model", "--test-tsv", "data/sample/test.tsv"], "missing-model"),
    "steps/register.py": (["--candidates", "offline-missing"], "offline-missing"),
    "steps/rate.py": (["--evaluate-task-ids", "offline-missing"], "offline-missing"),
    "steps/export.py": (["--register-task-id", "offline-missing"], "offline-missing"),
    "pipelines/run_pipeline.py": (["--preset", "tiny", "--train-tsv", "missing.tsv"], "missing.tsv"),
    "pipelines/run_hpo.py": (["--preset", "tiny", "--preprocess-task-id", "offline-missing"], "offline-missing"),
}


@pytest.fixture(scope="module")
def unreachable_server(clearml_home) -> dict[str, str]:
    return {**clearml_home, "CLEARML_API_HOST": UNREACHABLE, "CLEARML_API_ACCESS_KEY": "k", "CLEARML_API_SECRET_KEY": "s"}


def test_without_local_a_configured_server_that_does_not_answer_stops_the_command(unreachable_server, tmp_path):
    """What --local changes in the test below: the same command without it stops at the server check."""
    arguments, _ = LOCAL_RUNS["steps/ingest.py"]
    completed = run_script(unreachable_server, "steps/ingest.py", *arguments, "--output-dir", str(tmp_path), check=False)
    assert completed.returncode == 1 and UNREACHABLE in completed.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("script", sorted(LOCAL_RUNS))
def test_local_runs_offline_even_with_a_server_configured(unreachable_server, tmp_path, script):
    arguments, named = LOCAL_RUNS[script]
    completed = run_script(unreachable_server, script, "--local", *arguments, "--output-dir", str(tmp_path), check=False)
    last_line = completed.stderr.strip().splitlines()[-1]
    assert completed.returncode == 1 and last_line.startswith("error: ") and named in last_line, completed.stderr[-2000:]
    assert UNREACHABLE not in completed.stdout + completed.stderr
