"""How many CPU threads torch computes on: one for models too small to share their work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Below this size a model computes faster on one CPU thread: its matrix products are too small
# to share, and two threads waiting on each other are slow, the more so on a busy machine.
ONE_THREAD_MAX_PARAMETERS = 10_000_000


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """torch computes on ``count`` CPU threads inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def use_cpu_threads_for(model: nn.Module) -> None:
    """One CPU thread for a model under ONE_THREAD_MAX_PARAMETERS on the CPU (the tiny model); else unchanged."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu and sum(p.numel() for p in model.parameters()) < ONE_THREAD_MAX_PARAMETERS:
        torch.set_num_threads(1)
