"""Checkpoints survive a crash at any instant: SIGKILL at every step of the saves, a full disk, damaged files.

Each run is a fork of this process (one thread, the same pristine model in memory), so the ~100
trainings cost no interpreter or torch start-up. The kill points come from the operation log of an
uninterrupted run: the child is killed with SIGKILL just before one of the checkpoint module's disk
operations, or halfway through writing a file (a torn file), and a second child resumes with the
checkpoint the train step's ``--resume`` would take. Every resumed run must end with the adapters,
best adapter and validation history of the uninterrupted run, bit for bit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_script
from forked import exited_cleanly, in_child
from safetensors.torch import load_file, save_file

from components import checkpoint
from components.checkpoint import CheckpointError, newest_checkpoint, read_checkpoint
from components.data import preprocess, read_tsv
from components.modeling import adapter_state_dict, apply_peft, load_base_model, load_tokenizer
from components.training import TrainConfig, train_adapters

# 4 train rows a step, 3 steps, a checkpoint after each: the kill points cover all after the first is complete.
CONFIG = TrainConfig(batch_size=4, grad_accum_steps=1, learning_rate=3e-3, max_steps=3, eval_every=1, gradient_checkpointing=False, seed=5)
DISK_OPERATIONS = ("_write_file", "_replace", "_remove_tree", "_sync_dir")


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    frame = read_tsv("data/sample/train.tsv")
    torch.manual_seed(0)
    model = apply_peft(load_base_model(str(tiny_model_dir)), lora_rank=4, lora_alpha=8, lora_dropout=0.1, prompt_length=4)
    # dropout (LoRA's and the base model's own) draws on the RNG: a resumed run matches only if its state is restored
    assert model.config.dropout_rate > 0
    return model, tokenizer, preprocess(frame.iloc[:16], tokenizer, 32, 32), preprocess(frame.iloc[16:20], tokenizer, 32, 32)


def instrument(on_operation: Callable[[int, str, tuple, Callable], object]) -> None:
    """Route the checkpoint module's disk operations through ``on_operation(index, name, args, original)`` (in a child only)."""
    counter = iter(range(10**9))
    for name in DISK_OPERATIONS:
        original = getattr(checkpoint, name)
        setattr(checkpoint, name, lambda *args, _name=name, _original=original: on_operation(next(counter), _name, args, _original))


def train(setup, output_dir: Path, resume: bool = False) -> None:
    """One training run as the train step does it (``--resume``: the newest complete checkpoint); writes what it ended with."""
    model, tokenizer, train_split, validation_split = setup
    resume_from = None
    if resume:
        resume_from = newest_checkpoint(output_dir / "checkpoints")
        assert resume_from is not None, "no complete checkpoint after the kill"
    result = train_adapters(model, tokenizer, train_split, validation_split, CONFIG, output_dir=output_dir, resume_from=resume_from)
    save_file({name: t.contiguous() for name, t in adapter_state_dict(model).items()}, str(output_dir / "final.safetensors"))
    (output_dir / "history.json").write_text(json.dumps(result.history))


def outcome(output_dir: Path) -> tuple[dict, dict, list]:
    return (
        load_file(str(output_dir / "final.safetensors")),
        load_file(str(output_dir / "checkpoints/best/adapter.safetensors")),
        json.loads((output_dir / "history.json").read_text()),
    )


def same_outcome(output_dir: Path, reference: Path) -> bool:
    (final, best, history), (final_ref, best_ref, history_ref) = outcome(output_dir), outcome(reference)
    tensors_equal = all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in ((final, final_ref), (best, best_ref)))
    return tensors_equal and history == history_ref


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """The reference run, and the log of its disk operations (name, path)."""
    output_dir = tmp_path_factory.mktemp("uninterrupted")

    def record_and_train():
        log = []

        def record(index, name, args, original):
            log.append((name, str(Path(args[0]).relative_to(output_dir))))
            return original(*args)

        instrument(record)
        train(setup, output_dir)
        (output_dir / "operations.json").write_text(json.dumps(log))

    assert exited_cleanly(in_child(record_and_train))
    return output_dir, [tuple(entry) for entry in json.loads((output_dir / "operations.json").read_text())]


