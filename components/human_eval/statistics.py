"""What a set of pairwise votes says about the systems, the raters and the metrics.

A :class:`Vote` is one rater's verdict on one item: two systems' answers to the same test row,
shown left and right in an order drawn per item and rater. The verdict (``left``, ``right``,
``tie``, ``both_bad``) is turned into a preference between systems before anything is counted,
so the left/right order matters only to :func:`position_bias`.

Libraries do the statistics: scipy's Wilson score interval, choix's Bradley-Terry fit, scikit-learn's
Cohen's kappa, the ``krippendorff`` package's alpha. Each is checked in tests/test_human_eval_statistics.py
against a published worked example or an independent computation.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from components.errors import UserError

CHOICES = ("left", "right", "tie", "both_bad")
NO_PREFERENCE = ("tie", "both_bad")
CONFIDENCE = 0.95
# Bradley-Terry's L2 penalty (choix's alpha): a weak prior that keeps every strength finite when a system
# never loses (or never wins); with a few dozen votes it moves the strengths by well under their intervals.
BT_PENALTY = 0.01


@dataclass(frozen=True)
class Vote:
    item: str  # one test row and one pair of systems
    rater: str
    left: str  # the system whose answer was shown on the left
    right: str
    choice: str  # one of CHOICES

    def __post_init__(self):
        if self.choice not in CHOICES:
            raise UserError(f"A vote of rater {self.rater!r} on item {self.item!r} is {self.choice!r}; a choice is one of {', '.join(CHOICES)}.")

    @property
    def preferred(self) -> str:
        """The system the rater preferred, or ``tie`` / ``both_bad``."""
        return {"left": self.left, "right": self.right}.get(self.choice, self.choice)


@dataclass(frozen=True)
class Proportion:
    count: int
    total: int
    low: float  # the 95% Wilson score interval
    high: float

    @property
    def rate(self) -> float:
        return self.count / self.total if self.total else float("nan")


def wilson(count: int, total: int, confidence: float = CONFIDENCE) -> Proportion:
    """``count`` of ``total`` with its Wilson score interval (scipy), which stays inside [0, 1] and is sound for small counts."""
    if total == 0:
        return Proportion(0, 0, float("nan"), float("nan"))
    from scipy.stats import binomtest

    interval = binomtest(count, total).proportion_ci(confidence_level=confidence, method="wilson")
    return Proportion(count, total, float(interval.low), float(interval.high))


@dataclass(frozen=True)
class PairOutcome:
    """The votes on one pair of systems, from ``system``'s side: its wins, the ties, the both-bads, its losses."""

    system: str
    other: str
    wins: Proportion
    ties: Proportion
    both_bad: Proportion
    losses: Proportion


def pair_outcomes(votes: Iterable[Vote]) -> list[PairOutcome]:
    """One outcome per pair of systems (the pair's names in sorted order), each proportion out of all the pair's votes."""
    by_pair: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for vote in votes:
        by_pair[tuple(sorted((vote.left, vote.right)))][vote.preferred] += 1
    outcomes = []
    for (system, other), counts in sorted(by_pair.items()):
        total = sum(counts.values())
        outcomes.append(
            PairOutcome(
                system,
                other,
                wilson(counts[system], total),
                wilson(counts["tie"], total),
                wilson(counts["both_bad"], total),
                wilson(counts[other], total),
            )
        )
    return outcomes


def position_bias(votes: Iterable[Vote]) -> Proportion:
    """How often the left answer wins among the votes that prefer one: 0.5 when the position does not matter."""
    decisive = [vote for vote in votes if vote.choice not in NO_PREFERENCE]
    return wilson(sum(vote.choice == "left" for vote in decisive), len(decisive))


