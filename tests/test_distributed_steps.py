"""The train step on two CPU ranks, as a user starts it: ``--nproc-per-node 2`` and ``torchrun --nproc-per-node 2``.

Either way, a rank killed with SIGKILL after a checkpoint fails the run, and ``--resume`` ends bit-identical
to an uninterrupted two-rank run (dropout on: each rank's random state must come back from the checkpoint).
A rank that cannot join fails within its ``--join-timeout`` with one sentence.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, run_script

from components.data import TOKENIZATION_FILE, preprocess, read_tsv
from components.distributed.launch import free_port
from components.modeling import load_tokenizer

MAX_STEPS, EVAL_EVERY = 40, 4
KILL_WAIT_S = 120


@pytest.fixture(scope="module")
def tokenized(tiny_model_dir, tmp_path_factory) -> Path:
    """The preprocess step's folder for 70 train and 12 validation rows of the sample data."""
    directory = tmp_path_factory.mktemp("tokenized")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    frame = read_tsv("data/sample/train.tsv")
    preprocess(frame.iloc[:70], tokenizer, 32, 32).save_to_disk(str(directory / "train"))
    preprocess(frame.iloc[70:82], tokenizer, 32, 32).save_to_disk(str(directory / "validation"))
    (directory / TOKENIZATION_FILE).write_text(json.dumps({"model": str(tiny_model_dir), "max_input_length": 32}), encoding="utf-8")
    return directory


def train_arguments(tokenized: Path, tiny_model_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "steps/train.py",
        "--data-dir",
        str(tokenized),
        "--model",
        str(tiny_model_dir),
        "--max-steps",
        str(MAX_STEPS),
        "--eval-every",
        str(EVAL_EVERY),
        "--batch-size",
        "2",
        "--grad-accum-steps",
        "2",
        "--learning-rate",
        "3e-3",
        "--output-dir",
        str(output_dir),
        *extra,
    ]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def offline(clearml_home) -> dict:
    """ClearML offline by its own variable: torchrun would take the step's --local for its own --local-addr."""
    return {**clearml_home, "CLEARML_OFFLINE_MODE": "1"}


def outcome(output_dir: Path) -> tuple[bytes, list]:
    """The adapter's bytes and the validation history of a finished run."""
    history = json.loads((output_dir / "training.json").read_text())["history"]
    return (output_dir / "adapter" / "adapter.safetensors").read_bytes(), history


