"""Rating sessions: items from evaluate steps' predictions, assignments, and the SQLite store's guarantees
(every acknowledged vote survives a SIGKILL, a repeated submission counts once, concurrent raters all count)."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import time
from collections import Counter

import pandas as pd
import pytest
from forked import exited_cleanly, start_child, wait_children

from components.errors import UserError
from components.human_eval.session import assign, items_from_evaluation, items_from_evaluations, sample_items
from components.human_eval.store import RatingStore

ROWS = [("Переведи.", f"текст {i}", f"ответ {i}") for i in range(12)]


def predictions(path, prediction: str, base: str | None = "база", rows=ROWS):
    frame = pd.DataFrame(rows, columns=["instruction", "input", "output"])
    frame["prediction"] = [f"{prediction} {i}" for i in range(len(rows))]
    if base is not None:
        frame["base_prediction"] = [f"{base} {i}" for i in range(len(rows))]
    frame.to_csv(path, sep="\t", index=False)
    return path


def test_one_evaluation_pairs_the_tuned_model_with_its_base_and_several_pair_every_two(tmp_path):
    [first, *_] = items = items_from_evaluation(predictions(tmp_path / "p.tsv", "тюн"))
    assert len(items) == len(ROWS)
    assert (first.system_a, first.answer_a, first.system_b, first.answer_b, first.reference) == ("tuned", "тюн 0", "base", "база 0", "ответ 0")
    named = {name: predictions(tmp_path / f"{name}.tsv", name, base=None) for name in ("r8", "r16", "r32")}
    items = items_from_evaluations(named)
    assert len(items) == 3 * len(ROWS)
    assert {(i.system_a, i.system_b) for i in items} == {("r16", "r32"), ("r16", "r8"), ("r32", "r8")}
    assert all(i.answer_a == f"{i.system_a} {i.row}" and i.answer_b == f"{i.system_b} {i.row}" for i in items)


def test_evaluations_of_other_rows_or_without_the_base_are_one_sentence(tmp_path):
    other_rows = predictions(tmp_path / "b.tsv", "b", rows=ROWS[:5] + [("Другое.", "x", "y")] + ROWS[6:])
    with pytest.raises(UserError, match=r"b\.tsv and .*a\.tsv differ at test row 5 \(line 7\): compare evaluations of the same test rows"):
        items_from_evaluations({"a": predictions(tmp_path / "a.tsv", "a"), "b": other_rows})
    with pytest.raises(UserError, match="holds no base_prediction column"):
        items_from_evaluation(predictions(tmp_path / "c.tsv", "c", base=None))


def test_predictions_that_are_not_an_evaluations_are_one_sentence_and_texts_stay_texts(tmp_path):
    absent, partial, one = tmp_path / "absent.tsv", tmp_path / "partial.tsv", predictions(tmp_path / "one.tsv", "NA")
    with pytest.raises(UserError) as error:
        items_from_evaluation(absent)
    assert str(error.value) == f"{absent}: no such file; give the predictions.tsv an evaluate step wrote (or its folder)."
    pd.DataFrame({"instruction": ["a"], "output": ["b"]}).to_csv(partial, sep="\t", index=False)
    with pytest.raises(UserError) as error:
        items_from_evaluation(partial)
    assert str(error.value) == f"{partial} has no column input, prediction; it is not the predictions.tsv of an evaluate step."
    with pytest.raises(UserError) as error:
        items_from_evaluations({"one": one})
    assert str(error.value) == "Give at least two evaluations to compare (or one that also scored the untuned base)."
    with pytest.raises(UserError) as error:
        items_from_evaluation(predictions(tmp_path / "no-base.tsv", "c", base=None))
    assert str(error.value) == (
        f"{tmp_path / 'no-base.tsv'} holds no base_prediction column: that evaluation did not score the untuned base "
        "(--compare-base false); give two evaluations to compare instead."
    )
    # "NA", "None", "1,5" and "007" are answers, not missing values or numbers; the file's separator is the tab.
    rows = [("NA", "None", "1,5"), ("007", "a,b", "c")]
    frame = pd.DataFrame(rows, columns=["instruction", "input", "output"]).assign(prediction=["NA", "1,5"], base_prediction=["1.50", "007"])
    frame.to_csv(tmp_path / "texts.tsv", sep="\t", index=False)
    items = items_from_evaluation(tmp_path / "texts.tsv")
    assert [(i.instruction, i.input, i.reference, i.answer_a, i.answer_b) for i in items] == [
        ("NA", "None", "1,5", "NA", "1.50"),
        ("007", "a,b", "c", "1,5", "007"),
    ]


def test_a_shorter_evaluation_differs_where_it_ends(tmp_path):
    shorter = predictions(tmp_path / "b.tsv", "b", rows=ROWS[:4])
    with pytest.raises(UserError, match=r"b\.tsv and .*a\.tsv differ at test row 4 \(line 6\)"):
        items_from_evaluations({"a": predictions(tmp_path / "a.tsv", "a"), "b": shorter})


def test_sampling_takes_all_items_from_their_count_on_and_one_at_least(tmp_path):
    items = items_from_evaluation(predictions(tmp_path / "p.tsv", "t"))
    assert sample_items(items, None, seed=0) == sample_items(items, len(items), seed=0) == items
    assert sample_items(items, 1, seed=4) == [items[sorted(random.Random(4).sample(range(len(items)), 1))[0]]]
    assert sample_items(items, 3, seed=4) == [items[i] for i in sorted(random.Random(4).sample(range(len(items)), 3))]
    with pytest.raises(UserError) as error:
        sample_items(items, 0, seed=0)
    assert str(error.value) == "--items must be at least 1, got 0."


def test_items_are_dealt_to_raters_in_turn_and_overlap_one_gives_each_item_once(tmp_path):
    """The deal by hand: the seeded shuffle's turn t gives its item to raters t*overlap .. t*overlap+overlap-1 (mod raters)."""
    items = items_from_evaluation(predictions(tmp_path / "p.tsv", "t"))[:6]
    raters = ["ann", "bob", "eve", "kim"]
    order = list(range(len(items)))
    random.Random(9).shuffle(order)
    dealt = {rater: set() for rater in raters}
    for turn, index in enumerate(order):
        for k in range(2):
            dealt[raters[(turn * 2 + k) % 4]].add(items[index].id)
    assignments = assign(items, raters, overlap=2, seed=9)
    assert {rater: {a.item_id for a in assignments if a.rater == rater} for rater in raters} == dealt
    once = assign(items, raters, overlap=1, seed=9)
    assert sorted(a.item_id for a in once) == sorted(item.id for item in items)
    with pytest.raises(UserError) as error:
        assign(items, ["ann", "ann"], overlap=1, seed=0)
    assert str(error.value) == "Rater names repeat: ['ann', 'ann']."


