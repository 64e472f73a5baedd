"""``steps/rate.py`` in forked runs (``step_runs``, ``RatingCommand(forked=True)``): a session served to its last vote,
continued, stopped by a signal, sent to Label Studio and read back; where its pairs come from; each refusal."""

from __future__ import annotations

import io
import json
import signal
import socket
import sys
from pathlib import Path

import pandas as pd
import pytest
from rating_sessions import page, rating_commands, shown_item, write_evaluations  # noqa: F401 (rating_commands is a fixture)
from step_runs import artifacts, make_task, run_step, task_record

from components.human_eval.store import RatingStore
from components.human_eval.summary import summarise
from steps import rate


@pytest.fixture
def two_systems(tmp_path) -> list[str]:
    return [str(path.parent) for path in write_evaluations(tmp_path / "evaluations", rows=8).values()]


def session_options(folders: list[str], tmp_path: Path, *more: str) -> list[str]:
    return [
        "--local",
        "--predictions",
        ",".join(folders),
        "--raters",
        "anna, ,boris",
        "--overlap",
        "1",
        "--items",
        "6",
        "--seed",
        "4",
        "--session",
        str(tmp_path / "session.sqlite"),
        *more,
    ]


def vote_everything(links: dict[str, str]) -> int:
    votes = 0
    for link in links.values():
        while (item := shown_item(page(link))) is not None:
            page(link, {"position": item["position"], "choice": "left" if votes % 3 else "tie"})
            votes += 1
    return votes


