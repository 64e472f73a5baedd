"""Shared pieces of the benchmarks: model shapes, timing and memory helpers.

Only torch, transformers and (for the PEFT comparison) peft are needed, so the scripts
run on a bare GPU machine that has no ClearML or metric packages.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

from components.settings import RUT5_LARGE_CONFIG  # noqa: E402

# t5-small's published shape, in ruT5's T5 v1.0 layout and vocabulary.
T5_SMALL_SHAPE = dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, num_decoder_layers=6)
SIZES = {"small": {**RUT5_LARGE_CONFIG, **T5_SMALL_SHAPE}, "rut5-large": RUT5_LARGE_CONFIG}


def build_model(size: str, device: torch.device, seed: int = 0) -> T5ForConditionalGeneration:
    """The architecture with random (seeded) weights: no download, same FLOPs as the real one.

    Built directly on ``device``: initialising ruT5-large's 738M weights on a GPU takes
    seconds, on the CPU about a minute.
    """
    torch.manual_seed(seed)
    with device:
        return T5ForConditionalGeneration(T5Config(**SIZES[size], dropout_rate=0.0))


def device_and_sync() -> tuple[torch.device, callable]:
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.cuda.synchronize
    return torch.device("cpu"), (lambda: None)


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def print_json_last(result: dict) -> None:
    """The machine-readable result is the last line of the output."""
    print(json.dumps(result, sort_keys=False))


@dataclass(frozen=True)
class Sample:
    """One timed run: its wall and CPU seconds (this process's, threads included) and the 1-minute load average before it."""

    wall_s: float
    cpu_s: float
    load: float


def sample(work: Callable[[], object]) -> Sample:
    load = os.getloadavg()[0]
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return Sample(time.perf_counter() - wall, time.process_time() - cpu, load)


def interleaved(works: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[Sample]]:
    """Each work run ``repeats`` times, taking turns (a, b, c, a, b, c, ...): a burst of load on the machine falls on
    every configuration alike instead of deciding which one wins."""
    samples: dict[str, list[Sample]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            samples[name].append(sample(work))
    return samples


def rate_summary(samples: list[Sample], amount: float) -> dict:
    """``amount`` per wall second over the runs: the median (the figure reported), the range, the CPU seconds and load."""
    rates = sorted(amount / s.wall_s for s in samples)
    return {
        "median": round(statistics.median(rates), 2),
        "min": round(rates[0], 2),
        "max": round(rates[-1], 2),
        "runs": len(rates),
        "cpu_s_median": round(statistics.median(s.cpu_s for s in samples), 2),
        "wall_s_median": round(statistics.median(s.wall_s for s in samples), 2),
        "load_1min": [round(min(s.load for s in samples), 2), round(max(s.load for s in samples), 2)],
    }
