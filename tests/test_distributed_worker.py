"""``python -m components.distributed.worker``, the command a rank of the train step's ``--nproc-per-node`` runs: it calls
the entry function named with the arguments given, and an error ends the rank with its sentence and exit status 1.
The ranks of the train step end to end: test_distributed_steps.py."""

from __future__ import annotations

import json

from conftest import run_script


def test_a_rank_calls_the_entry_with_the_arguments_as_a_namespace(clearml_home):
    completed = run_script(clearml_home, "-m", "components.distributed.worker", "builtins:print", json.dumps({"rank": 1, "model": "тест"}))
    assert completed.stdout == "namespace(rank=1, model='тест')\n"  # types.SimpleNamespace: attributes as argparse's


def test_an_error_in_the_entry_ends_the_rank_with_its_sentence_and_status_1(clearml_home):
    completed = run_script(clearml_home, "-m", "components.distributed.worker", "json:loads", json.dumps({"rank": 1}), check=False)
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        "error: TypeError: the JSON object must be str, bytes or bytearray, not SimpleNamespace (the traceback is above)"
    )
