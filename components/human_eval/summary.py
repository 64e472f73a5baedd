"""Everything a session's votes say, in one place: what the results page shows and the session's task reports.

The automatic metrics' side of :func:`~components.human_eval.statistics.metric_agreement` is each answer's
sentence-level score against the test row's reference: chrF++ and BLEU from sacreBLEU (as the protocol's
corpus scores, components/metrics.py, but per sentence; BLEU with sacreBLEU's default exponential
smoothing, which a single sentence needs) and METEOR on the protocol's Russian tokens and stems.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sacrebleu

from components.human_eval.session import PairItem
from components.human_eval.statistics import (
    PairOutcome,
    Proportion,
    Vote,
    agreement,
    bradley_terry,
    metric_agreement,
    pair_outcomes,
    position_bias,
    wilson,
)
from components.metrics import meteor

SENTENCE_METRICS = {
    "chrf": lambda answer, reference: sacrebleu.sentence_chrf(answer, [reference], word_order=2).score / 100,
    "bleu": lambda answer, reference: sacrebleu.sentence_bleu(answer, [reference], tokenize="13a").score / 100,
    "meteor": meteor,
}


@dataclass(frozen=True)
class Summary:
    votes: int
    systems: list[str]
    outcomes: list[PairOutcome]
    position_bias: Proportion  # how often the left answer wins
    agreement: dict[str, float | int | None]
    strengths: dict[str, dict[str, float]] | None  # Bradley-Terry, with more than two systems
    metric_agreement: dict[str, Proportion]  # per metric: how often it prefers the raters' answer

    def win_rate(self, system: str) -> Proportion:
        """The share of a system's votes (in every pair it is in) that prefer it."""
        wins = sum(o.wins.count if o.system == system else o.losses.count for o in self.outcomes if system in (o.system, o.other))
        votes = sum(o.wins.total for o in self.outcomes if system in (o.system, o.other))
        return wilson(wins, votes)

    def as_dict(self) -> dict:
        """The summary as JSON-ready values, each proportion with its rate."""
        return {
            "votes": self.votes,
            "systems": self.systems,
            "pairs": [{"system": o.system, "other": o.other, **{kind: _proportion(getattr(o, kind)) for kind in OUTCOMES}} for o in self.outcomes],
            "position_bias": _proportion(self.position_bias),
            "agreement": self.agreement,
            "bradley_terry": self.strengths,
            "metric_agreement": {name: _proportion(p) for name, p in self.metric_agreement.items()},
        }


OUTCOMES = ("wins", "ties", "both_bad", "losses")


def _proportion(p: Proportion) -> dict[str, float | int | None]:
    return {
        "count": p.count,
        "total": p.total,
        "rate": p.rate if p.total else None,
        "low": p.low if p.total else None,
        "high": p.high if p.total else None,
    }


def sentence_scores(items: Iterable[PairItem]) -> dict[str, dict[str, dict[str, float]]]:
    """metric -> item id -> system -> the system's answer scored against the item's reference."""
    return {
        name: {item.id: {item.system_a: score(item.answer_a, item.reference), item.system_b: score(item.answer_b, item.reference)} for item in items}
        for name, score in SENTENCE_METRICS.items()
    }


def summarise(votes: list[Vote], items: list[PairItem], *, bootstrap: int = 1000, seed: int = 0) -> Summary:
    """The statistics of ``votes`` on ``items`` (Bradley-Terry only with more than two systems: with two it says
    no more than the win rate)."""
    systems = sorted({system for item in items for system in (item.system_a, item.system_b)})
    voted = {vote.item for vote in votes}
    scores = sentence_scores([item for item in items if item.id in voted])
    strengths = bradley_terry(votes, bootstrap=bootstrap, seed=seed) if len(systems) > 2 and votes else None
    return Summary(
        len(votes),
        systems,
        pair_outcomes(votes),
        position_bias(votes),
        agreement(votes),
        strengths,
        {name: metric_agreement(votes, by_item) for name, by_item in scores.items()},
    )
