"""``components.human_eval.label_studio`` on hand-written Label Studio exports: what each part of an annotation
(the pairwise side, the "no preference" choices, the comment, a cancelled or empty annotation, the annotator in
each of its forms) becomes, the ratings rows read field by field, and the project files read back exactly.
The round trip through ``steps/rate.py`` is in test_human_eval_command.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ASCII_LOCALE, ROOT

from components.errors import UserError
from components.human_eval import label_studio
from components.human_eval.label_studio import export_project, import_votes
from components.human_eval.session import PairItem, assign
from components.human_eval.store import RatingStore

ITEMS = 40  # enough pairs that both left/right orders are drawn (all one side: probability 2**-39)


def pair(row: int) -> PairItem:
    return PairItem(
        f"{row}:base:tuned", row, f"Инструкция «{row}»", f"вход {row}", f"эталон {row}", "base", f"ответ base {row}", "tuned", f"ответ tuned {row}"
    )


@pytest.fixture
def store(tmp_path) -> RatingStore:
    items = [pair(row) for row in range(ITEMS)]
    return RatingStore.create(tmp_path / "session.sqlite", items, assign(items, ["anna"], 1, seed=0), {"seed": "5"})


def pairwise(side: str) -> dict:
    return {"from_name": "preference", "to_name": "left,right", "type": "pairwise", "value": {"selected": side}}


def no_preference(*labels: str, from_name: str = "no_preference") -> dict:
    return {"from_name": from_name, "to_name": "left", "type": "choices", "value": {"choices": list(labels)}}


def comment(text) -> dict:
    return {"from_name": "comment", "to_name": "left", "type": "textarea", "value": {"text": text}}


@pytest.mark.parametrize(
    "result, verdict",
    [
        ([pairwise("left")], ("left", "")),
        ([pairwise("right")], ("right", "")),
        ([pairwise("middle")], (None, "")),  # not a side
        ([{"type": "pairwise"}], (None, "")),  # a region without a value
        ([no_preference("Equally good")], ("tie", "")),
        ([pairwise("left"), no_preference("Both bad")], ("both_bad", "")),  # the choice overrides the side
        ([no_preference("Both bad"), pairwise("right")], ("both_bad", "")),  # in either order
        ([pairwise("right"), no_preference("Something else", "Equally good")], ("tie", "")),  # the first label it knows
        ([pairwise("right"), no_preference("Something else")], ("right", "")),
        ([pairwise("left"), no_preference()], ("left", "")),
        ([pairwise("left"), {"from_name": "no_preference", "type": "choices", "value": {}}], ("left", "")),
        ([pairwise("left"), no_preference("Both bad", from_name="another_choices")], ("left", "")),  # another control's choices
        ([pairwise("left"), comment(["очень", "плохо"])], ("left", "очень плохо")),  # Label Studio's list of lines
        ([comment("одной строкой"), pairwise("right")], ("right", "одной строкой")),
        ([pairwise("left"), {"type": "textarea", "value": {}}], ("left", "")),
        ([comment(["только комментарий"])], (None, "только комментарий")),
        ([], (None, "")),
    ],
)
def test_an_annotations_result_is_its_verdict_and_comment(result, verdict):
    assert label_studio._verdict(result) == verdict


@pytest.mark.parametrize(
    "completed_by, rater",
    [
        (7, "label-studio user 7"),
        ({"id": 8, "email": "b@example.org"}, "b@example.org"),
        ({"id": 8, "email": ""}, "8"),  # no email: the id
        ({"id": 9}, "9"),
    ],
)
def test_the_annotator_is_the_email_or_the_user_id(completed_by, rater):
    assert label_studio._annotator(completed_by) == rater


def test_the_project_is_the_config_and_one_task_per_pair_with_its_drawn_order(store, tmp_path):
    folder = tmp_path / "not" / "yet" / "there"
    written = export_project(store, folder)
    assert written == [folder / "label_config.xml", folder / "tasks.json"]
    assert written[0].read_bytes() == label_studio.CONFIG.encode("utf-8")
    text = written[1].read_bytes().decode("utf-8")
    assert "Инструкция «0»" in text  # written as UTF-8, not \u escapes
    tasks = json.loads(text)
    assert [task["meta"]["pair"] for task in tasks] == list(range(ITEMS))
    orders = [task["meta"]["order"] for task in tasks]
    assert set(orders) == {0, 1}
    for row, (task, order) in enumerate(zip(tasks, orders)):
        left, right = ("base", "tuned") if order == 0 else ("tuned", "base")
        assert task == {
            "data": {"instruction": f"Инструкция «{row}»", "input": f"вход {row}", "left": f"ответ {left} {row}", "right": f"ответ {right} {row}"},
            "meta": {"pair": row, "order": order},
        }
    assert text == json.dumps(tasks, ensure_ascii=False, indent=1)

    export_project(store, folder)  # again, into the folder it made: the same draw from the session's seed
    assert json.loads(written[1].read_text(encoding="utf-8")) == tasks


def test_the_left_right_order_is_drawn_from_the_sessions_seed(tmp_path):
    items = [pair(row) for row in range(ITEMS)]
    orders = {}
    for seed in ("5", "6"):
        store = RatingStore.create(tmp_path / f"{seed}.sqlite", items, assign(items, ["anna"], 1, seed=0), {"seed": seed})
        [_, tasks] = export_project(store, tmp_path / seed)
        orders[seed] = [task["meta"]["order"] for task in json.loads(tasks.read_text(encoding="utf-8"))]
    assert orders["5"] != orders["6"]


def annotated(store: RatingStore, folder: Path, annotations: dict[int, list[dict]]) -> Path:
    """Label Studio's JSON export of the project for ``store``: each task as imported, with its id and annotations."""
    [_, tasks_path] = export_project(store, folder / "project")
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    export = [{"id": 1000 + n, **task, "annotations": annotations.get(n, [])} for n, task in enumerate(tasks)]
    path = folder / "export.json"
    path.write_text(json.dumps(export, ensure_ascii=False), encoding="utf-8")
    return path