def kill_points(operations: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """(operation index, "before" or "torn") for every operation after the first checkpoint is complete."""
    first_complete = operations.index(("_replace", "checkpoints/incoming")) + 1
    return [
        (index, mode)
        for index in range(first_complete, len(operations))
        for mode in ("before", "torn")
        if mode == "before" or operations[index][0] == "_write_file"
    ]


def test_sigkill_at_every_disk_operation_of_a_save_then_resume_ends_bit_identical(setup, uninterrupted, tmp_path):
    reference, operations = uninterrupted
    points = kill_points(operations)
    assert len(points) >= 30 and {operations[i][0] for i, _ in points} == set(DISK_OPERATIONS)
    killed = resumed = identical = 0
    for number, (index, mode) in enumerate(points):
        output_dir = tmp_path / f"kill{number}"

        def die_at_the_point(current, name, args, original, index=index, mode=mode):
            if current == index:
                if mode == "torn":
                    path, data = args
                    path.write_bytes(data[: len(data) // 2])  # half the file reached the disk
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args)

        def train_until_killed():
            instrument(die_at_the_point)
            train(setup, output_dir)

        status = in_child(train_until_killed)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"point {index} {mode} {operations[index]}: not killed"
        killed += 1
        if not exited_cleanly(in_child(lambda: train(setup, output_dir, resume=True))):
            continue
        resumed += 1
        identical += same_outcome(output_dir, reference)
    print(f"fault injection: {len(points)} kill points, {killed} killed by SIGKILL, {resumed} resumes completed, {identical} bit-identical")
    assert killed == resumed == identical == len(points)


@pytest.mark.parametrize(
    "full_at, message_start, kept_step",
    [
        (
            "checkpoints/incoming/optimizer.safetensors",
            "Writing the checkpoint {out}/checkpoints/incoming failed (No space left on device); "
            "the checkpoint before it in {out}/checkpoints is intact",
            1,
        ),
        (
            "checkpoints/best/adapter.safetensors.tmp",
            "Writing {out}/checkpoints/best/adapter.safetensors failed (No space left on device); the checkpoints are intact",
            2,
        ),
    ],
    ids=["checkpoint", "best-adapter"],
)
def test_a_full_disk_stops_the_run_with_one_sentence_and_keeps_a_complete_checkpoint(
    setup, uninterrupted, tmp_path, full_at, message_start, kept_step
):
    reference, operations = uninterrupted
    writes = [path for name, path in operations if name == "_write_file"]
    second_save_write = [i for i, path in enumerate(writes) if path == full_at][1]  # during the second save
    message_file = tmp_path / "message.txt"

    def fill_the_disk():
        write_count = iter(range(10**9))

        def full_disk(index, name, args, original):
            if name == "_write_file" and next(write_count) == second_save_write:
                args[0].write_bytes(args[1][:100])  # what fitted
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]))
            return original(*args)

        instrument(full_disk)
        try:
            train(setup, tmp_path)
        except CheckpointError as error:
            message_file.write_text(str(error))

    assert exited_cleanly(in_child(fill_the_disk))
    message = message_file.read_text()
    assert message.startswith(message_start.format(out=tmp_path)) and message.endswith("free disk space, then rerun with --resume.")
    assert "\n" not in message and ". " not in message  # one sentence
    assert not (tmp_path / "checkpoints/incoming").exists() and not (tmp_path / full_at).exists()  # partial files gone
    assert newest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints/last"
    assert json.loads((tmp_path / "checkpoints/last/state.json").read_text())["step"] == kept_step

    assert exited_cleanly(in_child(lambda: train(setup, tmp_path, resume=True)))
    assert same_outcome(tmp_path, reference)


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "cut" else b"\xff" * 8 + data[8:])  # "header": a huge header length


@pytest.mark.parametrize("file, how", [("state.json", "cut"), ("adapter.safetensors", "header"), ("optimizer.safetensors", "cut")])
def test_a_damaged_last_checkpoint_is_named_and_resume_falls_back_to_the_previous(setup, uninterrupted, tmp_path, caplog, file, how):
    reference, _ = uninterrupted
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    damage(tmp_path / "checkpoints/last" / file, how)
    with caplog.at_level(logging.WARNING, logger="components.checkpoint"):
        assert newest_checkpoint(tmp_path / "checkpoints") == tmp_path / "checkpoints/previous"
    [warning] = caplog.messages
    assert warning.startswith(f"{tmp_path / 'checkpoints/last' / file} is cut short or damaged")
    assert warning.endswith(f"resuming from the complete checkpoint {tmp_path / 'checkpoints/previous'} instead.")

    assert exited_cleanly(in_child(lambda: train(setup, tmp_path, resume=True)))
    assert same_outcome(tmp_path, reference)


def test_with_no_complete_checkpoint_left_resume_says_which_file_and_what_to_do(uninterrupted, tmp_path, clearml_home):
    reference, _ = uninterrupted
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    damage(tmp_path / "checkpoints/last/state.json", "cut")
    damage(tmp_path / "checkpoints/previous/rng.safetensors", "header")
    expected = f"{tmp_path / 'checkpoints/last/state.json'} is cut short or damaged"
    with pytest.raises(CheckpointError, match="delete that folder and run without --resume to start over") as raised:
        newest_checkpoint(tmp_path / "checkpoints")
    assert str(raised.value).startswith(expected)

    # a checkpoint fetched as a task artifact is checked the same way before anything is loaded
    with pytest.raises(CheckpointError, match=r"rng\.safetensors is cut short or damaged .*cannot be resumed: train from the start"):
        read_checkpoint(tmp_path / "checkpoints/previous")

    # the train step: one line naming the file, no traceback
    completed = run_script(
        clearml_home,
        "steps/train.py",
        "--local",
        "--resume",
        "--data-dir",
        str(tmp_path / "unused"),
        "--model",
        "tiny",
        "--output-dir",
        str(tmp_path),
        check=False,
    )
    assert completed.returncode != 0 and "Traceback" not in completed.stderr
    last_line = completed.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: {expected}") and last_line.endswith("start over.")