def _decisive_pairs(votes: Iterable[Vote], index: Mapping[str, int]) -> list[tuple[int, int]]:
    """(winner, loser) by system index: Bradley-Terry models preferences, so ties and both-bads carry none."""
    pairs = []
    for vote in votes:
        if vote.choice not in NO_PREFERENCE:
            loser = vote.right if vote.choice == "left" else vote.left
            pairs.append((index[vote.preferred], index[loser]))
    return pairs


def bradley_terry(votes: list[Vote], *, bootstrap: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each system's Bradley-Terry strength (log scale, mean 0: P(a beats b) = 1 / (1 + exp(s_b - s_a))) with a 95%
    percentile bootstrap interval over ``bootstrap`` resamples of the votes (seeded).

    Fitted by choix (maximum a posteriori with the L2 penalty ``BT_PENALTY``) on the votes that prefer a system.
    """
    import choix

    systems = sorted({name for vote in votes for name in (vote.left, vote.right)})
    if len(systems) < 2:
        raise UserError("Bradley-Terry strengths need votes on at least two systems.")
    index = {name: position for position, name in enumerate(systems)}

    def fit(sample: list[Vote]) -> np.ndarray:
        strengths = choix.opt_pairwise(len(systems), _decisive_pairs(sample, index), alpha=BT_PENALTY)
        return strengths - strengths.mean()

    estimate = fit(votes)
    generator = np.random.default_rng(seed)
    resampled = np.array([fit([votes[i] for i in generator.integers(0, len(votes), len(votes))]) for _ in range(bootstrap)])
    low, high = np.percentile(resampled, [100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2], axis=0)
    return {name: {"strength": float(estimate[i]), "low": float(low[i]), "high": float(high[i])} for name, i in index.items()}


def agreement(votes: Iterable[Vote]) -> dict[str, float | int | None]:
    """Agreement of the raters on the items several of them rated, on the preferred system (or tie / both bad).

    Krippendorff's alpha (nominal; any number of raters, items rated by some) always; Cohen's kappa when
    exactly two raters share items. Items rated once carry no agreement and are left out.
    """
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    verdicts: dict[str, dict[str, str]] = defaultdict(dict)
    for vote in votes:
        verdicts[vote.item][vote.rater] = vote.preferred
    shared = {item: by_rater for item, by_rater in verdicts.items() if len(by_rater) > 1}
    raters = sorted({rater for by_rater in shared.values() for rater in by_rater})
    result: dict[str, float | int | None] = {"items": len(shared), "raters": len(raters), "krippendorff_alpha": None, "cohen_kappa": None}
    if not shared:
        return result
    codes = {label: code for code, label in enumerate(sorted({label for by_rater in shared.values() for label in by_rater.values()}))}
    matrix = [[codes[shared[item][rater]] if rater in shared[item] else np.nan for item in sorted(shared)] for rater in raters]
    if len(codes) > 1:  # one label everywhere: perfect agreement, but alpha is undefined (no variation to agree on)
        result["krippendorff_alpha"] = float(krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal"))
    if len(raters) == 2:
        first, second = ([shared[item][rater] for item in sorted(shared)] for rater in raters)
        result["cohen_kappa"] = float(cohen_kappa_score(first, second))
    return result


def metric_agreement(votes: Iterable[Vote], scores: Mapping[str, Mapping[str, float]]) -> Proportion:
    """How often a metric prefers the answer the raters prefer: over the items whose raters' majority prefers a system
    and whose metric scores (``scores[item][system]``, higher is better) differ."""
    tallies: dict[str, Counter] = defaultdict(Counter)
    for vote in votes:
        tallies[vote.item][vote.preferred] += 1
    agree = compared = 0
    for item, tally in tallies.items():
        [(top, count), *rest] = tally.most_common()
        if top in NO_PREFERENCE or (rest and rest[0][1] == count):
            continue  # no majority for a system
        item_scores = scores[item]
        other = next(name for name in item_scores if name != top)
        if item_scores[top] == item_scores[other]:
            continue  # the metric prefers neither
        compared += 1
        agree += item_scores[top] > item_scores[other]
    return wilson(agree, compared)
