"""Training checkpoints that hold only what trains, stored without pickle, and safe against a crash at any instant.

A checkpoint directory::

    adapter.safetensors     the trainable tensors (LoRA A/B, prompt)
    optimizer.safetensors   the optimizer's per-parameter tensors (AdamW moments, steps)
    rng.safetensors         every rank's torch CPU (and CUDA) random state: rank<r>.cpu, rank<r>.cuda
    ...                     extra files, e.g. the best adapter so far
    state.json              step, data position, scheduler, grad scaler, optimizer
                            hyperparameters, early-stopping state, loss history, and the
                            SHA-256 of every other file; written last

The frozen base model is never written: for ruT5-large a checkpoint is ~30 MB, not 3 GB.
Everything is read back with safetensors and json, so loading a checkpoint from an
artifact store cannot run code. In a data-parallel run rank 0 writes the checkpoint (the
adapters and optimizer are the same on every rank; the random states are gathered) and
reads it back on resume (:func:`read_checkpoint`), sending the files to the other ranks,
which need no shared disk; each rank then restores its own random state
(:func:`restore_checkpoint`).

Crash safety. A run's ``checkpoints/`` folder holds ``last`` (the newest checkpoint) and
``previous`` (the one before). A save first writes ``incoming`` completely: every file
flushed to disk with fsync, ``state.json`` last, the folder synced. Only then does it
rotate: ``previous`` is removed, ``last`` renamed to ``previous``, ``incoming`` renamed to
``last``, and ``checkpoints/`` synced. A rename is atomic, so whenever the process dies -
killed, preempted, out of disk - a complete checkpoint is on disk: the new one or the one
before it, never neither. A checkpoint counts as complete when its ``state.json`` parses
and every file matches its digest; :func:`newest_checkpoint` takes the most recently
written complete one (a complete ``incoming`` is a save whose rotation was cut off) and
names, in one sentence, any damaged file it passes over.

Every write, rename, removal and sync of a save goes through four small helpers
(``_write_file``, ``_replace``, ``_remove_tree``, ``_sync_dir``): the fault-injection test
(tests/test_checkpoint_crash.py) kills the process before and inside each of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from components.errors import UserError
from components.modeling import adapter_weights_bytes, copy_adapter_tensors

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LAST, PREVIOUS, INCOMING = "last", "previous", "incoming"


class CheckpointError(UserError):
    """A checkpoint that cannot be written or read; the message names the file and what to do."""


def _write_file(path: Path, data: bytes) -> None:
    """Write and fsync: once this returns, the bytes survive a crash of the process or the machine."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _replace(source: Path, target: Path) -> None:
    os.replace(source, target)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _sync_dir(path: Path) -> None:
    """Make the entries of a folder (new files, renames) durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_file_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` so that a reader finds the old file or the new one, never a torn one.

    Used for copies of what a complete checkpoint already holds (the best adapter), so a failure
    leaves nothing to lose.
    """
    scratch = path.with_name(path.name + ".tmp")
    try:
        _write_file(scratch, data)
        _replace(scratch, path)
        _sync_dir(path.parent)
    except OSError as error:
        scratch.unlink(missing_ok=True)
        raise CheckpointError(
            f"Writing {path} failed ({error.strerror or error}); the checkpoints are intact: free disk space, then rerun with --resume."
        ) from None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.contiguous() for index, values in state["state"].items() for key, value in values.items()}
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> None:
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group for group in param_groups]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch random states: the CPU's and, on a GPU, its current device's."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _restore_rng(states: dict[str, torch.Tensor], rank: int) -> None:
    torch.set_rng_state(states[f"rank{rank}.cpu"])
    if f"rank{rank}.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states[f"rank{rank}.cuda"])