def test_each_item_goes_to_overlap_raters_evenly_with_seeded_orders_and_sides(tmp_path):
    items = sample_items(items_from_evaluation(predictions(tmp_path / "p.tsv", "t")), 10, seed=1)
    assert len(items) == 10 and items != sample_items(items_from_evaluation(predictions(tmp_path / "q.tsv", "t")), 10, seed=2)
    assignments = assign(items, ["ann", "bob", "eve"], overlap=2, seed=5)
    per_item = Counter(a.item_id for a in assignments)
    assert set(per_item.values()) == {2} and len(per_item) == 10
    assert all(len({a.rater for a in assignments if a.item_id == item}) == 2 for item in per_item)
    assert sorted(Counter(a.rater for a in assignments).values()) == [6, 7, 7]
    assert {a.left_system for a in assignments} == {"tuned", "base"}
    assert assign(items, ["ann", "bob", "eve"], overlap=2, seed=5) == assignments != assign(items, ["ann", "bob", "eve"], overlap=2, seed=6)
    with pytest.raises(UserError, match="--overlap must be between 1 and the number of raters"):
        assign(items, ["ann"], overlap=2, seed=0)


@pytest.fixture
def store(tmp_path) -> RatingStore:
    items = items_from_evaluation(predictions(tmp_path / "p.tsv", "тюн"))
    return RatingStore.create(tmp_path / "session.db", items, assign(items, ["ann", "bob"], overlap=2, seed=3), {"seed": "3"})


def test_a_rater_continues_where_they_stopped_and_a_repeated_vote_counts_once(store):
    tokens = store.tokens()
    # 128 random bits each (16 bytes, 22 URL-safe characters), the results view's too
    assert len(set(tokens.values())) == 2 and all(re.fullmatch(r"[\w-]{22}", token) for token in tokens.values())
    assert store.rater_of(tokens["ann"]) == "ann" and store.rater_of("guess") is None
    shown = store.next_item("ann")
    assert store.record_vote("ann", shown.item_id, "left", "лучше") is True
    assert store.record_vote("ann", shown.item_id, "right") is False  # a resent request: the first vote stays
    assert store.progress("ann") == (1, len(ROWS)) and store.next_item("ann").position == shown.position + 1
    reopened = RatingStore(store.path)  # a restarted server
    assert reopened.next_item("ann").position == shown.position + 1
    [stored] = reopened.votes()
    assert (stored.rater, stored.item, stored.choice) == ("ann", shown.item_id, "left")
    assert {stored.left, stored.right} == {"tuned", "base"}
    assert reopened.all_progress() == {"ann": (1, len(ROWS)), "bob": (0, len(ROWS))}
    assert reopened.setting("seed") == "3" and re.fullmatch(r"[\w-]{22}", reopened.setting("results_token"))
    assert reopened.items() == sorted(items_from_evaluation(predictions(store.path.parent / "again.tsv", "тюн")), key=lambda i: (i.row, i.id))
    row = int(shown.item_id.split(":")[0])
    left_system = stored.left
    assert shown.left_answer == (f"тюн {row}" if left_system == "tuned" else f"база {row}")  # the page's left is the vote's left
    assert stored.preferred == left_system
    with pytest.raises(UserError, match="not assigned to rater 'ann'"):
        store.record_vote("ann", "nonsense", "tie")
    with pytest.raises(UserError, match="A vote is one of left, right, tie, both_bad"):
        store.record_vote("bob", shown.item_id, "better")
    with pytest.raises(UserError, match="already exists"):
        RatingStore.create(store.path, [], [], {})


