"""The items of a rating session: a test row and two systems' answers to it, built from evaluate steps' predictions.

An evaluate step writes ``predictions.tsv`` (instruction, input, output: the reference, prediction and, when it
also scored the untuned base, base_prediction). One evaluation gives the pair ``tuned`` / ``base``; two or more
evaluations of the same test rows give every pair of them, named as the caller names the evaluations.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pandas as pd

from components.errors import UserError

ROW_KEY = ("instruction", "input")


@dataclass(frozen=True)
class PairItem:
    id: str  # "<row>:<system a>:<system b>"
    row: int  # the test row (0-based, in the predictions' order)
    instruction: str
    input: str
    reference: str
    system_a: str
    answer_a: str
    system_b: str
    answer_b: str


def _read_predictions(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give the predictions.tsv an evaluate step wrote (or its folder).") from None
    missing = [column for column in (*ROW_KEY, "output", "prediction") if column not in frame.columns]
    if missing:
        raise UserError(f"{path} has no column {', '.join(missing)}; it is not the predictions.tsv of an evaluate step.")
    return frame


def items_from_evaluation(predictions: Path) -> list[PairItem]:
    """The fine-tuned model against its untuned base, on every test row of one evaluation."""
    frame = _read_predictions(predictions)
    if "base_prediction" not in frame.columns:
        raise UserError(
            f"{predictions} holds no base_prediction column: that evaluation did not score the untuned base "
            "(--compare-base false); give two evaluations to compare instead."
        )
    return [
        _item(row, record, "tuned", record["prediction"], "base", record["base_prediction"]) for row, record in enumerate(frame.to_dict("records"))
    ]


def items_from_evaluations(predictions: Mapping[str, Path]) -> list[PairItem]:
    """Every pair of the named evaluations, on each test row; the evaluations must have scored the same rows in one order."""
    if len(predictions) < 2:
        raise UserError("Give at least two evaluations to compare (or one that also scored the untuned base).")
    frames = {name: _read_predictions(path) for name, path in predictions.items()}
    (first_name, first), *others = frames.items()
    for name, frame in others:
        if len(frame) != len(first) or not frame[list(ROW_KEY)].equals(first[list(ROW_KEY)]):
            row = next(
                (i for i in range(min(len(frame), len(first))) if tuple(frame.loc[i, list(ROW_KEY)]) != tuple(first.loc[i, list(ROW_KEY)])),
                min(len(frame), len(first)),
            )
            raise UserError(
                f"{predictions[name]} and {predictions[first_name]} differ at test row {row} (line {row + 2}): "
                "compare evaluations of the same test rows (the same --test-tsv and --max-samples)."
            )
    items = []
    for row, record in enumerate(first.to_dict("records")):
        for a, b in combinations(sorted(frames), 2):
            items.append(_item(row, record, a, frames[a].loc[row, "prediction"], b, frames[b].loc[row, "prediction"]))
    return items


def _item(row: int, record: Mapping[str, str], system_a: str, answer_a: str, system_b: str, answer_b: str) -> PairItem:
    return PairItem(
        f"{row}:{system_a}:{system_b}", row, record["instruction"], record["input"], record["output"], system_a, answer_a, system_b, answer_b
    )


def sample_items(items: list[PairItem], count: int | None, seed: int) -> list[PairItem]:
    """``count`` items drawn with ``seed`` (all of them, in order, when ``count`` is None or not smaller)."""
    if count is None or count >= len(items):
        return list(items)
    if count < 1:
        raise UserError(f"--items must be at least 1, got {count}.")
    chosen = sorted(random.Random(seed).sample(range(len(items)), count))
    return [items[i] for i in chosen]


@dataclass(frozen=True)
class Assignment:
    rater: str
    position: int  # the order in which the rater sees the items
    item_id: str
    left_system: str  # which of the item's two systems is shown on the left, drawn per item and rater


def assign(items: list[PairItem], raters: list[str], overlap: int, seed: int) -> list[Assignment]:
    """Each item to ``overlap`` raters (dealt in turn from a seeded shuffle, so the load is even), shown in a seeded
    order per rater with the left/right order drawn per item and rater."""
    if not 1 <= overlap <= len(raters):
        raise UserError(f"--overlap must be between 1 and the number of raters ({len(raters)}), got {overlap}.")
    if len(set(raters)) != len(raters):
        raise UserError(f"Rater names repeat: {raters}.")
    draw = random.Random(seed)
    order = list(range(len(items)))
    draw.shuffle(order)
    per_rater: dict[str, list[PairItem]] = {rater: [] for rater in raters}
    for turn, index in enumerate(order):
        for k in range(overlap):
            per_rater[raters[(turn * overlap + k) % len(raters)]].append(items[index])
    assignments = []
    for rater in raters:
        shown = per_rater[rater]
        draw.shuffle(shown)
        for position, item in enumerate(shown):
            left = item.system_a if draw.random() < 0.5 else item.system_b
            assignments.append(Assignment(rater, position, item.id, left))
    return assignments
