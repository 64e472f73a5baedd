"""``components.distributed.launch.LocalRanks`` starting real rank processes with entries from ``tests/rank_entries.py``:
the environment and arguments each rank gets, its output forwarded, and how a rank's failure or rank 0's ends the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ASCII_LOCALE
from forked import exited_cleanly, run_main, start_child, wait_children

from components.distributed.launch import ROOT, LocalRanks
from components.distributed.world import RankLostError

VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def own_environment(monkeypatch):
    """LocalRanks sets rank 0's variables in this process: they are restored after each test. PYTHONUNBUFFERED is unset,
    as in a user's shell, so that the ranks' own setting of it shows."""
    for name in (*VARIABLES, "PYTHONUNBUFFERED"):
        monkeypatch.delenv(name, raising=False)


def test_each_started_rank_gets_torchruns_environment_and_rank_0s_arguments(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/some/extra")
    with LocalRanks(3, "tests.rank_entries:record", {"folder": tmp_path, "word": "привет"}, node_rank=1, nodes=2):
        own = {name: os.environ[name] for name in VARIABLES}
    port = own["MASTER_PORT"]
    assert own == {"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    assert 1024 <= int(port) < 65536  # a port the kernel chose: never a privileged one
    recorded = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in tmp_path.glob("rank*.json")}
    assert sorted(recorded) == ["rank4.json", "rank5.json"]
    for rank, local_rank in ((4, 1), (5, 2)):
        values = recorded[f"rank{rank}.json"]
        assert values["arguments"] == {"folder": str(tmp_path), "word": "привет"}
        environment = values["environment"]
        assert environment.pop("PYTHONPATH") == f"{ROOT}{os.pathsep}/some/extra"
        assert environment == {**own, "RANK": str(rank), "LOCAL_RANK": str(local_rank), "PYTHONUNBUFFERED": "1"}
    printed = capfd.readouterr().out.splitlines()
    assert sorted(line for line in printed if line.startswith("[rank")) == [
        "[rank 4] second line",
        "[rank 4] рank says привет",
        "[rank 5] second line",
        "[rank 5] рank says привет",
    ]


def test_an_address_and_port_already_set_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.7")
    monkeypatch.setenv("MASTER_PORT", "29517")
    with LocalRanks(2, "tests.rank_entries:record", {"folder": tmp_path, "word": "a"}):
        pass
    environment = json.loads((tmp_path / "rank1.json").read_text(encoding="utf-8"))["environment"]
    assert (environment["MASTER_ADDR"], environment["MASTER_PORT"], environment["WORLD_SIZE"]) == ("10.0.0.7", "29517", "2")  # one node
    assert environment["PYTHONPATH"] == str(ROOT)


@pytest.mark.parametrize("status, description", [(3, "rank 1 exited with status 3"), (-9, "rank 1 was killed by SIGKILL")])
def test_a_rank_that_failed_fails_the_block_naming_it(status, description, tmp_path):
    entry, arguments = ("tests.rank_entries:fail", {"status": status}) if status > 0 else ("tests.rank_entries:wait", {"folder": tmp_path})
    with pytest.raises(RankLostError) as stopped:
        with LocalRanks(2, entry, arguments):
            if status < 0:
                os.kill(int(wait_for(tmp_path / "pid1")), signal.SIGKILL)
    assert (
        str(stopped.value)
        == f"Training stopped: {description} (its output above says why); rerun with --resume to continue from the last checkpoint."
    )


def wait_for(path: Path, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def test_rank_0s_own_error_stops_the_ranks_and_is_raised_as_it_is(tmp_path):
    started = time.monotonic()
    with pytest.raises(ValueError, match="rank 0 broke"):
        with LocalRanks(3, "tests.rank_entries:wait", {"folder": tmp_path}) as ranks:
            wait_for(tmp_path / "pid1"), wait_for(tmp_path / "pid2")
            raise ValueError("rank 0 broke")
    assert time.monotonic() - started < 30  # the waiting ranks were killed, not waited for
    assert all(process.poll() is not None for process in ranks.processes.values())


def test_every_failed_rank_is_named(tmp_path):
    with pytest.raises(RankLostError, match=r"^Training stopped: rank 1 exited with status 3, rank 2 exited with status 3 \(its output"):
        with LocalRanks(3, "tests.rank_entries:fail", {"status": 3}):
            pass


def test_a_rank_that_hangs_after_a_lost_peer_is_killed_after_a_few_seconds(tmp_path):
    started = time.monotonic()
    with pytest.raises(RankLostError, match="^a collective found its peer gone$"):
        with LocalRanks(2, "tests.rank_entries:wait", {"folder": tmp_path}):
            wait_for(tmp_path / "pid1")
            raise RankLostError("a collective found its peer gone")
    assert time.monotonic() - started < 30


def test_output_that_is_not_utf_8_is_forwarded_with_replacement_characters(capfd):
    with LocalRanks(2, "tests.rank_entries:undecodable", {}):
        pass
    printed = capfd.readouterr().out.splitlines()
    assert [line for line in printed if line.startswith("[rank 1]")] == ["[rank 1] \ufffd\ufffd bytes", "[rank 1] после"]


def test_the_ranks_output_is_read_as_utf_8_whatever_rank_0s_locale(tmp_path):
    """Under a locale whose encoding cannot hold Russian (ASCII here; Windows' cp1252 as well), with UTF-8 output."""

    def rank_0(_argv) -> None:
        with LocalRanks(2, "tests.rank_entries:record", {"folder": tmp_path, "word": "привет"}):
            pass

    completed = run_main(rank_0, [], {**os.environ, **ASCII_LOCALE, "PYTHONIOENCODING": "utf-8"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "[rank 1] рank says привет" in completed.stdout.splitlines()


LAUNCH_AND_END = """
import sys
from components.distributed.launch import LocalRanks
with LocalRanks(2, "tests.rank_entries:leaves_a_child", {"folder": sys.argv[1]}):
    pass
print("rank 0 ends", flush=True)
"""


def test_rank_0_ends_when_its_ranks_do_even_if_a_process_they_started_keeps_their_output_open(tmp_path):
    """A rank's child that outlives it (a data loader's worker, a compiler's) holds the rank's output pipe: rank 0 stops
    forwarding it a few seconds after the rank ended, and exits, instead of waiting for that child (two minutes here)."""
    started = time.monotonic()
    try:
        completed = subprocess.run([sys.executable, "-c", LAUNCH_AND_END, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=90)
    finally:
        if (tmp_path / "child1").exists():
            os.kill(int((tmp_path / "child1").read_text(encoding="utf-8")), signal.SIGKILL)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.splitlines()[-2:] == ["[rank 1] started", "rank 0 ends"]
    assert time.monotonic() - started < 60  # imports and the 5 s given to the forwarder, on a loaded machine


def test_a_ranks_standard_input_is_empty_whatever_rank_0s_is(tmp_path):
    def rank_0() -> None:
        read, _ = os.pipe()
        os.dup2(read, 0)  # rank 0 reading a terminal or a pipe
        with LocalRanks(2, "tests.rank_entries:stdin_of", {"folder": tmp_path}):
            pass

    assert exited_cleanly(*wait_children([start_child(rank_0)]))
    assert (tmp_path / "stdin1").read_text(encoding="utf-8") == "/dev/null"


def test_a_lost_peer_seen_by_rank_0_is_named_when_its_rank_ended(tmp_path):
    with pytest.raises(RankLostError) as stopped:
        with LocalRanks(2, "tests.rank_entries:fail", {"status": 4}) as ranks:
            ranks.processes[1].wait()
            raise RankLostError("a collective found its peer gone")
    assert str(stopped.value).startswith("Training stopped: rank 1 exited with status 4 (its output above says why)")


def test_a_rank_dies_with_the_process_that_started_it(tmp_path):
    def rank_0() -> None:
        with LocalRanks(2, "tests.rank_entries:wait", {"folder": tmp_path}):
            time.sleep(600)

    own = {name: os.environ.get(name) for name in VARIABLES}
    launcher = start_child(rank_0)
    rank_1 = int(wait_for(tmp_path / "pid1"))
    os.kill(launcher, signal.SIGKILL)
    wait_children([launcher])
    deadline = time.monotonic() + 10
    try:
        while process_alive(rank_1):
            assert time.monotonic() < deadline, "rank 1 outlived rank 0"
            time.sleep(0.05)
    finally:
        if process_alive(rank_1):
            os.kill(rank_1, signal.SIGKILL)
    assert {name: os.environ.get(name) for name in VARIABLES} == own


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return False
    return state != "Z"
