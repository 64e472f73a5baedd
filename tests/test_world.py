"""``components.distributed.world``: the world read from torch.distributed's environment, joining it (two forked ranks
on gloo, and each way joining fails, as one sentence within the join timeout), the collectives, and a lost peer as
one sentence. The train step's ranks end to end: test_distributed_steps.py; the training loop at every scale:
test_distributed.py."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
from forked import exited_cleanly, start_child, wait_children
from rating_sessions import free_port

from components.distributed import world as world_module
from components.distributed.world import JoinError, RankLostError, World, join_world, leave_world, world_from_environment

JOIN_TIMEOUT_S = 1.0


@pytest.fixture
def environment(monkeypatch):
    """No torch.distributed variables; a test sets those it needs."""
    for name in (*world_module.ENVIRONMENT, "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)

    def set_(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, str(value))

    return set_


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({}, World()),
        ({"WORLD_SIZE": "1", "RANK": "0"}, World()),
        ({"WORLD_SIZE": "", "RANK": "3"}, World()),
        ({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}, World(2, 4, 1)),
    ],
)
def test_the_world_is_what_the_environment_describes(environment, variables, expected):
    environment(**variables)
    assert world_from_environment() == expected


def test_a_world_described_in_part_is_one_sentence_naming_what_is_missing(environment):
    environment(WORLD_SIZE=2, RANK=1, MASTER_PORT=29500)
    with pytest.raises(JoinError) as refused:
        world_from_environment()
    assert str(refused.value) == (
        "WORLD_SIZE is 2 but LOCAL_RANK, MASTER_ADDR is not set; start the ranks with torchrun or the train step's --nproc-per-node."
    )


def test_torchrun_is_recognised_by_its_run_id(environment):
    assert not world_module.under_torchrun()
    environment(TORCHELASTIC_RUN_ID="")  # set, even empty: torchrun's
    assert world_module.under_torchrun()


def test_a_run_of_one_is_the_main_rank_and_its_collectives_are_the_identity(environment):
    world = join_world(JOIN_TIMEOUT_S)
    assert world == World() and world.is_main and not world.distributed and not dist.is_initialized()
    tensor = torch.tensor([1.5, 2.0])
    assert world.sum_(tensor) is tensor and tensor.tolist() == [1.5, 2.0]
    assert world.broadcast({"a": 1}) == {"a": 1} and world.gather("x") == ["x"]
    world.barrier()
    assert not World(rank=1, size=2).is_main and World(rank=1, size=2).distributed


@pytest.mark.parametrize(
    "error, said",
    [
        (RuntimeError("Connection closed by peer [127.0.0.1]:1234\nmore detail"), "Connection closed by peer [127.0.0.1]:1234"),
        (RuntimeError("  "), "RuntimeError"),
        (RuntimeError("x" * 300), "x" * 200),
    ],
)
def test_a_broken_collective_is_one_sentence_naming_the_rank(error, said):
    with pytest.raises(RankLostError) as lost:
        with world_module._peers_alive(World(rank=1, size=3)):
            raise error
    assert str(lost.value) == (
        f"Rank 1 of 3 lost its peers ({said}): another rank stopped, and its own output above says why; "
        "rerun with --resume to continue from the last checkpoint."
    )


def joining(environment, tmp_path, rank: int, port: int, size: int = 2) -> str:
    """The sentence ``join_world`` fails with for this rank (in a forked child: a join that hangs fails the test after
    a few join timeouts instead of holding it)."""
    environment(WORLD_SIZE=size, RANK=rank, LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)

    def join() -> None:
        try:
            join_world(JOIN_TIMEOUT_S)
        except JoinError as refused:
            (tmp_path / "refused").write_text(f"{refused}|{dist.is_initialized()}")

    [status] = wait_children([start_child(join)], timeout_s=10 * JOIN_TIMEOUT_S)
    assert exited_cleanly(status)
    sentence, initialized = (tmp_path / "refused").read_text().rsplit("|", 1)
    assert initialized == "False"
    return sentence


def test_rank_0_alone_gives_up_after_the_join_timeout(environment, tmp_path):
    port = free_port()
    assert joining(environment, tmp_path, 0, port) == (
        f"Only some of the 2 ranks reached rank 0 at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port} within "
        "1 s (--join-timeout); check that every rank was started and can reach that address."
    )


def test_rank_0_on_a_port_in_use_says_so(environment, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert joining(environment, tmp_path, 0, port) == (
            f"Rank 0 cannot listen on MASTER_ADDR:MASTER_PORT 127.0.0.1:{port}: the port is taken; set MASTER_PORT to a free port."
        )


def test_a_rank_that_cannot_reach_rank_0_gives_up_after_the_join_timeout(environment, tmp_path):
    port = free_port()  # nothing listens there
    assert joining(environment, tmp_path, 1, port) == (
        f"Rank 1 could not reach rank 0 at MASTER_ADDR:MASTER_PORT 127.0.0.1:{port} within 1 s "
        "(--join-timeout); check the address and that the port is open to this machine."
    )


def in_two_ranks(environment, tmp_path, work, torchrun: bool = False) -> list[dict]:
    """``work(world)`` in two forked ranks that join with ``join_world``; each rank's JSON-ready result. Under torchrun
    (its run id set) the ranks rendezvous through torch's ``env://`` store instead of the one rank 0 hosts."""
    environment(WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port(), **({"TORCHELASTIC_RUN_ID": "test"} if torchrun else {}))

    def rank_work(rank: int) -> None:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
        timeouts, init = [], dist.init_process_group
        dist.init_process_group = lambda *args, **options: timeouts.append(options["timeout"].total_seconds()) or init(*args, **options)
        world = join_world(30)
        result = work(world)
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps({**result, "collective_timeout_s": timeouts}))

    statuses = wait_children([start_child(lambda rank=rank: rank_work(rank)) for rank in range(2)], timeout_s=60)
    assert all(exited_cleanly(status) for status in statuses), statuses
    return [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in range(2)]


