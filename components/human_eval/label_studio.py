"""A rating session as a Label Studio project, and Label Studio's JSON export back as votes.

The project is two files: ``label_config.xml`` (the labeling interface: the instruction and input, the two answers
as ``<Text>``, which Label Studio shows as text, a ``<Pairwise>`` choice of a side, ``<Choices>`` for "equally good" /
"both bad", and an optional comment) and ``tasks.json`` (one task per pair of the session, in Label Studio's import
format). A task names no system: its ``meta`` (stored and exported by Label Studio, never shown to annotators) holds
``pair``, the item's index in the session, and ``order``, which of its two systems is on the left (drawn per item
with the session's seed); the session file is needed to read the export back. How many annotators see each task is Label Studio's project setting ("Annotations per task").

An annotation's verdict: "equally good" or "both bad" when that choice is made (it overrides a side), else the
side the ``<Pairwise>`` selected; cancelled (skipped) annotations and those with neither carry no vote.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from components.errors import UserError
from components.human_eval.session import PairItem
from components.human_eval.statistics import Vote
from components.human_eval.store import RatingStore

CONFIG = """<View>
  <Header value="Instruction"/>
  <Text name="instruction" value="$instruction"/>
  <Header value="Input"/>
  <Text name="input" value="$input"/>
  <View style="display: flex; gap: 1em">
    <View style="flex: 1"><Header value="Left answer"/><Text name="left" value="$left"/></View>
    <View style="flex: 1"><Header value="Right answer"/><Text name="right" value="$right"/></View>
  </View>
  <Header value="Which answer is better? Click it, or choose below."/>
  <Pairwise name="preference" toName="left,right"/>
  <Choices name="no_preference" toName="left" choice="single">
    <Choice value="Equally good"/>
    <Choice value="Both bad"/>
  </Choices>
  <TextArea name="comment" toName="left" placeholder="Comment (optional)" maxSubmissions="1"/>
</View>
"""
NO_PREFERENCE_CHOICES = {"Equally good": "tie", "Both bad": "both_bad"}
SIDES = ("left", "right")
ITEM_TEXTS = ("instruction", "input", "reference", "system_a", "answer_a", "system_b", "answer_b")  # beside each rating


def _left_systems(store: RatingStore, items: list[PairItem]) -> list[str]:
    draw = random.Random(f"label-studio {store.setting('seed')}")
    return [item.system_a if draw.random() < 0.5 else item.system_b for item in items]


def export_project(store: RatingStore, folder: Path) -> list[Path]:
    """Write ``label_config.xml`` and ``tasks.json`` for the session's pairs into ``folder``."""
    items = store.items()
    tasks = []
    for index, (item, left) in enumerate(zip(items, _left_systems(store, items))):
        left_answer, right_answer = (item.answer_a, item.answer_b) if left == item.system_a else (item.answer_b, item.answer_a)
        tasks.append(
            {
                "data": {"instruction": item.instruction, "input": item.input, "left": left_answer, "right": right_answer},
                "meta": {"pair": index, "order": int(left != item.system_a)},
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    config, tasks_path = folder / "label_config.xml", folder / "tasks.json"
    config.write_text(CONFIG, encoding="utf-8")
    tasks_path.write_text(json.dumps(tasks, ensure_ascii=False, indent=1), encoding="utf-8")
    return [config, tasks_path]


def _annotator(completed_by) -> str:
    """Label Studio names the annotator by user id, or (some exports) by an object with the user's email."""
    if isinstance(completed_by, dict):
        return str(completed_by.get("email") or completed_by.get("id"))
    return f"label-studio user {completed_by}"


def _verdict(result: list[dict]) -> tuple[str | None, str]:
    """(choice or None, comment) of one annotation's result list."""
    side = no_preference = None
    comment = ""
    for region in result:
        value = region.get("value", {})
        if region.get("type") == "pairwise":
            side = value.get("selected")
        elif region.get("type") == "choices" and region.get("from_name") == "no_preference":
            labels = value.get("choices") or []
            no_preference = next((NO_PREFERENCE_CHOICES[label] for label in labels if label in NO_PREFERENCE_CHOICES), None)
        elif region.get("type") == "textarea":
            text = value.get("text", [])
            comment = text if isinstance(text, str) else " ".join(text)
    choice = no_preference or (side if side in SIDES else None)
    return choice, comment


def import_votes(store: RatingStore, export: Path) -> tuple[list[Vote], list[dict]]:
    """The votes of a Label Studio JSON export of the project :func:`export_project` wrote for ``store``, and the
    ratings rows (as :meth:`RatingStore.ratings` gives them) for the session's ratings table."""
    try:
        tasks = json.loads(Path(export).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{export}: no such file; give the JSON export of the Label Studio project.") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{export} line {error.lineno}: not JSON ({error.msg}); export the project as JSON from Label Studio.") from None
    if not isinstance(tasks, list):
        raise UserError(f"{export} is not a Label Studio JSON export (a list of tasks); export the project as JSON.")
    items = store.items()
    votes, ratings = [], []
    for number, task in enumerate(tasks, 1):
        data, meta = (task.get("data", {}), task.get("meta") or {}) if isinstance(task, dict) else ({}, {})
        pair, order = meta.get("pair"), meta.get("order")
        if not isinstance(pair, int) or not 0 <= pair < len(items) or order not in (0, 1):
            raise UserError(
                f"{export}: task {number} has no meta pair and order of this session's project; "
                f"export it with --label-studio-export from {store.path}."
            )
        item = items[pair]
        left, right = (item.system_a, item.system_b) if order == 0 else (item.system_b, item.system_a)
        if data.get("left") != (item.answer_a if order == 0 else item.answer_b):
            raise UserError(
                f"{export}: task {number}'s left answer is not that of pair {pair} of {store.path}; the export is of another session's project."
            )
        for annotation in task.get("annotations", []):
            choice, comment = _verdict(annotation.get("result", []))
            if annotation.get("was_cancelled") or choice is None:
                continue
            vote = Vote(item.id, _annotator(annotation.get("completed_by")), left, right, choice)
            votes.append(vote)
            ratings.append(
                {
                    "item": item.id,
                    "row": item.row,
                    "rater": vote.rater,
                    "left_system": left,
                    "right_system": right,
                    "choice": choice,
                    "preferred": vote.preferred,
                    "comment": comment,
                    "voted_at": annotation.get("created_at", ""),
                    **{text: getattr(item, text) for text in ITEM_TEXTS},
                }
            )
    return votes, ratings
