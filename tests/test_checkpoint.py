"""``components.checkpoint`` called directly on a small adapter model: what a checkpoint holds file by file, the round
trip into a fresh model, the rotation, each damage named, the refusals in their sentences. (The crash at every disk
operation, SIGKILL and full disk, is tests/test_checkpoint_crash.py's.)"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import small_t5_config
from safetensors.torch import load, save
from transformers import T5ForConditionalGeneration

from components import checkpoint
from components.checkpoint import (
    CheckpointError,
    newest_checkpoint,
    read_checkpoint,
    restore_checkpoint,
    rng_state,
    save_checkpoint,
    write_file_atomically,
)
from components.modeling import ModelLoadError, adapter_state_dict, apply_peft


class Setup:
    """A small T5 with adapters, AdamW that has stepped twice, a scheduler and a (disabled) grad scaler."""

    def __init__(self, seed: int):
        torch.manual_seed(seed)
        self.model = apply_peft(T5ForConditionalGeneration(small_t5_config()), lora_rank=2, prompt_length=3)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1 / (1 + step))
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)

    def step(self, times: int = 2) -> None:
        ids = torch.tensor([[5, 6, 7, 1]])
        for _ in range(times):
            self.model(input_ids=ids, attention_mask=torch.ones(1, 4 + 3, dtype=torch.long), labels=ids).loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()

    def save(self, folder: Path, **options) -> Path:
        return save_checkpoint(folder, self.model, self.optimizer, self.scheduler, self.scaler, {"step": 2, "history": [1.5]}, **options)


@pytest.fixture
def trained() -> Setup:
    setup = Setup(seed=0)
    setup.step()
    return setup


def test_a_checkpoint_holds_the_adapters_optimizer_random_states_and_a_state_with_every_files_digest(trained, tmp_path):
    rng = [{"cpu": torch.get_rng_state()}, {"cpu": torch.ByteTensor([1, 2, 3])}]
    last = trained.save(tmp_path, extra_files={"best.safetensors": b"best so far"}, rng_states=rng)
    assert last == tmp_path / "last"
    files = {path.name: path.read_bytes() for path in last.iterdir()}
    assert sorted(files) == ["adapter.safetensors", "best.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    adapter = load(files["adapter.safetensors"])
    assert adapter.keys() == adapter_state_dict(trained.model).keys()
    assert all(torch.equal(adapter[name], tensor) for name, tensor in adapter_state_dict(trained.model).items())
    optimizer = load(files["optimizer.safetensors"])
    moments = trained.optimizer.state_dict()["state"]
    assert optimizer.keys() == {f"{index}.{key}" for index, values in moments.items() for key in values}
    assert all(torch.equal(optimizer[f"{index}.{key}"], value) for index, values in moments.items() for key, value in values.items())
    assert {name: tensor.tolist() for name, tensor in load(files["rng.safetensors"]).items()} == {
        "rank0.cpu": rng[0]["cpu"].tolist(),
        "rank1.cpu": [1, 2, 3],
    }
    state = json.loads(files["state.json"])
    assert state["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in files.items() if name != "state.json"}
    assert (state["step"], state["history"]) == (2, [1.5])
    assert state["scheduler"] == json.loads(json.dumps(trained.scheduler.state_dict()))
    assert state["optimizer"]["param_groups"][0]["betas"] == [0.8, 0.95] and state["scaler"] == {}
    assert files["state.json"].decode("utf-8") == json.dumps(state, indent=2)


def test_this_process_random_state_is_the_default(trained, tmp_path):
    expected = torch.get_rng_state()
    last = trained.save(tmp_path)
    assert {name: tensor.tolist() for name, tensor in load((last / "rng.safetensors").read_bytes()).items()} == {"rank0.cpu": expected.tolist()}
    assert rng_state().keys() == {"cpu"}  # no GPU here


def test_restoring_puts_every_tensor_state_and_random_state_back_into_a_fresh_model(trained, tmp_path):
    trained.save(tmp_path, rng_states=[{"cpu": torch.get_rng_state()}, {"cpu": torch.manual_seed(99).get_state()}])
    fresh = Setup(seed=0)  # the same base; other adapters, and an optimizer that never stepped
    with torch.no_grad():
        for parameter in fresh.model.parameters():
            if parameter.requires_grad:
                parameter.normal_()
    loop_state = restore_checkpoint(
        read_checkpoint(tmp_path / "last"), fresh.model, fresh.optimizer, fresh.scheduler, fresh.scaler, rank=1, world_size=1
    )
    assert loop_state == {"step": 2, "history": [1.5]}
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(99).get_state())  # rank 1's state
    for name, tensor in adapter_state_dict(trained.model).items():
        assert torch.equal(adapter_state_dict(fresh.model)[name], tensor), name
    assert fresh.scheduler.state_dict() == trained.scheduler.state_dict()
    assert fresh.optimizer.state_dict()["param_groups"] == trained.optimizer.state_dict()["param_groups"]  # betas a tuple again
    # The next step of both, from the same random state (dropout draws), is the same.
    restored = torch.get_rng_state()
    trained.step(1)
    torch.set_rng_state(restored)
    fresh.step(1)
    assert all(torch.equal(adapter_state_dict(fresh.model)[name], tensor) for name, tensor in adapter_state_dict(trained.model).items())


def test_a_scaler_state_is_restored_when_the_checkpoint_has_one(trained, tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    trained.scaler = scaler
    trained.save(tmp_path)
    fresh = Setup(seed=5)
    fresh.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    restore_checkpoint(read_checkpoint(tmp_path / "last"), fresh.model, fresh.optimizer, fresh.scheduler, fresh.scaler)
    assert fresh.scaler.get_scale() == 512.0


def test_a_run_of_other_ranks_is_refused(trained, tmp_path):
    trained.save(tmp_path)
    files = read_checkpoint(tmp_path / "last")
    with pytest.raises(CheckpointError) as refused:
        restore_checkpoint(files, trained.model, trained.optimizer, trained.scheduler, trained.scaler, world_size=2)
    assert str(refused.value) == (
        "The checkpoint was written by a run of 1 rank(s) and this one has 2; resume with the same number of ranks (--nproc-per-node x --nodes = 1)."
    )


def test_each_save_rotates_last_to_previous_and_removes_what_a_cut_off_save_left(trained, tmp_path):
    trained.save(tmp_path, extra_files={"marker": b"first"})
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "junk").write_bytes(b"left by a crash")
    trained.save(tmp_path, extra_files={"marker": b"second"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last", "previous"]
    trained.save(tmp_path, extra_files={"marker": b"third"})
    assert [(tmp_path / name / "marker").read_bytes() for name in ("last", "previous")] == [b"third", b"second"]


def test_newest_checkpoint_takes_a_complete_incoming_then_last_then_previous(trained, tmp_path, caplog):
    assert newest_checkpoint(tmp_path) is None
    trained.save(tmp_path, extra_files={"marker": b"1"})
    trained.save(tmp_path, extra_files={"marker": b"2"})
    assert newest_checkpoint(tmp_path) == tmp_path / "last"
    (tmp_path / "last").rename(tmp_path / "incoming")  # a save cut off between its two renames
    assert newest_checkpoint(tmp_path) == tmp_path / "incoming"
    (tmp_path / "incoming" / "state.json").unlink()  # an incomplete incoming: any crash during a save leaves one, not worth a warning
    with caplog.at_level(logging.WARNING, logger="components.checkpoint"):
        assert newest_checkpoint(tmp_path) == tmp_path / "previous"
    assert caplog.records == []


@pytest.mark.parametrize(
    "damage, clause",
    [
        (lambda last: (last / "state.json").unlink(), "{last}/state.json is missing"),
        (
            lambda last: (last / "state.json").write_text("{", encoding="utf-8"),
            "{last}/state.json is cut short or damaged (not the JSON a checkpoint holds)",
        ),
        (
            lambda last: (last / "state.json").write_text("[]", encoding="utf-8"),
            "{last}/state.json is cut short or damaged (not the JSON a checkpoint holds)",
        ),
        (
            lambda last: (last / "state.json").write_text("{}", encoding="utf-8"),
            "{last}/state.json is cut short or damaged (not the JSON a checkpoint holds)",
        ),
        (lambda last: (last / "optimizer.safetensors").unlink(), "{last}/optimizer.safetensors is missing although state.json lists it"),
        (
            lambda last: (last / "adapter.safetensors").write_bytes((last / "adapter.safetensors").read_bytes()[:-1]),
            "{last}/adapter.safetensors is cut short or damaged (its SHA-256 differs from the one in state.json)",
        ),
    ],
)
def test_a_damaged_last_is_named_and_passed_over_and_nothing_complete_left_is_refused(damage, clause, trained, tmp_path, caplog):
    trained.save(tmp_path)
    trained.save(tmp_path)
    last = tmp_path / "last"
    damage(last)
    clause = clause.format(last=last)
    with caplog.at_level(logging.WARNING, logger="components.checkpoint"):
        assert newest_checkpoint(tmp_path) == tmp_path / "previous"
    assert [record.getMessage() for record in caplog.records] == [f"{clause}; resuming from the complete checkpoint {tmp_path / 'previous'} instead."]
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint(last)
    assert str(refused.value) == (
        f"{clause}; this checkpoint cannot be resumed: train from the start (without --resume or --resume-from-task-id; "
        "a task resuming its own checkpoint: reset it)."
    )
    (tmp_path / "previous" / "state.json").unlink()
    with pytest.raises(CheckpointError) as refused:
        newest_checkpoint(tmp_path)
    assert str(refused.value) == (
        f"{clause}; no complete checkpoint is left in {tmp_path}: delete that folder and run without --resume to start over."
    )


def test_reading_a_checkpoint_gives_every_file_by_name(trained, tmp_path):
    last = trained.save(tmp_path, extra_files={"best.safetensors": save({"x": torch.ones(1)})})
    assert read_checkpoint(last) == {path.name: path.read_bytes() for path in last.iterdir()}


@pytest.mark.parametrize("earlier", [False, True])
def test_a_failed_write_removes_the_incoming_folder_and_says_what_is_kept(earlier, trained, tmp_path, monkeypatch):
    if earlier:
        trained.save(tmp_path)
    written = checkpoint._write_file

    def full_disk(path: Path, data: bytes) -> None:
        if path.name == "optimizer.safetensors":
            raise OSError(28, "No space left on device")
        written(path, data)

    monkeypatch.setattr(checkpoint, "_write_file", full_disk)
    with pytest.raises(CheckpointError) as refused:
        trained.save(tmp_path)
    kept = (
        f"the checkpoint before it in {tmp_path} is intact: free disk space, then rerun with --resume"
        if earlier
        else "no checkpoint was saved before it: free disk space and start again"
    )
    assert str(refused.value) == f"Writing the checkpoint {tmp_path / 'incoming'} failed (No space left on device); {kept}."
    assert sorted(path.name for path in tmp_path.iterdir()) == (["last"] if earlier else [])


def test_an_atomic_write_replaces_the_file_whole_or_leaves_it(tmp_path, monkeypatch):
    target = tmp_path / "best.safetensors"
    target.write_bytes(b"old")
    write_file_atomically(target, b"new")
    assert target.read_bytes() == b"new" and sorted(path.name for path in tmp_path.iterdir()) == ["best.safetensors"]

    def fail(source: Path, destination: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "_replace", fail)
    with pytest.raises(CheckpointError) as refused:
        write_file_atomically(target, b"newer")
    assert str(refused.value) == (
        f"Writing {target} failed (No space left on device); the checkpoints are intact: free disk space, then rerun with --resume."
    )
    assert target.read_bytes() == b"new" and sorted(path.name for path in tmp_path.iterdir()) == ["best.safetensors"]  # no scratch file left


def test_the_first_save_makes_the_checkpoints_folder(trained, tmp_path):
    assert trained.save(tmp_path / "run" / "checkpoints") == tmp_path / "run" / "checkpoints" / "last"


def test_a_checkpoint_of_two_ranks_resumes_with_two_and_is_refused_with_one(trained, tmp_path):
    save_checkpoint(
        tmp_path,
        trained.model,
        trained.optimizer,
        trained.scheduler,
        trained.scaler,
        {"step": 2, "world_size": 2},
        rng_states=[{"cpu": torch.get_rng_state()}, {"cpu": torch.get_rng_state()}],
    )
    files = read_checkpoint(tmp_path / "last")
    assert restore_checkpoint(files, trained.model, trained.optimizer, trained.scheduler, trained.scaler, rank=1, world_size=2)["world_size"] == 2
    with pytest.raises(CheckpointError, match=r"^The checkpoint was written by a run of 2 rank\(s\) and this one has 1; "):
        restore_checkpoint(files, trained.model, trained.optimizer, trained.scheduler, trained.scaler)


def test_a_checkpoint_of_other_adapters_is_named_as_the_checkpoints_file(trained, tmp_path):
    trained.save(tmp_path)
    torch.manual_seed(0)
    other = apply_peft(T5ForConditionalGeneration(small_t5_config()), lora_rank=4, prompt_length=3)
    optimizer = torch.optim.AdamW([p for p in other.parameters() if p.requires_grad])
    with pytest.raises(ModelLoadError, match=r"^the checkpoint.s adapter\.safetensors: \S+ has shape \("):
        restore_checkpoint(
            read_checkpoint(tmp_path / "last"), other, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1), trained.scaler
        )


def test_an_optimizer_without_betas_round_trips(trained, tmp_path):
    """SGD's groups have no betas (AdamW's are made a tuple again on loading)."""
    trainable = [p for p in trained.model.parameters() if p.requires_grad]
    trained.optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    trained.scheduler = torch.optim.lr_scheduler.LambdaLR(trained.optimizer, lambda step: 1.0)
    trained.step()
    trained.save(tmp_path)
    fresh = torch.optim.SGD(trainable, lr=0.5, momentum=0.1)
    restore_checkpoint(
        read_checkpoint(tmp_path / "last"), trained.model, fresh, torch.optim.lr_scheduler.LambdaLR(fresh, lambda step: 1.0), trained.scaler
    )
    assert fresh.state_dict()["param_groups"] == trained.optimizer.state_dict()["param_groups"]
    assert all(torch.equal(fresh.state[p]["momentum_buffer"], trained.optimizer.state[p]["momentum_buffer"]) for p in trainable)


def test_on_a_gpu_its_random_state_is_saved_and_restored_beside_the_cpus(trained, tmp_path, monkeypatch):
    """CUDA made available, its random state a recorded stand-in."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.ByteTensor([7, 7, 7]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state: restored.append(state.tolist()))
    assert {device: state.tolist() for device, state in rng_state().items() if device == "cuda"} == {"cuda": [7, 7, 7]}
    trained.save(tmp_path, rng_states=[{"cpu": torch.get_rng_state(), "cuda": torch.ByteTensor([1, 2])}, {"cpu": torch.get_rng_state()}])
    files = read_checkpoint(tmp_path / "last")
    restore_checkpoint(files, trained.model, trained.optimizer, trained.scheduler, trained.scaler, rank=0)
    restore_checkpoint(files, trained.model, trained.optimizer, trained.scheduler, trained.scaler, rank=1)  # saved without a GPU state
    assert restored == [[1, 2]]


def test_an_atomic_write_that_cannot_start_is_the_same_sentence(tmp_path):
    target = tmp_path / "missing-folder" / "best.safetensors"
    with pytest.raises(CheckpointError) as refused:
        write_file_atomically(target, b"new")
    assert str(refused.value) == (
        f"Writing {target} failed (No such file or directory); the checkpoints are intact: free disk space, then rerun with --resume."
    )
