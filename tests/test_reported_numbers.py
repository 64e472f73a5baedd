"""Every number a user reads is in the inventory of docs/testing.md, with the test that recomputes it.

A figure can be wrong while every test passes when the tests only check that it is there, or compare it with
another output of the same code. So docs/testing.md lists every reported number (of summary.json, the steps'
JSON outputs, the ClearML scalars, report.md, the model card and the benchmark records), each with the test
that recomputes it from the raw data (predictions, references, tensors, the data files) by a path that does
not call the code that produced it. These tests collect the names the tiny pipeline run and the benchmark
records report, and fail on a name without an entry, an entry of no name, or an entry naming no test.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_script
from markdown_tables import table_rows
from reference_model import source
from safetensors.torch import load_file
from step_runs import scalars
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from components.metrics import PROTOCOL_METRICS, ROUGE_TYPES
from pipelines.definition import STEP_NAMES
from pipelines.report import REPORT_FILE

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "docs" / "testing.md"
INVENTORY_HEADER = "| output | name | recomputed by |"
BENCHMARK_RECORDS = ROOT / "benchmarks" / "results" / "cpu.jsonl"
METRICS = {*PROTOCOL_METRICS, *(f"published_{rouge}" for rouge in ROUGE_TYPES), "loss"}
SPLITS = {"train", "validation", "test"}
# The steps' JSON outputs, under the run's output folder.
JSON_OUTPUTS = (
    "summary.json",
    "evaluate/evaluation.json",
    "train/training.json",
    "ingest/ingest_report.json",
    "preprocess/tokenization.json",
    *(f"{step}/result.json" for step in STEP_NAMES),
)


def generic(segment: str) -> str:
    """A name's part with the metric in it written ``<metric>`` ("base bleu" -> "base <metric>")."""
    for name in sorted(METRICS, key=len, reverse=True):
        if re.fullmatch(rf"(.* )?{re.escape(name)}( .*)?", segment):
            return segment.replace(name, "<metric>")
    return segment


def numeric_names(value, prefix: str = "") -> set[str]:
    """The dotted names of the numbers (booleans aside) in a JSON value; a list's items are ``name[]``."""
    if isinstance(value, dict):
        return {name for key, item in value.items() for name in numeric_names(item, f"{prefix}{'.' if prefix else ''}{generic(key)}")}
    if isinstance(value, list):
        return {name for item in value for name in numeric_names(item, f"{prefix}[]")}
    return {prefix} if isinstance(value, (int, float)) and not isinstance(value, bool) else set()


def scalar_names(session: Path) -> set[str]:
    """title/series of every scalar an offline ClearML session holds (metrics.jsonl, one event list per line)."""
    events = session / "metrics.jsonl"
    if not events.is_file():
        return set()
    return {
        f"{generic(event['metric'])}/{generic(event['variant'])}"
        for line in events.read_text().splitlines()
        if line.strip()
        for event in json.loads(line)
        if event.get("type") == "training_stats_scalar"
    }


def reported_by_the_pipeline(output_dir: Path, summary: dict) -> set[tuple[str, str]]:
    reported = {
        (Path(path).name, name)
        for path in JSON_OUTPUTS
        if (output_dir / path).is_file()
        for name in numeric_names(json.loads((output_dir / path).read_text()))
    }
    for session in summary["offline_sessions"]:
        folder = Path(session).with_suffix("")
        step = json.loads((folder / "task.json").read_text())["name"]
        reported |= {(f"ClearML scalars of {step}", name) for name in scalar_names(folder)}
    for document, header in ((output_dir / REPORT_FILE, "| metric |"), (output_dir / "export" / "model" / "README.md", "| metric |")):
        if not document.is_file():
            continue
        lines = document.read_text().splitlines()
        columns = next(line for line in lines if line.startswith(header))
        reported |= {(document.name, f"column {cell.strip()}") for cell in columns.strip("|").split("|")[1:]}
    return reported


