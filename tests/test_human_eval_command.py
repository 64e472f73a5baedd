"""``steps/rate.py`` as the README runs it: the tiny pipeline's evaluate task rated by two raters (over HTTP, as a
browser does), the session's task holding the ratings and the statistics; the Label Studio round trip; sessions
continued, or refused with other options."""

from __future__ import annotations

import json
import math
import re
import shlex
import signal
import sqlite3
import urllib.error
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_script
from rating_sessions import page, rating_commands, shown_item, system_of, write_evaluations  # noqa: F401 (rating_commands is a fixture)
from readme_commands import the_command

from components.errors import UserError
from components.human_eval.label_studio import export_project, import_votes
from components.human_eval.session import assign, items_from_evaluations
from components.human_eval.store import RatingStore

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(count: int, total: int) -> tuple[float, float]:
    """The Wilson score interval by its formula (Wilson 1927), not through scipy."""
    p, z2 = count / total, Z95**2
    centre, half = (p + z2 / (2 * total)) / (1 + z2 / total), Z95 * math.sqrt(p * (1 - p) / total + z2 / (4 * total**2)) / (1 + z2 / total)
    return centre - half, centre + half


def offline_events(cache: Path, task_id: str) -> list[dict]:
    lines = (cache / "offline" / task_id / "metrics.jsonl").read_text().splitlines()
    return [event for line in lines for event in json.loads(line)]


