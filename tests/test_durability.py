"""Every measure the project takes so that data survives a crash has a test that fails without it.

An fsync, an atomic rename, a file lock or SQLite's journal and sync settings change nothing a passing test sees
until the process is killed or the machine loses power at the wrong moment. So ``DURABILITY`` names, for each such
call in the product's code, the test that removes its protection (intercepting the calls in order, killing a child
mid-write, reading the setting back as the data is written) and fails. A new call without an entry fails
test_every_durability_call_has_a_test; the named tests were each seen failing with their call removed or lowered.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import PRODUCT_PACKAGES

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = (*PRODUCT_PACKAGES, "benchmarks")
# The calls that make data durable, atomic or exclusive.
DURABILITY_CALL = re.compile(r"os\.fsync\(|os\.replace\(|os\.rename\(|\.rename\(|fcntl\.flock\(|PRAGMA (synchronous|journal_mode)|O_EXCL")

CHECKPOINT_ORDER = "tests/test_checkpoint_crash.py::test_each_save_writes_and_fsyncs_every_file_before_renaming_and_syncs_the_folders"
CHECKPOINT_KILLS = "tests/test_checkpoint_crash.py::test_sigkill_at_every_disk_operation_of_a_save_then_resume_ends_bit_identical"
VOTE_SETTINGS = "tests/test_human_eval_store.py::test_a_vote_is_written_in_wal_mode_with_synchronous_full"

# (file, the call's line, stripped) -> the test that fails without it.
DURABILITY = {
    ("components/checkpoint.py", "os.fsync(file.fileno())"): CHECKPOINT_ORDER,
    ("components/checkpoint.py", "os.replace(source, target)"): CHECKPOINT_KILLS,
    ("components/checkpoint.py", "os.fsync(descriptor)"): CHECKPOINT_ORDER,
    ("components/human_eval/store.py", 'connection.execute("PRAGMA synchronous=FULL")'): VOTE_SETTINGS,
    ("components/human_eval/store.py", 'connection.execute("PRAGMA journal_mode=WAL")  # stays set in the file'): VOTE_SETTINGS,
    (
        "clearml_adapter/tracking.py",
        "partial.rename(target)",
    ): "tests/test_tracking.py::test_a_checkpoint_extraction_cut_short_leaves_no_folder_that_a_later_one_would_take",
    (
        "components/tiny.py",
        "fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time: a process that waited here finds it built",
    ): "tests/test_tiny.py::test_two_builds_of_the_tiny_model_at_once_pretrain_it_once",
    (
        "components/tiny.py",
        "os.rename(scratch, target)  # complete or absent, for a process that does not lock (or was killed mid-build)",
    ): "tests/test_tiny.py::test_a_build_that_dies_before_its_last_file_leaves_no_model_behind",
}


def durability_calls() -> set[tuple[str, str]]:
    found = set()
    for package in PRODUCT:
        for path in (ROOT / package).rglob("*.py"):
            for line in path.read_text(encoding="utf-8").splitlines():
                if DURABILITY_CALL.search(line):
                    found.add((str(path.relative_to(ROOT)), line.strip()))
    return found


def test_every_durability_call_has_a_test():
    calls = durability_calls()
    assert calls == set(DURABILITY), (
        f"durability calls without a DURABILITY entry (name the test that fails without each): {sorted(calls - set(DURABILITY))}; "
        f"entries of no call (stale): {sorted(set(DURABILITY) - calls)}"
    )


@pytest.mark.parametrize("reference", sorted(set(DURABILITY.values())))
def test_each_named_test_exists(reference):
    path, _, name = reference.partition("::")
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    assert any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body), f"{path} defines no {name}"
