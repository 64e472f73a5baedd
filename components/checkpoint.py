"""Training checkpoints that hold only what trains, stored without pickle.

A checkpoint directory::

    adapter.safetensors     the trainable tensors (LoRA A/B, prompt)
    optimizer.safetensors   the optimizer's per-parameter tensors (AdamW moments, steps)
    rng.safetensors         torch's CPU (and CUDA) random states
    state.json              step, data position, scheduler, grad scaler, optimizer
                            hyperparameters, early-stopping state, loss history

The frozen base model is never written: for ruT5-large a checkpoint is ~30 MB, not 3 GB.
Everything is read back with safetensors and json, so loading a checkpoint from an
artifact store cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from components.modeling import load_adapter_weights, save_adapter_weights

STATE_FILE = "state.json"


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> dict:
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.contiguous() for index, values in state["state"].items() for key, value in values.items()}
    save_file(tensors, str(path))
    return {"param_groups": state["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path, param_groups: list[dict]) -> None:
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in load_file(str(path)).items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in param_groups]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def _rng_state() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _restore_rng(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(directory: Path, model, optimizer, scheduler, scaler, loop_state: dict[str, Any], extra_files: dict[str, Path] | None = None) -> Path:
    """Write a complete checkpoint atomically (a crash mid-write leaves the previous one intact).

    ``extra_files`` (name -> existing file) are copied in, e.g. the best adapter so far.
    """
    scratch = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    save_adapter_weights(model, scratch / "adapter.safetensors")
    optimizer_meta = _save_optimizer(optimizer, scratch / "optimizer.safetensors")
    save_file(_rng_state(), str(scratch / "rng.safetensors"))
    state = {**loop_state, "optimizer": optimizer_meta, "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
    (scratch / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    for name, source in (extra_files or {}).items():
        if source.exists():
            shutil.copyfile(source, scratch / name)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(scratch, directory)
    return directory


def load_checkpoint(directory: Path, model, optimizer, scheduler, scaler) -> dict[str, Any]:
    """Restore model adapters, optimizer, scheduler, scaler and RNG; return the loop state."""
    state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    load_adapter_weights(model, directory / "adapter.safetensors")
    _load_optimizer(optimizer, directory / "optimizer.safetensors", state.pop("optimizer")["param_groups"])
    scheduler.load_state_dict(state.pop("scheduler"))
    scaler_state = state.pop("scaler")
    if scaler_state:
        scaler.load_state_dict(scaler_state)
    _restore_rng(load_file(str(directory / "rng.safetensors")))
    return state


def is_checkpoint(directory: Path | None) -> bool:
    return directory is not None and (Path(directory) / STATE_FILE).exists()