def save_checkpoint(
    checkpoints_dir: Path,
    model,
    optimizer,
    scheduler,
    scaler,
    loop_state: dict[str, Any],
    extra_files: dict[str, bytes] | None = None,
    rng_states: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write a complete checkpoint as ``checkpoints_dir/last`` (see the module docstring); returns that directory.

    ``extra_files`` (name -> content) go in too, e.g. the best adapter so far; ``rng_states`` holds every
    rank's :func:`rng_state` in rank order (default: this process's, as rank 0 of one). A failed write (a
    full disk) raises :class:`CheckpointError` and leaves the earlier checkpoints as they were.
    """
    last, previous, incoming = (checkpoints_dir / name for name in (LAST, PREVIOUS, INCOMING))
    optimizer_tensors, optimizer_meta = _optimizer_tensors(optimizer)
    files = {
        "adapter.safetensors": adapter_weights_bytes(model),
        "optimizer.safetensors": save(optimizer_tensors),
        "rng.safetensors": save(
            {f"rank{rank}.{device}": state for rank, states in enumerate(rng_states or [rng_state()]) for device, state in states.items()}
        ),
        **(extra_files or {}),
    }
    state = {
        **loop_state,
        "optimizer": optimizer_meta,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
    }
    _remove_tree(incoming)  # what a cut-off save left behind
    try:
        incoming.mkdir(parents=True)
        for name, data in files.items():
            _write_file(incoming / name, data)
        _write_file(incoming / STATE_FILE, json.dumps(state, indent=2).encode("utf-8"))
        _sync_dir(incoming)
    except OSError as error:
        _remove_tree(incoming)
        kept = (
            f"the checkpoint before it in {checkpoints_dir} is intact: free disk space, then rerun with --resume"
            if last.exists() or previous.exists()
            else "no checkpoint was saved before it: free disk space and start again"
        )
        raise CheckpointError(f"Writing the checkpoint {incoming} failed ({error.strerror or error}); {kept}.") from None
    _remove_tree(previous)
    if last.exists():
        _replace(last, previous)
    _replace(incoming, last)
    _sync_dir(checkpoints_dir)
    return last


def _damage(directory: Path) -> str | None:
    """What keeps ``directory`` from being a complete checkpoint, as a clause naming the file; None when it is one."""
    state_path = directory / STATE_FILE
    try:
        digests = json.loads(state_path.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        return f"{state_path} is missing"
    except (ValueError, KeyError, TypeError):
        return f"{state_path} is cut short or damaged (not the JSON a checkpoint holds)"
    for name, digest in digests.items():
        path = directory / name
        if not path.is_file():
            return f"{path} is missing although {STATE_FILE} lists it"
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return f"{path} is cut short or damaged (its SHA-256 differs from the one in {STATE_FILE})"
    return None


def newest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The most recently written complete checkpoint in a run's ``checkpoints/`` folder; None when it holds none.

    A damaged ``last`` or ``previous`` is passed over with a warning naming the file; when no complete
    checkpoint is left, :class:`CheckpointError` names the damaged file and says what to do.
    """
    problems = []
    for name in (INCOMING, LAST, PREVIOUS):  # newest first: incoming is complete only when its rotation was cut off
        directory = checkpoints_dir / name
        if not directory.exists():
            continue
        problem = _damage(directory)
        if problem is None:
            for passed_over in problems:
                log.warning("%s; resuming from the complete checkpoint %s instead.", passed_over, directory)
            return directory
        if name != INCOMING:  # an incomplete incoming is what any crash during a save leaves
            problems.append(problem)
    if problems:
        raise CheckpointError(
            f"{problems[0]}; no complete checkpoint is left in {checkpoints_dir}: delete that folder and run without --resume to start over."
        )
    return None


def read_checkpoint(directory: Path) -> dict[str, bytes]:
    """Every file of a complete checkpoint, checked against its digest: what :func:`restore_checkpoint` takes.

    A damaged checkpoint raises :class:`CheckpointError` naming the file.
    """
    problem = _damage(directory)
    if problem:
        raise CheckpointError(
            f"{problem}; this checkpoint cannot be resumed: train from the start "
            "(without --resume or --resume-from-task-id; a task resuming its own checkpoint: reset it)."
        )
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def restore_checkpoint(files: dict[str, bytes], model, optimizer, scheduler, scaler, *, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Restore the adapters, optimizer, scheduler, scaler and rank ``rank``'s random state; return the loop state."""
    state = json.loads(files[STATE_FILE])
    state.pop("files")
    saved_world = state.get("world_size", 1)
    if saved_world != world_size:
        raise CheckpointError(
            f"The checkpoint was written by a run of {saved_world} rank(s) and this one has {world_size}; "
            f"resume with the same number of ranks (--nproc-per-node x --nodes = {saved_world})."
        )
    copy_adapter_tensors(model, load(files["adapter.safetensors"]), "the checkpoint's adapter.safetensors")
    _load_optimizer(optimizer, load(files["optimizer.safetensors"]), state.pop("optimizer")["param_groups"])
    scheduler.load_state_dict(state.pop("scheduler"))
    scaler_state = state.pop("scaler")
    if scaler_state:
        scaler.load_state_dict(scaler_state)
    _restore_rng(load(files["rng.safetensors"]), rank)
    return state