def matches(name: str, pattern: str) -> bool:
    """Whether ``name`` is ``pattern``, where ``*`` stands for any part of a name (and brackets are themselves)."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name) is not None


def reported_by_the_rating_step(tmp_path: Path) -> set[tuple[str, str]]:
    """The names a rating session reports (steps/rate.py), from a session of three systems: ``human_evaluation.json``
    (``summarise(...).as_dict()``), the task's single values and tables (``report_summary``, recorded) and the numeric
    columns of ``ratings.tsv`` (``RatingStore.ratings()``, every vote of one rater)."""
    from test_human_eval_statistics import RecordingLogger, three_systems_session

    from clearml_adapter.human_evaluation import report_summary
    from components.human_eval.session import assign
    from components.human_eval.store import RatingStore
    from components.human_eval.summary import summarise

    items, votes = three_systems_session()
    summary = summarise(votes, items, bootstrap=5)
    logger = RecordingLogger()
    report_summary(type("Task", (), {"get_logger": lambda self: logger})(), summary)
    reported = {("human_evaluation.json", name) for name in numeric_names(summary.as_dict())}
    reported |= {("ClearML single values of rate", generic(name)) for name in logger.values}
    reported |= {
        ("ClearML tables of rate", f"{series} column {column}")
        for (_, series, _), table in logger.tables.items()
        for column in table.select_dtypes("number").columns
    }
    store = RatingStore.create(tmp_path / "session.db", items, assign(items, ["r1"], overlap=1, seed=0), {})
    while (shown := store.next_item("r1")) is not None:
        store.record_vote("r1", shown.item_id, "left")
    return reported | {("ratings.tsv", column) for rating in store.ratings() for column, value in rating.items() if isinstance(value, (int, float))}


def reported_by_a_sweep(env: dict, tmp_path: Path) -> set[tuple[str, str]]:
    """The names of ``hpo_summary.json``, from a local sweep with a failed trial and the seed-to-seed noise (its steps
    stand-ins: tests/test_hpo.py's ``run_stand_in_sweep``)."""
    from test_hpo import run_stand_in_sweep

    out = tmp_path / "sweep"
    completed = run_stand_in_sweep(["--trials", "4", "--noise-seeds", "2", "--output-dir", str(out)], env, tmp_path / "calls.json")
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {("hpo_summary.json", name) for name in numeric_names(json.loads((out / "hpo_summary.json").read_text(encoding="utf-8")))}


def reported_by_the_server_sweep() -> set[tuple[str, str]]:
    """The numeric columns of the ``trials`` table a sweep on a server reports to its optimizer task (``report_trials``,
    recorded, for a completed trial and a failed one)."""
    from test_human_eval_statistics import RecordingLogger

    from pipelines.sweep.server import TrialRecord, report_trials

    logger = RecordingLogger()
    records = [TrialRecord("t1", "completed", 0.5, {"lora_rank": "4"}), TrialRecord("t2", "failed", None, {"lora_rank": "8"})]
    report_trials(type("Task", (), {"get_logger": lambda self: logger})(), records, records[0])
    return {
        ("ClearML tables of the server sweep", f"{series} column {column}")
        for (_, series, _), table in logger.tables.items()
        for column in table.select_dtypes("number").columns
    }


def reported_by_the_benchmarks() -> set[tuple[str, str]]:
    """The names of the benchmark records the tables of docs/performance.md are read from (``benchmarks/results/cpu.jsonl``), per script."""
    records = [json.loads(line) for line in BENCHMARK_RECORDS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {(f"benchmark {record['benchmark'].split()[0]}", name) for record in records for name in numeric_names(record)}


def inventory() -> dict[tuple[str, str], str]:
    return {(output.strip("`"), name.strip("`")): tests for output, name, tests in table_rows(INVENTORY.read_text(), INVENTORY_HEADER)}


def session_of(summary: dict, step: str) -> Path:
    return Path(next(session for session in summary["offline_sessions"] if Path(session).stem == summary["task_ids"][step])).with_suffix("")


def test_every_reported_name_has_an_inventory_entry_naming_its_tests(tiny_pipeline, clearml_home, tmp_path):
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    reported = (
        reported_by_the_pipeline(tiny_pipeline, summary)
        | reported_by_the_rating_step(tmp_path)
        | reported_by_a_sweep(clearml_home, tmp_path)
        | reported_by_the_server_sweep()
        | reported_by_the_benchmarks()
    )
    entries = inventory()
    covered = {output: [name for entry_output, name in entries if entry_output == output] for output, _ in reported}
    unlisted = sorted((output, name) for output, name in reported if not any(matches(name, pattern) for pattern in covered[output]))
    assert not unlisted, f"reported numbers with no entry in {INVENTORY.relative_to(ROOT)} (name the test that recomputes each): {unlisted}"
    stale = sorted((output, pattern) for output, pattern in entries if not any(o == output and matches(n, pattern) for o, n in reported))
    assert not stale, f"entries of {INVENTORY.relative_to(ROOT)} that match no reported number: {stale}"
    for (output, name), tests in entries.items():
        references = re.findall(r"tests/[\w/]+\.py::\w+", tests)
        assert references, f"{output} {name}: names no test"
        for reference in references:
            path, _, function = reference.partition("::")
            tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
            assert any(isinstance(node, ast.FunctionDef) and node.name == function for node in tree.body), (
                f"{output} {name}: {reference} does not exist"
            )


def test_the_clearml_scalars_are_the_recomputed_figures(tiny_pipeline):
    """The evaluate task's scalars are evaluation.json's figures (recomputed from the predictions by the tests the
    inventory names) and their differences, subtracted here; the train task's are training.json's curves, and its
    learning rate is the linear decay from --learning-rate to zero over total_steps (no warmup in this run)."""
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    evaluation = json.loads((tiny_pipeline / "evaluate" / "evaluation.json").read_text())
    evaluated = scalars(session_of(summary, "evaluate"))
    tuned, base = evaluation["metrics"], evaluation["base_metrics"]
    expected = {}
    for name in tuned:
        expected |= {
            ("Summary", name): tuned[name],
            ("Summary", f"base {name}"): base[name],
            ("Summary", f"{name} tuned - base"): tuned[name] - base[name],
            (name, "test"): tuned[name],
            (name, "base"): base[name],
        }
    assert {key: [value for _, value in points] for key, points in evaluated.items()} == {
        key: [pytest.approx(value)] for key, value in expected.items()
    }
    training = json.loads((tiny_pipeline / "train" / "training.json").read_text())
    trained = scalars(session_of(summary, "train"))
    assert trained[("loss", "train")] == [tuple(point) for point in training["train_losses"]]
    assert trained[("loss", "validation")] == [(0, training["initial_validation_loss"])] + [
        (e["step"], e["validation_loss"]) for e in training["history"]
    ]
    total, peak = training["total_steps"], summary["parameters"]["learning_rate"]
    assert training["training"]["warmup_ratio"] == 0
    assert trained[("learning_rate", "lr")] == [(step, pytest.approx(peak * (total - step + 1) / total, rel=1e-12)) for step in range(1, total + 1)]


def test_the_parameter_counts_are_the_base_models_and_the_adapter_files_tensors(tiny_pipeline, tiny_model_dir):
    """training.json's counts: the base model's parameters as transformers loads it, plus every tensor of the saved
    adapter (LoRA's A and B and the prompt), all of them trainable."""
    counts = json.loads((tiny_pipeline / "train" / "training.json").read_text())["parameters"]
    base = sum(p.numel() for p in AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir).parameters())
    adapter = sum(t.numel() for t in load_file(tiny_pipeline / "train" / "adapter" / "adapter.safetensors").values())
    assert (counts["total"], counts["trainable"]) == (base + adapter, adapter)
    assert counts["trainable_percent"] == pytest.approx(100 * adapter / (base + adapter), rel=1e-12)


def test_the_ingest_and_tokenization_counts_are_the_files_rows_and_their_token_lengths(tiny_pipeline, tiny_model_dir, clearml_home, tmp_path):
    """ingest_report.json's rows are the split files' rows (and train + validation the rows of the train TSV);
    tokenization.json's truncation counts, of a preprocess run at lengths short enough to cut, are the rows whose
    text transformers' tokenizer makes at least that long (the length with eos, which truncation keeps)."""
    report = json.loads((tiny_pipeline / "ingest" / "ingest_report.json").read_text())
    splits = {name: pd.read_csv(tiny_pipeline / "ingest" / "splits" / f"{name}.tsv", sep="\t", dtype=str, keep_default_na=False) for name in SPLITS}
    assert report["rows"] == {name: len(rows) for name, rows in splits.items()}
    assert report["rows"]["train"] + report["rows"]["validation"] == len(
        pd.read_csv(report["sources"]["train"], sep="\t", dtype=str, keep_default_na=False)
    )
    assert report["invalid_rows_skipped"] == 0 and report["seed"] == 42
    run_script(
        clearml_home,
        "steps/preprocess.py",
        "--local",
        "--splits-dir",
        str(tiny_pipeline / "ingest" / "splits"),
        "--model",
        str(tiny_model_dir),
        "--max-input-length",
        "36",
        "--max-target-length",
        "6",
        "--output-dir",
        str(tmp_path),
    )
    tokenization = json.loads((tmp_path / "tokenization.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = {}
    for name, rows in splits.items():
        inputs = [len(ids) for ids in tokenizer([source(i, x) for i, x in zip(rows["instruction"], rows["input"])])["input_ids"]]
        targets = [len(ids) for ids in tokenizer(rows["output"].tolist())["input_ids"]]
        expected[name] = {"rows": len(rows), "inputs_truncated": sum(n >= 36 for n in inputs), "targets_truncated": sum(n >= 6 for n in targets)}
    assert tokenization["splits"] == expected
    # Discriminating: at these lengths some texts are cut and some not.
    assert all(0 < counts[kind] < counts["rows"] for counts in expected.values() for kind in ("inputs_truncated", "targets_truncated"))


def leaves(value, prefix: str = "") -> dict[str, float]:
    """Dotted name -> number of every number (booleans aside) in a JSON value's dictionaries."""
    if isinstance(value, dict):
        return {name: number for key, item in value.items() for name, number in leaves(item, f"{prefix}{'.' if prefix else ''}{key}").items()}
    return {prefix: value} if isinstance(value, (int, float)) and not isinstance(value, bool) else {}


# Each step's own file, which its result.json's outputs hand on to the next step.
OWN_FILES = {
    "ingest": "ingest/ingest_report.json",
    "preprocess": "preprocess/tokenization.json",
    "train": "train/training.json",
    "evaluate": "evaluate/evaluation.json",
    "register": "register/model/evaluation.json",
}


def test_each_steps_result_hands_on_what_its_own_files_hold(tiny_pipeline):
    for step, own_file in OWN_FILES.items():
        outputs = leaves(json.loads((tiny_pipeline / step / "result.json").read_text())["outputs"])
        held = leaves(json.loads((tiny_pipeline / own_file).read_text()))
        assert outputs and {name: held.get(name) for name in outputs} == outputs, step


def test_each_steps_wall_time_holds_the_times_it_reports(tiny_pipeline):
    """A step's time in summary.json is its process's wall time, which holds the step's own timing (result.json),
    which holds the time its ClearML calls took; the steps ran one after another, each process after the last."""
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    assert list(summary["step_seconds"]) == list(summary["task_ids"])
    for step, wall in summary["step_seconds"].items():
        seconds = json.loads((tiny_pipeline / step / "result.json").read_text())["seconds"]
        assert 0 < seconds["clearml"] < seconds["step"] < wall, step