def test_the_export_comes_back_as_votes_and_ratings_rows_field_by_field(store, tmp_path):
    [_, tasks_path] = export_project(store, tmp_path / "peek")
    orders = [task["meta"]["order"] for task in json.loads(tasks_path.read_text(encoding="utf-8"))]
    swapped, kept = orders.index(1), orders.index(0)  # a pair shown tuned | base, and one shown base | tuned
    export = annotated(
        store,
        tmp_path,
        {
            swapped: [
                {"completed_by": {"id": 8, "email": "b@example.org"}, "result": [pairwise("right")], "was_cancelled": True},
                {"completed_by": 9, "result": [comment("без выбора")]},
                {"completed_by": 10},  # no result: no vote
                {"completed_by": 7, "result": [pairwise("left"), comment(["=1+1", "да"])], "created_at": "2026-12-01T10:00:00Z"},
            ],
            kept: [
                {
                    "completed_by": {"id": 8, "email": "b@example.org"},
                    "result": [pairwise("left"), no_preference("Equally good")],
                    "was_cancelled": False,
                }
            ],
        },
    )
    votes, ratings = import_votes(store, export)
    task_order = slice(None, None, -1 if kept < swapped else 1)  # votes come in the export's order of tasks
    expected_votes = [
        (f"{swapped}:base:tuned", "label-studio user 7", "tuned", "base", "left"),
        (f"{kept}:base:tuned", "b@example.org", "base", "tuned", "tie"),
    ]
    assert [(v.item, v.rater, v.left, v.right, v.choice) for v in votes] == expected_votes[task_order]
    texts = {
        "instruction": "Инструкция «{}»",
        "input": "вход {}",
        "reference": "эталон {}",
        "answer_a": "ответ base {}",
        "answer_b": "ответ tuned {}",
    }
    expected_ratings = [
        {
            "item": f"{swapped}:base:tuned",
            "row": swapped,
            "rater": "label-studio user 7",
            "left_system": "tuned",
            "right_system": "base",
            "choice": "left",
            "preferred": "tuned",
            "comment": "=1+1 да",
            "voted_at": "2026-12-01T10:00:00Z",
            "system_a": "base",
            "system_b": "tuned",
            **{name: text.format(swapped) for name, text in texts.items()},
        },
        {
            "item": f"{kept}:base:tuned",
            "row": kept,
            "rater": "b@example.org",
            "left_system": "base",
            "right_system": "tuned",
            "choice": "tie",
            "preferred": "tie",
            "comment": "",
            "voted_at": "",
            "system_a": "base",
            "system_b": "tuned",
            **{name: text.format(kept) for name, text in texts.items()},
        },
    ]
    assert ratings == expected_ratings[task_order]


