"""The ranks of a data-parallel run and the collectives of the training loop.

A :class:`World` is this process's place in a run: its rank, the number of ranks, its rank on
this machine. :func:`join_world` reads torch.distributed's environment contract and joins the
process group: gloo on CPU, nccl on GPUs (each rank on GPU ``LOCAL_RANK``). Joining is bounded:
a rank that cannot reach rank 0 (a wrong ``MASTER_ADDR``, a closed port), rank 0 finding its
port taken, or a rank that never arrives ends the step within ``join_timeout`` seconds with one
sentence naming the address. After joining, a rank that dies (SIGKILL, out of memory) breaks
its peers' next collective; that too becomes one sentence (:class:`RankLostError`), never a hang.

Under torchrun (``TORCHELASTIC_RUN_ID`` set) the store is torchrun's own, and its rendezvous
bounds the wait; otherwise (the step's own ``--nproc-per-node`` ranks, ClearML's multi-node
launch) rank 0 hosts the store.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from components.errors import UserError

# A collective may wait this long for its peers: rank 0 alone generates validation answers for the
# text metrics while the others wait at the broadcast of the results.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankLostError(UserError):
    """A peer of this rank stopped (killed, out of memory, failed); its own output says why."""


class JoinError(UserError):
    """This rank could not join the run: a wrong address, a port taken, a rank that never came."""


@dataclass(frozen=True)
class World:
    """This process's place in a run; ``World()`` is a run of one, whose collectives are the identity."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints and adapters and reports to ClearML."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place; returns it. (nccl sums on the GPU: a CPU tensor goes there and back.)"""
        if self.distributed:
            on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device())) if dist.get_backend() == "nccl" else tensor
            with _peers_alive(self):
                dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            if on_gpu is not tensor:
                tensor.copy_(on_gpu)
        return tensor

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable value built by this program, never read from a file)."""
        if not self.distributed:
            return value
        box = [value]
        with _peers_alive(self):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        with _peers_alive(self):
            dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.distributed:
            with _peers_alive(self):
                dist.barrier()


@contextmanager
def _peers_alive(world: World) -> Iterator[None]:
    """Turns a collective broken by a lost peer into one sentence."""
    try:
        yield
    except (RuntimeError, dist.DistError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RankLostError(
            f"Rank {world.rank} of {world.size} lost its peers ({first_line[:200]}): another rank stopped, "
            "and its own output above says why; rerun with --resume to continue from the last checkpoint."
        ) from None


def world_from_environment() -> World:
    """The World torch.distributed's environment describes; ``World()`` when it describes none."""
    size = int(os.environ.get("WORLD_SIZE") or 1)
    if size <= 1:
        return World()
    missing = [name for name in ENVIRONMENT if not os.environ.get(name)]
    if missing:
        raise JoinError(
            f"WORLD_SIZE is {size} but {', '.join(missing)} is not set; start the ranks with torchrun or the train step's --nproc-per-node."
        )
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ["LOCAL_RANK"]))


def under_torchrun() -> bool:
    return os.environ.get("TORCHELASTIC_RUN_ID") is not None


def join_world(join_timeout: float) -> World:
    """Join the process group the environment describes (see the module docstring); ``World()`` outside a run."""
    world = world_from_environment()
    if not world.distributed or dist.is_initialized():
        return world
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    if under_torchrun():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        return world
    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    where = f"MASTER_ADDR:MASTER_PORT {address}:{port}"
    try:
        store = dist.TCPStore(
            address, port, world.size, is_master=world.is_main, timeout=datetime.timedelta(seconds=join_timeout), wait_for_workers=True
        )
    except (RuntimeError, dist.DistError) as error:
        reason = str(error).lower()
        if world.is_main and ("address already in use" in reason or "eaddrinuse" in reason):
            raise JoinError(f"Rank 0 cannot listen on {where}: the port is taken; set MASTER_PORT to a free port.") from None
        if world.is_main:
            raise JoinError(
                f"Only some of the {world.size} ranks reached rank 0 at {where} within {join_timeout:g} s "
                "(--join-timeout); check that every rank was started and can reach that address."
            ) from None
        raise JoinError(
            f"Rank {world.rank} could not reach rank 0 at {where} within {join_timeout:g} s (--join-timeout); "
            "check the address and that the port is open to this machine."
        ) from None
    dist.init_process_group(backend, store=store, rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT)
    return world


def leave_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
