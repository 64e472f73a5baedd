"""Shared pieces of the benchmarks: model shapes, timing and memory helpers.

Only torch, transformers and (for the PEFT comparison) peft are needed, so the scripts
run on a bare GPU machine that has no ClearML or metric packages.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
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