def test_a_session_is_served_until_its_last_vote_then_reported(two_systems, rating_commands, clearml_home, tmp_path):
    out, session = tmp_path / "out", tmp_path / "session.sqlite"
    command = rating_commands(clearml_home, [*session_options(two_systems, tmp_path), "--port", "0", "--output-dir", str(out)], forked=True)
    assert sorted(command.links) == ["anna", "boris"]
    port = command.links["anna"].split(":")[2].split("/")[0]
    assert all(link.startswith(f"http://127.0.0.1:{port}/r/") for link in command.links.values())
    assert command.results.startswith(f"http://127.0.0.1:{port}/results/")
    assert vote_everything(command.links) == 6
    assert command.wait() == 0, "".join(command.output)
    printed = "".join(command.output).splitlines()
    assert f"A new session of 6 pairs in {session}." in printed
    assert f"Serving 2 raters on http://127.0.0.1:{port}; stop with Ctrl-C." in printed
    assert f"6 votes (complete); statistics in {out / 'human_evaluation.json'} and the task's results." in printed

    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    store = RatingStore(session)
    statistics = summarise(store.votes(), store.items()).as_dict()
    assert result["outputs"] == {"session": str(session), "votes": 6, "complete": True, "summary": statistics}
    assert json.loads((out / "human_evaluation.json").read_text(encoding="utf-8")) == statistics
    ratings = pd.read_csv(out / "ratings.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert ratings.to_dict("records") == pd.DataFrame(store.ratings()).astype(str).to_dict("records")
    assert (task_record(result)["name"], task_record(result)["type"]) == ("rate", "qc")
    uploaded = artifacts(result["task_id"], clearml_home, tmp_path)
    assert sorted(uploaded) == ["human_evaluation", "ratings"]
    assert uploaded["ratings"].read_bytes() == (out / "ratings.tsv").read_bytes()
    assert json.loads(uploaded["human_evaluation"].read_text(encoding="utf-8")) == statistics
    tokens = [*store.tokens().values(), store.setting("results_token")]
    session_files = [path for path in Path(result["offline_session"]).with_suffix("").rglob("*") if path.is_file()]
    assert not [path for path in session_files for token in tokens if token.encode() in path.read_bytes()]  # no link in the task's log

    continued, result = run_step(rate.main, [*session_options(two_systems, tmp_path), "--output-dir", str(tmp_path / "again")], clearml_home)
    assert continued.returncode == 0, continued.stderr
    lines = continued.stdout.splitlines()
    assert f"Continuing the session in {session}." in lines and "Every rater has voted on every item; nothing to serve." in lines
    assert (result["outputs"]["votes"], result["outputs"]["complete"]) == (6, True)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_session_with_the_votes_it_has(stop, two_systems, rating_commands, clearml_home, tmp_path):
    out = tmp_path / "out"
    command = rating_commands(clearml_home, [*session_options(two_systems, tmp_path), "--port", "0", "--output-dir", str(out)], forked=True)
    link = command.links["boris"]
    page(link, {"position": shown_item(page(link))["position"], "choice": "right"})
    command.process.send_signal(stop)
    assert command.wait() == 0, "".join(command.output)
    assert "1 votes (stopped before every vote was in); statistics in" in "".join(command.output)
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert (result["outputs"]["votes"], result["outputs"]["complete"]) == (1, False)


def test_on_every_interface_the_links_name_this_machine(two_systems, rating_commands, clearml_home, tmp_path):
    command = rating_commands(
        clearml_home,
        [*session_options(two_systems, tmp_path), "--host", "0.0.0.0", "--port", "0", "--output-dir", str(tmp_path / "out")],
        forked=True,
    )
    assert all(link.startswith(f"http://{socket.getfqdn()}:") for link in command.links.values())
    command.process.send_signal(signal.SIGTERM)
    assert command.wait() == 0


@pytest.mark.parametrize(
    "host, base",
    [("127.0.0.1", "http://127.0.0.1:8080"), ("localhost", "http://localhost:8080"), ("0.0.0.0", None), ("::", None), ("::1", "http://[::1]:8080")],
)
def test_the_links_name_the_host_served_on_this_machine_for_every_interface_and_ipv6_in_brackets(host, base):
    assert rate.link_base(host, 8080) == (base or f"http://{socket.getfqdn()}:8080")


def test_the_links_bypass_the_task_log_to_the_terminals_standard_output(capfd, monkeypatch):
    """ClearML copies what goes through ``sys.stdout`` and ``sys.stderr`` into the task's log: the links are written to
    file descriptor 1 under them (what was printed before them first)."""
    through_python = io.StringIO()
    monkeypatch.setattr(sys, "stdout", through_python)
    print("printed before", flush=False)
    rate.print_outside_task_log("  anna: http://127.0.0.1:1/r/secret\n")
    assert through_python.getvalue() == "printed before\n"
    assert capfd.readouterr() == ("  anna: http://127.0.0.1:1/r/secret\n", "")


def write_export_all_left(project: Path, path: Path) -> None:
    """Label Studio's JSON export of the project the step wrote, every pair annotated "left" by its user 7."""
    tasks = json.loads((project / "tasks.json").read_text(encoding="utf-8"))
    selected = [{"from_name": "preference", "to_name": "preference", "type": "pairwise", "value": {"selected": "left"}}]
    export = [
        {"id": 100 + n, **task, "annotations": [{"id": n, "completed_by": 7, "result": selected, "was_cancelled": False}]}
        for n, task in enumerate(tasks)
    ]
    path.write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")


def test_the_session_goes_to_label_studio_and_comes_back(two_systems, clearml_home, tmp_path):
    project = tmp_path / "project"
    completed, result = run_step(
        rate.main,
        [*session_options(two_systems, tmp_path), "--label-studio-export", str(project), "--output-dir", str(tmp_path / "out")],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    written = [str(project / "label_config.xml"), str(project / "tasks.json")]
    assert result["outputs"] == {"session": str(tmp_path / "session.sqlite"), "label_studio_export": written}
    assert (
        f"Label Studio project written: {', '.join(written)}; import the tasks there, then run again with --label-studio-import."
        in completed.stdout.splitlines()
    )
    assert not (tmp_path / "out" / "ratings.tsv").exists()

    write_export_all_left(project, tmp_path / "export.json")
    out = tmp_path / "imported"
    completed, result = run_step(
        rate.main,
        [*session_options(two_systems, tmp_path), "--label-studio-import", str(tmp_path / "export.json"), "--output-dir", str(out)],
        clearml_home,
    )
    assert completed.returncode == 0, completed.stderr
    assert (
        f"6 votes (imported from Label Studio); statistics in {out / 'human_evaluation.json'} and the task's results."
        in completed.stdout.splitlines()
    )
    assert (result["outputs"]["votes"], result["outputs"]["complete"]) == (6, None)
    assert set(pd.read_csv(out / "ratings.tsv", sep="\t", dtype=str)["rater"]) == {"label-studio user 7"}


def test_evaluate_tasks_are_the_systems_by_their_ids_and_one_task_is_tuned_against_its_base(clearml_home, tmp_path):
    folders = write_evaluations(tmp_path / "evaluations", rows=4)
    ids = [make_task("evaluate", {"predictions": path}, clearml_home, tmp_path) for path in folders.values()]
    with_base = tmp_path / "with-base.tsv"
    pd.read_csv(folders["system-one"], sep="\t").assign(base_prediction="база").to_csv(with_base, sep="\t", index=False)
    single = make_task("evaluate", {"predictions": with_base}, clearml_home, tmp_path)
    for given, systems in ((ids, set(ids)), ([single], {"tuned", "base"})):
        session = tmp_path / f"session-{len(given)}.sqlite"
        completed, result = run_step(
            rate.main,
            [
                "--local",
                "--evaluate-task-ids",
                ",".join(given),
                "--items",
                "0",
                "--session",
                str(session),
                "--label-studio-export",
                str(tmp_path / f"project-{len(given)}"),
                "--output-dir",
                str(tmp_path / "out"),
            ],
            clearml_home,
        )
        assert completed.returncode == 0, completed.stderr
        items = RatingStore(session).items()
        assert {system for item in items for system in (item.system_a, item.system_b)} == systems and len(items) == 4  # --items 0: every pair
        properties = task_record(result)["hyperparams"]["properties"]
        assert {name: entry["value"] for name, entry in properties.items()} == {f"compared {n}": task_id for n, task_id in enumerate(given, 1)}
    write_export_all_left(tmp_path / "project-1", tmp_path / "export.json")
    imported, _ = run_step(
        rate.main,
        [
            "--local",
            "--evaluate-task-ids",
            single,
            "--items",
            "0",
            "--session",
            str(tmp_path / "session-1.sqlite"),
            "--label-studio-import",
            str(tmp_path / "export.json"),
            "--output-dir",
            str(tmp_path / "imported"),
        ],
        clearml_home,
    )
    assert imported.returncode == 0, imported.stderr  # offline, no registered model is looked for (these tasks hold no evaluation)
    assert "4 votes (imported from Label Studio)" in imported.stdout and "Registered model" not in imported.stdout


@pytest.mark.parametrize(
    "change, sentence",
    [
        (
            {"--predictions": ""},
            "Give --evaluate-task-ids (ClearML task ids of evaluate steps) or --predictions (their output folders), one of the two.",
        ),
        (
            {"--evaluate-task-ids": "offline-x"},
            "Give --evaluate-task-ids (ClearML task ids of evaluate steps) or --predictions (their output folders), one of the two.",
        ),
        ({"--raters": " , "}, "--raters is empty; give the raters' names, comma-separated."),
        ({"--predictions": "SAME_NAME"}, "--predictions names two folders alike (SAME_NAME); give each evaluation a folder of its own name."),
    ],
)
def test_a_session_without_its_sources_or_raters_is_refused(change, sentence, two_systems, clearml_home, tmp_path):
    alike = [str(tmp_path / side / "evaluation") for side in ("a", "b")]
    for folder, source in zip(alike, two_systems):
        Path(folder).mkdir(parents=True)
        (Path(source) / "predictions.tsv").rename(Path(folder) / "predictions.tsv")
    options = session_options(alike, tmp_path)
    for flag, value in change.items():
        value = value.replace("SAME_NAME", ",".join(alike))
        if flag in options:
            options[options.index(flag) + 1] = value
        else:
            options += [flag, value]
    completed, result = run_step(rate.main, [*options, "--output-dir", str(tmp_path / "out")], clearml_home)
    assert (completed.returncode, completed.stderr.splitlines()[-1], result) == (1, "error: " + sentence.replace("SAME_NAME", ",".join(alike)), None)


def with_options(options: list[str], **values: str) -> list[str]:
    """``options`` with the value of each ``--flag`` named (``seed="5"``) replaced."""
    changed = [*options]
    for name, value in values.items():
        changed[changed.index(f"--{name}") + 1] = value
    return changed


def test_a_session_started_with_other_options_is_refused_naming_each_difference(two_systems, clearml_home, tmp_path):
    first = [*session_options(two_systems, tmp_path), "--label-studio-export", str(tmp_path / "project"), "--output-dir", str(tmp_path / "out")]
    assert run_step(rate.main, first, clearml_home)[0].returncode == 0
    session, sources = tmp_path / "session.sqlite", ",".join(two_systems)
    other_sources = f"{two_systems[0]},{tmp_path / 'third'}"
    for changes, differences in (
        ({"raters": "anna", "seed": "5"}, "raters 'anna,boris', not 'anna', seed '4', not '5'"),
        (
            {"predictions": other_sources, "overlap": "2", "items": "4"},
            f"sources '{sources}', not '{other_sources}', overlap '1', not '2', items '6', not '4'",
        ),
    ):
        completed, _ = run_step(rate.main, with_options(first, **changes), clearml_home)
        assert completed.stderr.splitlines()[-1] == (
            f"error: {session} is a session with other options ({differences}); "
            "give the same options to continue it, or another --session to start a new one."
        )


def test_the_seed_decides_the_pairs_their_order_and_who_rates_each(two_systems, clearml_home, tmp_path):
    def new_session(name: str, seed: str) -> tuple:
        session = tmp_path / f"{name}.sqlite"
        options = with_options(session_options(two_systems, tmp_path), session=str(session), seed=seed)
        completed, _ = run_step(
            rate.main, [*options, "--label-studio-export", str(tmp_path / name), "--output-dir", str(tmp_path / name / "out")], clearml_home
        )
        assert completed.returncode == 0, completed.stderr
        store = RatingStore(session)
        dealt = {rater: [store.item_at(rater, position) for position in range(store.progress(rater)[1])] for rater in store.tokens()}
        return store.items(), dealt

    first = new_session("first", "4")
    assert len(first[0]) == 6 and sum(map(len, first[1].values())) == 6  # 6 of the 8 rows, each rated once
    assert new_session("again", "4") == first != new_session("other", "5")


def test_predictions_files_given_themselves_are_systems_named_by_their_paths(two_systems, clearml_home, tmp_path):
    files = [str(Path(folder) / "predictions.tsv") for folder in two_systems]
    options = with_options(session_options(two_systems, tmp_path), predictions=",".join(files))
    completed, _ = run_step(
        rate.main, [*options, "--label-studio-export", str(tmp_path / "project"), "--output-dir", str(tmp_path / "out")], clearml_home
    )
    assert completed.returncode == 0, completed.stderr
    items = RatingStore(tmp_path / "session.sqlite").items()
    assert len(items) == 6 and {(item.system_a, item.system_b) for item in items} <= {tuple(files), tuple(reversed(files))}