@pytest.fixture(scope="module")
def uninterrupted(offline, tokenized, tiny_model_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    run_script(offline, *train_arguments(tokenized, tiny_model_dir, output_dir, "--nproc-per-node", "2"))
    return outcome(output_dir)


def rank_process(parent: psutil.Process, rank: int) -> psutil.Process | None:
    """The descendant started with RANK=``rank`` (a launcher's own process has no RANK in its starting environment)."""
    for process in parent.children(recursive=True):
        try:
            if process.environ().get("RANK") == str(rank):
                return process
        except psutil.NoSuchProcess:
            pass
    return None


def kill_rank_after_first_checkpoint(env: dict, command: list[str], output_dir: Path, rank: int | None) -> tuple[int, str, list]:
    """Start ``command``, SIGKILL rank ``rank`` (None: the command's own process) once a checkpoint is complete.

    Returns the command's exit status, its stderr and the processes of the other ranks (ended by then).
    """
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state_file = output_dir / "checkpoints" / "last" / "state.json"
    deadline = time.monotonic() + KILL_WAIT_S
    try:
        while not state_file.exists():
            assert process.poll() is None, f"the run ended before its first checkpoint: {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        launched = psutil.Process(process.pid)
        victim = launched if rank is None else rank_process(launched, rank)
        assert victim is not None, f"no process of rank {rank}"
        others = [p for p in launched.children(recursive=True) if p.pid != victim.pid]
        victim.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        psutil.wait_procs(others, timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    steps = json.loads(state_file.read_text())["step"]
    assert steps < MAX_STEPS, "the run finished before the kill"
    return process.returncode, stderr, others


def test_nproc_per_node_a_rank_killed_fails_the_run_in_one_sentence_and_resume_ends_bit_identical(
    offline, tokenized, tiny_model_dir, uninterrupted, tmp_path
):
    command = [sys.executable, *train_arguments(tokenized, tiny_model_dir, tmp_path, "--nproc-per-node", "2")]
    status, stderr, _ = kill_rank_after_first_checkpoint(offline, command, tmp_path, rank=1)
    assert status == 1
    assert stderr.strip().splitlines()[-1] == (
        "error: Training stopped: rank 1 was killed by SIGKILL (its output above says why); rerun with --resume to continue from the last checkpoint."
    )
    run_script(offline, *train_arguments(tokenized, tiny_model_dir, tmp_path, "--nproc-per-node", "2", "--resume"))
    assert outcome(tmp_path) == uninterrupted
    # Continued from the checkpoint, not started again (which, seeded, would end the same).
    assert json.loads((tmp_path / "training.json").read_text())["resumed_from"] == str(tmp_path / "checkpoints" / "last")


def test_the_ranks_of_nproc_per_node_die_with_their_rank_0(offline, tokenized, tiny_model_dir, tmp_path):
    """Killed mid-training, rank 0 leaves no rank behind. (Here its peer's broken collective ends rank 1 too; the
    parent-death signal also ends a rank that is not in a collective, e.g. still loading the model.)"""
    command = [sys.executable, *train_arguments(tokenized, tiny_model_dir, tmp_path, "--nproc-per-node", "2")]
    status, _, others = kill_rank_after_first_checkpoint(offline, command, tmp_path, rank=None)
    assert status == -signal.SIGKILL and others
    assert not [process for process in others if process.is_running() and process.status() != psutil.STATUS_ZOMBIE]


def test_torchrun_rank_0_killed_then_resumed_ends_bit_identical_to_the_nproc_per_node_run(
    offline, tokenized, tiny_model_dir, uninterrupted, tmp_path
):
    """A run is one task, rank 0's: torchrun's other rank trains without one."""
    sessions = tmp_path / "clearml-cache" / "offline"
    env = {**offline, "CLEARML_CACHE_DIR": str(sessions.parent)}
    output_dir = tmp_path / "out"
    command = [*TORCHRUN, *train_arguments(tokenized, tiny_model_dir, output_dir)]
    status, _, _ = kill_rank_after_first_checkpoint(env, command, output_dir, rank=0)
    assert status != 0
    subprocess.run(
        [*TORCHRUN, *train_arguments(tokenized, tiny_model_dir, output_dir, "--resume")],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert outcome(output_dir) == uninterrupted
    assert len(list(sessions.glob("*.zip"))) == 1  # the completed run's task, closed; the killed run's was never closed


def test_torchrun_without_an_output_folder_trains_into_a_new_temporary_one(offline, tokenized, tiny_model_dir, tmp_path):
    """Rank 0 writes into a new folder (the step's default); the other rank, which writes nothing, runs too."""
    arguments = train_arguments(tokenized, tiny_model_dir, tmp_path, "--max-steps", "2", "--eval-every", "2")
    given = arguments.index("--output-dir")
    del arguments[given : given + 2]
    completed = subprocess.run(
        [*TORCHRUN, *arguments], cwd=ROOT, env={**offline, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    [adapter] = [Path(line.rsplit("Adapter in ", 1)[1].rstrip(".")) for line in completed.stdout.splitlines() if "Adapter in " in line]
    assert adapter.parent.parent == tmp_path and adapter.parent.name.startswith("train-")
    assert (adapter / "adapter.safetensors").is_file()


def started_by_hand(env: dict, rank: int, port: int) -> dict:
    """The environment torchrun would give rank ``rank`` of 2, rank 0 listening on 127.0.0.1:``port``."""
    return {**env, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def test_a_rank_that_cannot_join_fails_within_its_join_timeout_in_one_sentence(offline, tokenized, tiny_model_dir, tmp_path):
    port = free_port()
    cases = {  # rank: the sentence's start
        1: f"error: Rank 1 could not reach rank 0 at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port} within 3 s (--join-timeout)",
        0: f"error: Only some of the 2 ranks reached rank 0 at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port} within 3 s (--join-timeout)",
    }
    for rank, sentence in cases.items():  # nobody listens at rank 0's address; rank 1 never comes
        started = time.monotonic()
        completed = run_script(
            started_by_hand(offline, rank, port),
            *train_arguments(tokenized, tiny_model_dir, tmp_path / str(rank), "--join-timeout", "3"),
            check=False,
            timeout=120,
        )
        assert completed.returncode == 1, rank
        assert completed.stderr.strip().splitlines()[-1].startswith(sentence), completed.stderr[-2000:]
        assert time.monotonic() - started < 60, rank


def test_rank_0_finding_its_port_taken_fails_at_once_and_stops_the_ranks_it_started(offline, tokenized, tiny_model_dir, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environment = {**offline, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        completed = run_script(environment, *train_arguments(tokenized, tiny_model_dir, tmp_path, "--nproc-per-node", "2"), check=False, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        f"error: Rank 0 cannot listen on MASTER_ADDR:MASTER_PORT 127.0.0.1:{port}: the port is taken; set MASTER_PORT to a free port."
    )
    assert not [
        p
        for p in psutil.process_iter(["cmdline"])
        if "components.distributed.worker" in (p.info["cmdline"] or []) and str(tmp_path) in " ".join(p.info["cmdline"])
    ]


def test_nodes_outside_a_clearml_agent_is_one_sentence(offline, tokenized, tiny_model_dir, tmp_path):
    completed = run_script(offline, *train_arguments(tokenized, tiny_model_dir, tmp_path, "--nodes", "2"), check=False, timeout=120)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        "error: --nodes 2 trains on ClearML agents: create the train task, set Args/nodes to 2 and enqueue it on a queue that many "
        "agents serve (docs/distributed.md)."
    )