def collectives(world: World) -> dict:
    summed = world.sum_(torch.tensor([float(world.rank + 1), 10.0]))
    result = {
        "world": [world.rank, world.size, world.local_rank],
        "sum": summed.tolist(),
        "broadcast": world.broadcast({"from": world.rank}),
        "gather": world.gather(f"rank {world.rank}"),
        "joined": dist.is_initialized(),
        "backend": dist.get_backend(),
    }
    world.barrier()
    leave_world()
    leave_world()  # a second time: nothing left to leave
    return {**result, "left": not dist.is_initialized()}


@pytest.mark.parametrize("torchrun", [False, True])
def test_two_ranks_join_and_their_collectives_sum_broadcast_and_gather(environment, tmp_path, torchrun):
    ranks = in_two_ranks(environment, tmp_path, collectives, torchrun)
    for rank, result in enumerate(ranks):
        assert result == {
            "world": [rank, 2, rank],
            "sum": [3.0, 20.0],
            "broadcast": {"from": 0},
            "gather": ["rank 0", "rank 1"],
            "joined": True,
            "backend": "gloo",
            "left": True,
            "collective_timeout_s": [world_module.COLLECTIVE_TIMEOUT.total_seconds()],
        }  # 2 h, not torch's 30 min


COLLECTIVES = {
    "sum_": lambda world: world.sum_(torch.ones(1)),
    "broadcast": lambda world: world.broadcast("x"),
    "gather": lambda world: world.gather("x"),
    "barrier": lambda world: world.barrier(),
}


@pytest.mark.parametrize("collective", sorted(COLLECTIVES))
def test_a_peer_that_dies_is_one_sentence_on_the_rank_left(environment, tmp_path, collective):
    def work(world: World) -> dict:
        if world.rank == 1:
            os._exit(0)  # gone without a word, as a killed rank is
        try:
            time.sleep(0.5)
            COLLECTIVES[collective](world)
        except RankLostError as lost:
            return {"error": str(lost)}
        return {"error": None}

    environment(WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())

    def rank_work(rank: int) -> None:
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps(work(join_world(30))))

    wait_children([start_child(lambda rank=rank: rank_work(rank)) for rank in range(2)], timeout_s=60)
    error = json.loads((tmp_path / "rank-0.json").read_text())["error"]
    assert error.startswith("Rank 0 of 2 lost its peers (") and error.endswith(
        "): another rank stopped, and its own output above says why; rerun with --resume to continue from the last checkpoint."
    )


def test_on_gpus_each_rank_takes_its_gpu_and_nccl_and_sums_there(environment, monkeypatch):
    """The GPU path with the CUDA calls recorded (no GPU here): the backend, the device per rank, the sum's round trip."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **options: calls.append(("init", backend, options)))
    environment(WORLD_SIZE=2, RANK=1, LOCAL_RANK=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=29500, TORCHELASTIC_RUN_ID="run")
    assert join_world(JOIN_TIMEOUT_S) == World(1, 2, 1)
    assert calls == [("set_device", 1), ("init", "nccl", {"timeout": world_module.COLLECTIVE_TIMEOUT})]

    moved, reduced = [], []
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.Tensor, "to", lambda tensor, device: moved.append(device) or tensor.clone())
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op: reduced.append(op) or tensor.mul_(2))  # two ranks of equal values
    tensor = torch.tensor([1.5, 3.0])
    assert World(1, 2, 1).sum_(tensor) is tensor and tensor.tolist() == [3.0, 6.0]
    assert moved == [torch.device("cuda", 1)] and reduced == [dist.ReduceOp.SUM]