def test_the_project_is_written_and_read_as_utf_8_whatever_the_locale(store, tmp_path, clearml_home):
    export_project(store, tmp_path / "here")
    export = annotated(store, tmp_path, {0: [{"completed_by": 7, "result": [pairwise("right"), comment("хорошо")]}]})
    program = (
        "import json, sys; from pathlib import Path; from components.human_eval.label_studio import export_project, import_votes; "
        "from components.human_eval.store import RatingStore; store = RatingStore(Path(sys.argv[1])); "
        "export_project(store, Path(sys.argv[2])); print(json.dumps(import_votes(store, Path(sys.argv[3]))[1]))"
    )
    there = subprocess.run(
        [sys.executable, "-c", program, str(store.path), str(tmp_path / "there"), str(export)],
        cwd=ROOT,
        env={**clearml_home, **ASCII_LOCALE},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert there.returncode == 0, there.stderr
    for name in ("label_config.xml", "tasks.json"):
        assert (tmp_path / "there" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
    assert json.loads(there.stdout) == import_votes(store, export)[1]


def test_a_task_without_annotations_or_meta_data_is_read_as_label_studio_writes_it(store, tmp_path):
    """Label Studio writes ``"meta": {}`` or leaves out ``annotations`` on some tasks; a task with no annotations gives no vote."""
    export = annotated(store, tmp_path, {})
    tasks = json.loads(export.read_text(encoding="utf-8"))
    del tasks[0]["annotations"]
    export.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    assert import_votes(store, export) == ([], [])
    for meta in ({}, None, {"pair": 0}, {"pair": 0, "order": 2}, {"pair": -1, "order": 0}, {"pair": ITEMS, "order": 0}, {"pair": "0", "order": 0}):
        export.write_text(json.dumps([{**tasks[0], "meta": meta}], ensure_ascii=False), encoding="utf-8")
        with pytest.raises(
            UserError,
            match=rf"^{export}: task 1 has no meta pair and order of this session's project; "
            rf"export it with --label-studio-export from {store.path}\.$",
        ):
            import_votes(store, export)


@pytest.mark.parametrize(
    "content, sentence",
    [
        (None, "{export}: no such file; give the JSON export of the Label Studio project."),
        ("[\n{", "{export} line 2: not JSON (Expecting property name enclosed in double quotes); export the project as JSON from Label Studio."),
        ('{"tasks": []}', "{export} is not a Label Studio JSON export (a list of tasks); export the project as JSON."),
        ('["a task"]', "{export}: task 1 has no meta pair and order of this session's project; export it with --label-studio-export from {session}."),
    ],
)
def test_an_export_that_is_not_the_projects_is_refused_in_one_sentence(store, tmp_path, content, sentence):
    export = tmp_path / "export.json"
    if content is not None:
        export.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as refused:
        import_votes(store, export)
    assert str(refused.value) == sentence.format(export=export, session=store.path)


@pytest.mark.parametrize("change", ["order", "no data"])
def test_an_export_of_another_sessions_pair_is_refused(store, tmp_path, change):
    export = annotated(store, tmp_path, {})
    tasks = json.loads(export.read_text(encoding="utf-8"))
    swapped = next(task for task in tasks if task["meta"]["order"] == 1)
    if change == "order":
        swapped["meta"]["order"] = 0  # its left answer is then not the one that order shows
    else:
        del swapped["data"]
    export.write_text(json.dumps([swapped], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError) as refused:
        import_votes(store, export)
    assert str(refused.value) == (
        f"{export}: task 1's left answer is not that of pair {swapped['meta']['pair']} of {store.path}; the export is of another session's project."
    )