def test_one_command_rates_the_tiny_pipelines_evaluation_with_two_raters_and_the_task_holds_the_verdict(
    tiny_pipeline, clearml_home, rating_commands, tmp_path
):
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    evaluate_id = summary["task_ids"]["evaluate"]
    predictions = pd.read_csv(tiny_pipeline / "evaluate" / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    readme = the_command("python steps/rate.py", "--overlap").replace("<evaluate task id>", evaluate_id)
    arguments = shlex.split(readme)[2:]  # the README's command, less "python steps/rate.py"
    assert arguments[arguments.index("--evaluate-task-ids") + 1] == evaluate_id
    raters = arguments[arguments.index("--raters") + 1].split(",")
    session, output = tmp_path / "session.sqlite", tmp_path / "out"
    command = rating_commands(
        clearml_home, [*arguments, "--session", str(session), "--port", "0", "--host", "localhost", "--output-dir", str(output)]
    )
    assert sorted(command.links) == sorted(raters) and all(link.startswith("http://localhost:") for link in command.links.values())
    for wrong in (command.results.rsplit("/", 1)[0] + "/not-the-token", command.links[raters[0]] + "x"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            page(wrong)
        assert refused.value.code == 404

    # Each rater prefers the longer answer; the second the shorter one on even rows, so that the two disagree sometimes.
    row_of = {(r["instruction"], r["input"]): i for i, r in predictions.iterrows()}
    verdicts: dict[str, dict[int, str]] = {rater: {} for rater in raters}
    sides: Counter = Counter()
    for number, (rater, link) in enumerate(command.links.items()):
        if number == 1:  # the results so far, behind their own token
            assert f"{len(predictions)} votes on base, tuned" in page(command.results)
        while (item := shown_item(page(link))) is not None:
            row = row_of[(item["instruction"], item["input"])]
            answers = {"tuned": predictions.loc[row, "prediction"], "base": predictions.loc[row, "base_prediction"]}
            left = "tuned" if item["left"] == answers["tuned"] else "base"
            assert {item["left"], item["right"]} == set(answers.values()) and item["left"] == answers[left]
            right = "base" if left == "tuned" else "tuned"
            shorter_wins = rater == raters[1] and row % 2 == 0
            if len(answers["tuned"]) == len(answers["base"]):
                choice = "tie"
            else:
                choice = "left" if (len(item["left"]) > len(item["right"])) != shorter_wins else "right"
            verdicts[rater][row] = {"left": left, "right": right}.get(choice, choice)
            sides[choice] += 1
            page(link, {"position": item["position"], "choice": choice})
    assert command.wait() == 0, "".join(command.output)
    rows = len(predictions)
    assert int(arguments[arguments.index("--items") + 1]) > rows  # so every row is rated, by both raters (--overlap 2)
    assert all(len(by_row) == rows for by_row in verdicts.values())

    [task_id] = re.findall(r"ClearML Task: created new task id=(\S+)", "".join(command.output))
    cache = Path(clearml_home["CLEARML_CACHE_DIR"])
    artifacts = next((cache / "offline" / task_id / "data").glob("*/*/artifacts"))
    ratings = pd.read_csv(artifacts / "ratings" / "ratings.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert sorted(zip(ratings["rater"], ratings["row"].astype(int), ratings["preferred"])) == sorted(
        (rater, row, verdict) for rater, by_row in verdicts.items() for row, verdict in by_row.items()
    )

    every = [verdict for by_row in verdicts.values() for verdict in by_row.values()]
    tally, total = Counter(every), len(every)
    statistics = json.loads((artifacts / "human_evaluation" / "human_evaluation.json").read_text())
    [pair] = statistics["pairs"]
    assert (pair["system"], pair["other"], pair["wins"]["count"], pair["losses"]["count"], pair["ties"]["count"]) == (
        "base",
        "tuned",
        tally["base"],
        tally["tuned"],
        tally["tie"],
    )
    assert (pair["wins"]["low"], pair["wins"]["high"]) == pytest.approx(wilson(tally["base"], total), abs=1e-12)
    decisive = sides["left"] + sides["right"]
    assert statistics["position_bias"]["rate"] == pytest.approx(sides["left"] / decisive)

    first, second = ([verdicts[r][row] for row in range(rows)] for r in raters)
    observed = sum(a == b for a, b in zip(first, second)) / rows
    chance = sum(first.count(label) * second.count(label) for label in set(first) | set(second)) / rows**2
    assert 0 < observed < 1 and statistics["agreement"]["cohen_kappa"] == pytest.approx((observed - chance) / (1 - chance))

    single = {e["variant"]: e["value"] for e in offline_events(cache, task_id) if e["metric"] == "Summary"}
    assert single["votes"] == total and single["base vs tuned: wins"] == pytest.approx(tally["base"] / total)
    assert single["cohen kappa"] == pytest.approx(statistics["agreement"]["cohen_kappa"])
    task = json.loads((cache / "offline" / task_id / "task.json").read_text())
    assert task["hyperparams"]["properties"]["compared 1"]["value"] == evaluate_id  # the evaluate task it compared

    with sqlite3.connect(session) as database:
        tokens = [token for (token,) in database.execute("SELECT token FROM raters UNION SELECT value FROM settings WHERE key = 'results_token'")]
    offline = [path for path in (cache / "offline" / task_id).rglob("*") if path.is_file()]
    assert not [(path.name, token) for path in offline for token in tokens if token.encode() in path.read_bytes()]  # no link in the task


LS_SYSTEMS = {"r4": "ответ ранга 4", "r8": "ответ ранга 8", "r16": "ответ ранга 16"}


def test_a_session_goes_to_label_studio_and_its_export_comes_back_into_the_same_statistics(clearml_home, tmp_path):
    paths = write_evaluations(tmp_path / "evaluations", rows=6, systems=LS_SYSTEMS)
    options = [
        "--local",
        "--predictions",
        ",".join(str(p.parent) for p in paths.values()),
        "--items",
        "9",
        "--seed",
        "3",
        "--session",
        str(tmp_path / "session.sqlite"),
    ]
    run_script(clearml_home, "steps/rate.py", *options, "--label-studio-export", str(tmp_path / "project"))
    config = ElementTree.parse(tmp_path / "project" / "label_config.xml").getroot()
    tasks = json.loads((tmp_path / "project" / "tasks.json").read_text())
    assert len(tasks) == 9  # --items
    [pairwise] = config.iter("Pairwise")
    assert pairwise.get("toName").split(",") == ["left", "right"]
    assert {element.get("name") for element in config.iter("Text")} == {"left", "right", "instruction", "input"}
    assert {element.get("value").lstrip("$") for element in config.iter("Text")} == set(tasks[0]["data"])
    assert not any(system in json.dumps(task["data"], ensure_ascii=False) for task in tasks for system in LS_SYSTEMS)

    # Label Studio's JSON export: the tasks as imported, with ids and annotations (completed_by an id, or an object
    # when expanded); annotator 7 prefers the higher rank, annotator 8 the lower except on one task it calls both bad,
    # and skips (cancels) one task.
    rank = {system: int(system[1:]) for system in LS_SYSTEMS}
    expected = []

    def annotation(annotator, task, prefer_higher: bool, both_bad: bool = False, cancelled: bool = False):
        left, right = system_of(task["data"]["left"], LS_SYSTEMS), system_of(task["data"]["right"], LS_SYSTEMS)
        side = "left" if (rank[left] > rank[right]) == prefer_higher else "right"
        result = [{"from_name": "preference", "to_name": "preference", "type": "pairwise", "value": {"selected": side}}]
        if both_bad:
            result.append({"from_name": "no_preference", "to_name": "left", "type": "choices", "value": {"choices": ["Both bad"]}})
        if not cancelled:
            expected.append((left, right, "both_bad" if both_bad else {"left": left, "right": right}[side]))
        return {
            "id": len(expected),
            "completed_by": annotator,
            "result": [] if cancelled else result,
            "was_cancelled": cancelled,
            "created_at": "2026-12-01T10:00:00Z",
        }

    export = [
        {
            "id": 100 + n,
            **task,
            "annotations": [
                annotation(7, task, True),
                annotation({"id": 8, "email": "b@example.org"}, task, False, both_bad=n == 2, cancelled=n == 5),
            ],
        }
        for n, task in enumerate(tasks)
    ]
    (tmp_path / "export.json").write_text(json.dumps(export, ensure_ascii=False))
    imported = run_script(
        clearml_home, "steps/rate.py", *options, "--label-studio-import", str(tmp_path / "export.json"), "--output-dir", str(tmp_path / "out")
    )
    assert "17 votes (imported from Label Studio)" in imported.stdout
    statistics = json.loads((tmp_path / "out" / "human_evaluation.json").read_text())
    for pair in statistics["pairs"]:
        votes = [verdict for left, right, verdict in expected if {left, right} == {pair["system"], pair["other"]}]
        assert (pair["wins"]["count"], pair["losses"]["count"], pair["both_bad"]["count"], pair["wins"]["total"]) == (
            votes.count(pair["system"]),
            votes.count(pair["other"]),
            votes.count("both_bad"),
            len(votes),
        )
    strengths = statistics["bradley_terry"]
    assert sorted(strengths) == sorted(LS_SYSTEMS) and sum(s["strength"] for s in strengths.values()) == pytest.approx(0, abs=1e-9)
    ratings = pd.read_csv(tmp_path / "out" / "ratings.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert set(ratings["rater"]) == {"label-studio user 7", "b@example.org"}


def test_a_session_continues_with_its_options_and_refuses_others(clearml_home, tmp_path):
    """Continuing with the same options is the browser test's restart; here: what the options change, and the refusal."""
    paths = write_evaluations(tmp_path / "evaluations", rows=6)
    session = tmp_path / "session.sqlite"
    options = [
        "--local",
        "--predictions",
        ",".join(str(p.parent) for p in paths.values()),
        "--raters",
        "anna,boris,vera",
        "--overlap",
        "1",
        "--session",
        str(session),
    ]
    run_script(clearml_home, "steps/rate.py", *options, "--label-studio-export", str(tmp_path / "project"))
    with sqlite3.connect(session) as database:
        per_item = database.execute("SELECT count(*) FROM assignments GROUP BY item_id").fetchall()
    assert per_item == [(1,)] * 6  # --overlap 1: each item to one rater

    other_seed = run_script(
        clearml_home, "steps/rate.py", *options[:-1], str(tmp_path / "other.sqlite"), "--seed", "9", "--label-studio-export", str(tmp_path / "other")
    )
    assert "A new session" in other_seed.stdout
    assert (tmp_path / "other" / "tasks.json").read_text() != (tmp_path / "project" / "tasks.json").read_text()  # --seed draws again

    refused = run_script(clearml_home, "steps/rate.py", *options[:-4], "--overlap", "2", "--session", str(session), check=False)
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: {session} is a session with other options (overlap '1', not '2')")


def test_a_stopped_session_reports_the_votes_it_has(clearml_home, rating_commands, tmp_path):
    paths = write_evaluations(tmp_path / "evaluations", rows=6)
    command = rating_commands(
        clearml_home,
        [
            "--local",
            "--predictions",
            ",".join(str(p.parent) for p in paths.values()),
            "--raters",
            "anna",
            "--overlap",
            "1",
            "--session",
            str(tmp_path / "session.sqlite"),
            "--port",
            "0",
            "--output-dir",
            str(tmp_path / "out"),
        ],
    )
    link = command.links["anna"]
    for choice in ("left", "both_bad"):
        page(link, {"position": shown_item(page(link))["position"], "choice": choice})
    command.process.send_signal(signal.SIGTERM)
    assert command.wait() == 0, "".join(command.output)
    assert "2 votes (stopped before every vote was in)" in "".join(command.output)
    ratings = pd.read_csv(tmp_path / "out" / "ratings.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert ratings["choice"].tolist() == ["left", "both_bad"] and ratings["position"].tolist() == ["0", "1"]


def test_a_label_studio_export_of_another_project_is_refused_in_one_sentence(tmp_path):
    items = items_from_evaluations(write_evaluations(tmp_path / "evaluations", rows=3))
    store = RatingStore.create(tmp_path / "session.sqlite", items, assign(items, ["anna"], 1, seed=0), {"seed": "0"})
    [_, tasks_path] = export_project(store, tmp_path / "project")
    tasks = json.loads(tasks_path.read_text())
    cases = {
        "not json": "{",
        "no list": "{}",
        "no meta": json.dumps([{"data": tasks[0]["data"]}]),
        "another session": json.dumps([{**tasks[0], "data": {**tasks[0]["data"], "left": "чужой ответ"}}]),
    }
    messages = {}
    for case, text in cases.items():
        (tmp_path / f"{case}.json").write_text(text)
        with pytest.raises(UserError) as refused:
            import_votes(store, tmp_path / f"{case}.json")
        messages[case] = str(refused.value)
    assert all(message.startswith(str(tmp_path)) and message.count(". ") == 0 for message in messages.values())
    assert "line 1" in messages["not json"] and "another session" in messages["another session"] and "meta" in messages["no meta"]