def record_os_calls(root: Path, log: list) -> None:
    """Log, in a child, the os-level calls that make a save durable, for paths under ``root``: opening a file
    for writing, each write, fsync (of a file or a folder), close, os.replace and shutil.rmtree."""
    import builtins

    real_open, real_os_open, real_fsync, real_replace, real_rmtree = builtins.open, os.open, os.fsync, os.replace, shutil.rmtree
    names: dict[int, str] = {}  # open descriptor -> path under root ("dir/" for a folder)

    def under_root(path) -> str | None:
        path = Path(path).resolve()
        return str(path.relative_to(root)) if path.is_relative_to(root) else None

    class RecordedFile:
        def __init__(self, file, name: str):
            self._file, self._name = file, name

        def write(self, data):
            log.append(("write", self._name))
            return self._file.write(data)

        def __getattr__(self, attribute):
            return getattr(self._file, attribute)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            log.append(("close", self._name))
            return self._file.__exit__(*exc)

    def recorded_open(path, mode="r", *args, **kwargs):
        file = real_open(path, mode, *args, **kwargs)
        name = under_root(path) if isinstance(path, (str, os.PathLike)) and "w" in mode else None
        if name is None:
            return file
        names[file.fileno()] = name
        return RecordedFile(file, name)

    def recorded_os_open(path, flags, *args, **kwargs):
        descriptor = real_os_open(path, flags, *args, **kwargs)
        if (name := under_root(path)) is not None:
            names[descriptor] = name + "/"
        return descriptor

    def recorded_fsync(descriptor):
        real_fsync(descriptor)
        if descriptor in names:
            log.append(("fsync", names[descriptor]))

    def recorded_replace(source, target):
        real_replace(source, target)
        log.append(("replace", under_root(source), under_root(target)))

    def recorded_rmtree(path, *args, **kwargs):
        log.append(("rmtree", under_root(path)))
        return real_rmtree(path, *args, **kwargs)

    builtins.open, os.open, os.fsync, os.replace, shutil.rmtree = recorded_open, recorded_os_open, recorded_fsync, recorded_replace, recorded_rmtree


def test_each_save_writes_and_fsyncs_every_file_before_renaming_and_syncs_the_folders(setup, tmp_path):
    """The write protocol itself, seen at the os level (a SIGKILL keeps the page cache, so the crash tests above pass
    without any fsync; a power cut does not). For each of the 3 saves: every file of ``incoming`` written, then
    fsynced, then closed, all before ``state.json`` is begun; ``state.json`` fsynced; ``incoming`` itself synced; only
    then ``previous`` removed, ``last`` renamed to ``previous``, ``incoming`` to ``last``, and ``checkpoints/`` synced.
    The best adapter's copy: written, fsynced, renamed into place, its folder synced."""
    output_dir = tmp_path.resolve()

    def train_recorded():
        log: list = []
        record_os_calls(output_dir, log)
        train(setup, output_dir)
        (output_dir / "os-calls.json").write_text(json.dumps(log))

    assert exited_cleanly(in_child(train_recorded))
    log = [tuple(entry) for entry in json.loads((output_dir / "os-calls.json").read_text())]
    # One save per evaluation: from clearing what a cut-off save left in incoming to the sync of checkpoints/.
    starts = [i for i, entry in enumerate(log) if entry == ("rmtree", "checkpoints/incoming")]
    ends = [i for i, entry in enumerate(log) if entry == ("fsync", "checkpoints/")]
    assert len(starts) == len(ends) == CONFIG.max_steps
    for number, (start, end) in enumerate(zip(starts, ends)):
        save = log[start : end + 1]

        def at(*entry) -> int:
            assert entry in save, f"save {number + 1}: no {entry} in {save}"
            return save.index(entry)

        def last(*entry) -> int:
            return len(save) - 1 - save[::-1].index(entry)

        written = sorted({entry[1] for entry in save if entry[0] == "write"})
        state = "checkpoints/incoming/state.json"
        assert state in written and {"checkpoints/incoming/adapter.safetensors", "checkpoints/incoming/optimizer.safetensors"} <= set(written)
        for name in written:
            assert last("write", name) < at("fsync", name) < at("close", name), (number, name)
            if name != state:
                assert at("close", name) < at("write", state), (number, name)
        rotation = [at("fsync", state), at("fsync", "checkpoints/incoming/")]
        if number > 0:  # there is a last to keep as previous
            rotation += [at("rmtree", "checkpoints/previous"), at("replace", "checkpoints/last", "checkpoints/previous")]
        rotation += [at("replace", "checkpoints/incoming", "checkpoints/last"), at("fsync", "checkpoints/")]
        assert rotation == sorted(rotation), (number, save)
    best = "checkpoints/best/adapter.safetensors"
    copies = [i for i, entry in enumerate(log) if entry == ("replace", f"{best}.tmp", best)]
    assert copies
    for index in copies:
        last_write = max(i for i, entry in enumerate(log[:index]) if entry == ("write", f"{best}.tmp"))
        assert ("fsync", f"{best}.tmp") in log[last_write:index] and log[index + 1] == ("fsync", "checkpoints/best/")