def test_the_store_shows_each_item_as_drawn_and_gives_back_each_vote_as_cast(tmp_path):
    """Shown texts and sides, a position past the end, a vote without a comment, the preferred system of a left
    and of a right vote; a session in folders not made yet, and none where there is no file."""
    items = items_from_evaluation(predictions(tmp_path / "p.tsv", "тюн"))[:4]
    store = RatingStore.create(tmp_path / "new" / "folders" / "s.db", items, assign(items, ["ann"], overlap=1, seed=2), {})
    by_id = {item.id: item for item in items}
    sides, positions = set(), {}
    while (shown := store.next_item("ann")) is not None:
        positions[shown.item_id] = shown.position
        item = by_id[store.item_at("ann", shown.position)]
        assert (shown.item_id, shown.instruction, shown.input) == (item.id, item.instruction, item.input)
        left_is_a = shown.left_answer == item.answer_a
        sides.add(left_is_a)
        assert (shown.left_answer, shown.right_answer) == ((item.answer_a, item.answer_b) if left_is_a else (item.answer_b, item.answer_a))
        store.record_vote("ann", shown.item_id, "left" if len(sides) % 2 else "right")
    assert sides == {True, False}  # both orders were drawn
    assert store.item_at("ann", len(items)) is None
    assert sorted(positions.values()) == list(range(len(items)))
    assert {rating["item"]: (rating["position"], rating["row"]) for rating in store.ratings()} == {
        item_id: (position, by_id[item_id].row) for item_id, position in positions.items()
    }  # where the rater saw it, and its test row
    for rating in store.ratings():
        shown_left = rating["left_system"]
        assert rating["comment"] == "" and rating["preferred"] == (shown_left if rating["choice"] == "left" else rating["right_system"])
        assert {rating["left_system"], rating["right_system"]} == {"tuned", "base"}
    with pytest.raises(UserError) as error:
        RatingStore(tmp_path / "none.db")
    assert str(error.value) == f"{tmp_path / 'none.db'}: no rating session there; create one first."


def test_every_acknowledged_vote_survives_a_sigkill_at_any_moment(store):
    """A child votes as fast as it can and acknowledges each vote on a pipe once record_vote returned; it is killed
    after a while, mid-write or between writes. Every acknowledged vote is in the file (at most one more, unacknowledged)."""
    bobs_votes = lambda: len([v for v in RatingStore(store.path).votes() if v.rater == "bob"])  # noqa: E731
    for delay in (0.05, 0.13, 0.21):
        before = bobs_votes()
        read_end, write_end = os.pipe()

        def vote_everything():
            os.close(read_end)
            while (shown := store.next_item("bob")) is not None:
                store.record_vote("bob", shown.item_id, "tie")
                os.write(write_end, b"\n")
            time.sleep(60)

        pid = start_child(vote_everything)
        os.close(write_end)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        acknowledged = 0
        while chunk := os.read(read_end, 1 << 16):
            acknowledged += chunk.count(b"\n")
        os.close(read_end)
        stored = bobs_votes() - before
        assert acknowledged <= stored <= acknowledged + 1
        if before + stored == len(ROWS):
            break
    assert before + stored > 0


def test_a_vote_is_written_in_wal_mode_with_synchronous_full(store, monkeypatch):
    """What a SIGKILL cannot show: that an acknowledged vote also survives the machine losing power. Only
    ``synchronous=FULL`` syncs the WAL at every commit (NORMAL, in WAL mode, may lose the last transactions; OFF any),
    so the connection that stores each vote is asked its settings as the vote is written (2 is FULL)."""
    seen = []

    class Recording(sqlite3.Connection):
        def execute(self, sql, *parameters):
            if "INTO votes" in sql:
                seen.append((super().execute("PRAGMA synchronous").fetchone()[0], super().execute("PRAGMA journal_mode").fetchone()[0]))
            return super().execute(sql, *parameters)

    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *args, **kwargs: connect(*args, factory=Recording, **kwargs))
    for rater in ("ann", "bob"):
        store.record_vote(rater, store.next_item(rater).item_id, "tie")
    assert seen == [(2, "wal")] * 2


def test_concurrent_raters_never_overwrite_each_other(store):
    def vote_all(rater: str, choice: str):
        return lambda: [store.record_vote(rater, shown.item_id, choice) for shown in iter(lambda: store.next_item(rater), None)]

    statuses = wait_children([start_child(vote_all("ann", "left")), start_child(vote_all("bob", "right"))])
    assert all(exited_cleanly(status) for status in statuses)
    votes = store.votes()
    assert Counter((v.rater, v.choice) for v in votes) == {("ann", "left"): len(ROWS), ("bob", "right"): len(ROWS)}
