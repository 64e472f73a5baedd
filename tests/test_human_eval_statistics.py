"""The human-evaluation statistics against published worked examples and independent computations."""

from __future__ import annotations

import math
from collections import Counter
from itertools import permutations

import krippendorff
import numpy as np
import pytest
from scipy.optimize import minimize

from components.errors import UserError
from components.human_eval.statistics import BT_PENALTY, Vote, agreement, bradley_terry, metric_agreement, pair_outcomes, position_bias, wilson


def vote(item, rater, preferred, systems=("a", "b"), flip=False) -> Vote:
    """A vote preferring ``preferred`` (a system, "tie" or "both_bad"), ``systems`` shown in that order or flipped."""
    left, right = reversed(systems) if flip else systems
    choice = {left: "left", right: "right"}.get(preferred, preferred)
    return Vote(str(item), rater, left, right, choice)


@pytest.mark.numeric
def test_the_wilson_interval_is_newcombes_worked_example_and_its_formula():
    """Newcombe (1998), Statistics in Medicine 17:857, Table I: 81 of 263, Wilson score interval 0.2553 to 0.3662."""
    interval = wilson(81, 263)
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.2553, 0.3662)
    z = 1.959963984540054
    for count, total in [(0, 10), (10, 10), (3, 7), (1, 2)]:  # the score interval written out, at the edges too
        p = count / total
        centre, half = p + z * z / (2 * total), z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
        got = wilson(count, total)
        assert (got.low, got.high) == pytest.approx(((centre - half) / (1 + z * z / total), (centre + half) / (1 + z * z / total)), abs=1e-12)


def test_no_votes_is_a_count_of_nothing_with_no_interval_and_another_confidence_is_its_own_formula():
    nothing = wilson(0, 0)
    assert (nothing.count, nothing.total) == (0, 0) and all(math.isnan(value) for value in (nothing.low, nothing.high, nothing.rate))
    z = 2.5758293035489004  # the normal quantile of 0.995: a 99% interval
    p, total = 81 / 263, 263
    centre, half = p + z * z / (2 * total), z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    got = wilson(81, 263, confidence=0.99)
    assert (got.low, got.high) == pytest.approx(((centre - half) / (1 + z * z / total), (centre + half) / (1 + z * z / total)), abs=1e-12)


@pytest.mark.numeric
def test_cohens_kappa_is_the_textbook_example_whatever_the_left_right_order():
    """50 items, two raters: 20 both prefer a, 5 only the first does, 10 only the second, 15 both prefer b: p_o 0.7,
    p_e 0.5, kappa 0.4 (the example of Wikipedia's "Cohen's kappa"). Each rater saw the pair in an order of its own."""
    pattern = [("a", "a")] * 20 + [("a", "b")] * 5 + [("b", "a")] * 10 + [("b", "b")] * 15
    votes = [
        vote(item, rater, preferred, flip=(item + rank) % 3 == 0)
        for item, verdicts in enumerate(pattern)
        for rank, (rater, preferred) in enumerate(zip(("r1", "r2"), verdicts))
    ]
    result = agreement(votes)
    assert (result["items"], result["raters"]) == (50, 2)
    assert result["cohen_kappa"] == pytest.approx(0.4, abs=1e-12)


def test_the_krippendorff_package_gives_krippendorffs_worked_example():
    """Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units, nominal alpha 0.743."""
    n = np.nan
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    assert round(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"), 3) == 0.743


def nominal_alpha_by_hand(verdicts: dict[str, list[str]]) -> float:
    """Krippendorff's nominal alpha from the coincidence counts: 1 - D_o / D_e, items rated once left out."""
    coincidences: Counter = Counter()
    for labels in verdicts.values():
        if len(labels) < 2:
            continue
        for first, second in permutations(range(len(labels)), 2):
            coincidences[labels[first], labels[second]] += 1 / (len(labels) - 1)
    totals: Counter = Counter()
    for (first, _), weight in coincidences.items():
        totals[first] += weight
    n = sum(totals.values())
    observed = sum(weight for (first, second), weight in coincidences.items() if first != second)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k) / (n - 1)
    return 1 - observed / expected


@pytest.mark.numeric
def test_krippendorffs_alpha_of_three_raters_is_the_coincidence_formula():
    """Three raters, items rated by two or three, one rated once (left out), systems in both orders."""
    plan = {
        0: ["a", "a", "a"],
        1: ["a", "b", "a"],
        2: ["tie", "tie"],
        3: ["b", "b", "both_bad"],
        4: ["a"],
        5: ["b", "a"],
        6: ["both_bad", "both_bad", "b"],
        7: ["a", "a"],
    }
    votes = [vote(item, f"r{rank}", preferred, flip=(item + rank) % 2 == 1) for item, labels in plan.items() for rank, preferred in enumerate(labels)]
    result = agreement(votes)
    assert (result["items"], result["raters"], result["cohen_kappa"]) == (7, 3, None)
    assert result["krippendorff_alpha"] == pytest.approx(nominal_alpha_by_hand({str(k): v for k, v in plan.items()}), abs=1e-12)


def test_agreement_without_shared_items_is_none_and_one_label_everywhere_has_no_alpha():
    assert agreement([vote(1, "r1", "a"), vote(2, "r2", "b")]) == {"items": 0, "raters": 0, "krippendorff_alpha": None, "cohen_kappa": None}
    one_label = agreement([vote(item, rater, "tie") for item in range(3) for rater in ("r1", "r2", "r3")])
    assert (one_label["items"], one_label["raters"], one_label["krippendorff_alpha"]) == (3, 3, None)  # no variation to agree on
    two_labels = {0: ["a", "a"], 1: ["b", "b"], 2: ["a", "b"]}
    votes = [vote(item, f"r{rank}", preferred) for item, labels in two_labels.items() for rank, preferred in enumerate(labels)]
    assert agreement(votes)["krippendorff_alpha"] == pytest.approx(nominal_alpha_by_hand({str(k): v for k, v in two_labels.items()}), abs=1e-12)


def penalised_fit_by_hand(systems: list[str], decisive: list[tuple[str, str]]) -> dict[str, float]:
    """The Bradley-Terry objective written out (-log likelihood + penalty * |s|^2), minimised by scipy; strengths of mean 0."""
    index = {name: i for i, name in enumerate(systems)}

    def objective(s):
        return BT_PENALTY * np.sum(s**2) + sum(np.logaddexp(0, -(s[index[winner]] - s[index[loser]])) for winner, loser in decisive)

    fitted = minimize(objective, np.zeros(len(systems)), method="BFGS", options={"gtol": 1e-10}).x
    return {name: fitted[i] - fitted.mean() for name, i in index.items()}


@pytest.mark.numeric
def test_bradley_terry_strengths_are_the_penalised_likelihoods_optimum_and_ties_carry_no_preference():
    pairs = [("a", "b")] * 7 + [("b", "a")] * 3 + [("b", "c")] * 6 + [("c", "b")] * 2 + [("a", "c")] * 5 + [("c", "a")] * 1
    votes = [vote(i, "r", winner, systems=tuple(sorted((winner, loser))), flip=i % 2 == 0) for i, (winner, loser) in enumerate(pairs)]
    votes += [vote(100 + i, "r", "tie", systems=("a", "c")) for i in range(4)] + [vote(200, "r", "both_bad", systems=("b", "c"))]
    fitted = bradley_terry(votes, bootstrap=200, seed=3)
    expected = penalised_fit_by_hand(["a", "b", "c"], pairs)
    for name in "abc":
        assert fitted[name]["strength"] == pytest.approx(expected[name], abs=1e-4)  # choix's tolerance 1e-5 on the gradient
        assert fitted[name]["low"] < fitted[name]["strength"] < fitted[name]["high"]
    assert fitted["a"]["strength"] > fitted["b"]["strength"] > fitted["c"]["strength"]
    assert bradley_terry(votes, bootstrap=200, seed=3) == fitted and bradley_terry(votes, bootstrap=200, seed=4) != fitted


@pytest.mark.numeric
def test_the_bradley_terry_interval_is_the_percentile_bootstrap_over_resampled_votes():
    """The 2.5th and 97.5th percentiles of choix's fits to ``bootstrap`` resamples of all the votes (with replacement,
    numpy's generator seeded with ``seed``), each fit centred on mean 0; the defaults are 1000 resamples and seed 0."""
    import choix

    votes = [vote(i, "r", "a") for i in range(6)] + [vote(10 + i, "r", "b", flip=True) for i in range(3)] + [vote(20, "r", "tie")]
    votes += [vote(30 + i, "r", "c", systems=("a", "c")) for i in range(2)] + [vote(40 + i, "r", "a", systems=("a", "c")) for i in range(3)]
    systems = ["a", "b", "c"]

    def fit(sample):
        pairs = [
            (systems.index(v.preferred), systems.index(v.right if v.choice == "left" else v.left)) for v in sample if v.choice in ("left", "right")
        ]
        strengths = choix.opt_pairwise(len(systems), pairs, alpha=BT_PENALTY)
        return strengths - strengths.mean()

    for bootstrap, seed in ((40, 7), (1000, 0)):
        generator = np.random.default_rng(seed)
        resampled = np.array([fit([votes[i] for i in generator.integers(0, len(votes), len(votes))]) for _ in range(bootstrap)])
        low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
        fitted = bradley_terry(votes, bootstrap=bootstrap, seed=seed) if seed else bradley_terry(votes)
        assert [fitted[name]["low"] for name in systems] == pytest.approx(list(low), abs=1e-12)
        assert [fitted[name]["high"] for name in systems] == pytest.approx(list(high), abs=1e-12)


@pytest.mark.numeric
def test_two_systems_strength_gap_is_the_log_odds_of_their_wins():
    """With two systems the likelihood's optimum is exp(s_a - s_b) = wins_a / wins_b; the penalty shrinks it a little."""
    votes = [vote(i, "r", "a") for i in range(8)] + [vote(10 + i, "r", "b", flip=True) for i in range(2)]
    fitted = bradley_terry(votes, bootstrap=50)
    assert fitted["a"]["strength"] - fitted["b"]["strength"] == pytest.approx(math.log(4), abs=0.02)
    with pytest.raises(UserError, match=r"^Bradley-Terry strengths need votes on at least two systems\.$"):
        bradley_terry([Vote("1", "r", "a", "a", "tie")], bootstrap=1)


def test_pair_outcomes_count_each_pairs_votes_from_its_first_systems_side():
    votes = (
        [vote(i, "r", "a", flip=i % 2 == 0) for i in range(5)]
        + [vote(10, "r", "b"), vote(11, "r", "tie"), vote(12, "r", "both_bad", flip=True)]
        + [vote(20, "r", "c", systems=("c", "a"))]
    )
    ab, ac = pair_outcomes(votes)
    assert (ab.system, ab.other, ab.wins.count, ab.ties.count, ab.both_bad.count, ab.losses.count) == ("a", "b", 5, 1, 1, 1)
    assert ab.wins.total == 8 and ab.wins.rate == 5 / 8 and (ab.wins.low, ab.wins.high) == (wilson(5, 8).low, wilson(5, 8).high)
    assert (ac.system, ac.other, ac.wins.count, ac.losses.count) == ("a", "c", 0, 1)


def test_position_bias_is_how_often_the_left_answer_wins_among_decisive_votes():
    votes = [Vote(str(i), "r", "a", "b", choice) for i, choice in enumerate(["left"] * 6 + ["right"] * 2 + ["tie", "both_bad"])]
    bias = position_bias(votes)
    assert (bias.count, bias.total) == (6, 8)


def test_a_metric_agrees_where_it_scores_the_raters_majority_answer_higher():
    """Items left out come first, so that leaving one out does not end the count."""
    votes = [
        vote(3, "r1", "a"),
        vote(3, "r2", "b"),  # no majority: left out
        vote(5, "r1", "a"),  # the metric scores both alike: left out
        vote(4, "r1", "tie"),
        vote(4, "r2", "tie"),  # no system preferred: left out
        vote(1, "r1", "a"),
        vote(1, "r2", "a", flip=True),
        vote(1, "r3", "b"),  # majority a
        vote(2, "r1", "b"),
        vote(2, "r2", "b"),
    ]  # majority b
    scores = {"1": {"a": 0.6, "b": 0.2}, "2": {"a": 0.5, "b": 0.1}, "3": {"a": 0.1, "b": 0.9}, "4": {"a": 0.3, "b": 0.2}, "5": {"a": 0.4, "b": 0.4}}
    agreeing = metric_agreement(votes, scores)
    assert (agreeing.count, agreeing.total) == (1, 2)


def test_a_vote_outside_the_choices_is_one_sentence():
    with pytest.raises(UserError, match=r"rater 'r' on item '7' is 'better'; a choice is one of left, right, tie, both_bad\."):
        Vote("7", "r", "a", "b", "better")


def three_systems_session():
    """Items pairing three systems on two test rows, and votes of two raters, both orders shown."""
    from components.human_eval.session import PairItem

    items = [
        PairItem(f"{row}:{a}:{b}", row, f"вопрос {row}", "", f"ответ {row}", a, f"ответ {row}" if a == "a" else f"{a} {row}", b, f"{b} {row}")
        for row in range(2)
        for a, b in (("a", "b"), ("a", "c"), ("b", "c"))
    ]
    preferred = {"0:a:b": "a", "0:a:c": "a", "0:b:c": "tie", "1:a:b": "b", "1:a:c": "a", "1:b:c": "c"}
    votes = [
        vote(item.id, rater, preferred[item.id], systems=(item.system_a, item.system_b), flip=(rank + item.row) % 2 == 1)
        for item in items
        for rank, rater in enumerate(("r1", "r2"))
    ]
    return items, votes


def test_the_summary_holds_each_statistic_of_the_votes_and_its_json_names_them():
    from components.human_eval.summary import sentence_scores, summarise

    items, votes = three_systems_session()
    summary = summarise(votes, items, bootstrap=20, seed=3)
    assert (summary.votes, summary.systems) == (12, ["a", "b", "c"])
    assert summary.strengths == bradley_terry(votes, bootstrap=20, seed=3)
    assert summarise(votes, items).strengths == bradley_terry(votes, bootstrap=1000, seed=0)  # the defaults
    scores = sentence_scores(items)
    assert {name: summary.metric_agreement[name] for name in scores} == {name: metric_agreement(votes, by_item) for name, by_item in scores.items()}
    # a's 8 votes (2 raters x 4 items): 0:a:b, 0:a:c and 1:a:c prefer a, 1:a:b prefers b -> 6 of 8
    a = summary.win_rate("a")
    assert (a.count, a.total, (a.low, a.high)) == (6, 8, (wilson(6, 8).low, wilson(6, 8).high))
    c = summary.win_rate("c")  # 0:a:c and 1:a:c lost twice each, 0:b:c tied twice, 1:b:c won twice
    assert (c.count, c.total) == (2, 8)
    data = summary.as_dict()
    assert list(data) == ["votes", "systems", "pairs", "position_bias", "agreement", "bradley_terry", "metric_agreement"]
    assert (data["votes"], data["systems"], data["agreement"], data["bradley_terry"]) == (12, ["a", "b", "c"], agreement(votes), summary.strengths)
    bias = position_bias(votes)
    assert data["position_bias"] == {"count": bias.count, "total": bias.total, "rate": bias.rate, "low": bias.low, "high": bias.high}
    [ab, *_] = data["pairs"]
    assert (ab["system"], ab["other"], ab["wins"]["count"], ab["losses"]["count"], ab["ties"]["total"]) == ("a", "b", 2, 2, 4)
    assert set(data["metric_agreement"]) == {"chrf", "bleu", "meteor"}


def test_two_systems_have_no_bradley_terry_and_no_votes_have_no_rates():
    from components.human_eval.summary import summarise

    items, votes = three_systems_session()
    two = [item for item in items if (item.system_a, item.system_b) == ("a", "b")]
    assert summarise([v for v in votes if v.item in {i.id for i in two}], two, bootstrap=5).strengths is None
    nothing = summarise([], items).as_dict()
    assert nothing["bradley_terry"] is None and nothing["votes"] == 0
    assert nothing["position_bias"] == {"count": 0, "total": 0, "rate": None, "low": None, "high": None}


class RecordingLogger:
    """The calls report_summary makes on a ClearML logger (any other call fails: the double has no such method)."""

    def __init__(self):
        self.values, self.tables, self.figures = {}, {}, []

    def report_single_value(self, name, value):
        self.values[name] = value

    def report_table(self, title, series, iteration, table_plot):
        self.tables[(title, series, iteration)] = table_plot

    def report_matplotlib_figure(self, title, series, figure, iteration, report_image):
        self.figures.append((title, series, iteration, report_image, len(figure.axes[0].patches)))


def test_the_task_reports_each_statistic_under_its_name_with_the_tables_and_the_plot():
    from clearml_adapter.human_evaluation import report_summary
    from components.human_eval.summary import summarise

    items, votes = three_systems_session()
    summary = summarise(votes, items, bootstrap=20, seed=3)
    logger = RecordingLogger()
    report_summary(type("Task", (), {"get_logger": lambda self: logger})(), summary)
    expected = {
        "votes": 12,
        "position bias (left wins)": summary.position_bias.rate,
        "cohen kappa": summary.agreement["cohen_kappa"],
        "krippendorff alpha": summary.agreement["krippendorff_alpha"],
    }
    for o in summary.outcomes:
        expected |= {
            f"{o.system} vs {o.other}: {kind}": getattr(o, field).rate
            for kind, field in (("wins", "wins"), ("ties", "ties"), ("both bad", "both_bad"), ("losses", "losses"))
        }
    expected |= {f"{name} agrees with raters": share.rate for name, share in summary.metric_agreement.items() if share.total}
    assert logger.values == pytest.approx(expected)
    pairs = logger.tables[("human evaluation", "pairs", 0)]
    assert list(pairs.columns) == [
        "system",
        "other",
        "votes",
        *(f"{k}{s}" for k in ("wins", "ties", "both_bad", "losses") for s in ("", " low", " high")),
    ]
    assert pairs[["system", "other", "votes"]].values.tolist() == [["a", "b", 4], ["a", "c", 4], ["b", "c", 4]]
    for kind in ("wins", "ties", "both_bad", "losses"):
        shares = [getattr(o, kind) for o in summary.outcomes]
        assert pairs[[kind, f"{kind} low", f"{kind} high"]].values.tolist() == [[share.rate, share.low, share.high] for share in shares], kind
    strengths = logger.tables[("human evaluation", "bradley-terry", 0)]
    assert strengths["system"].tolist() == sorted(summary.strengths, key=lambda s: -summary.strengths[s]["strength"])
    assert {row.pop("system"): row for row in strengths.to_dict("records")} == summary.strengths
    checks = logger.tables[("human evaluation", "checks", 0)]
    assert checks["check"].tolist() == ["position bias (left wins)", *(f"{name} prefers the raters' answer" for name in summary.metric_agreement)]
    shares = [summary.position_bias, *summary.metric_agreement.values()]
    assert checks[["rate", "low", "high", "of"]].values.tolist() == [[s.rate, s.low, s.high, s.total] for s in shares]  # handed on, not computed
    assert logger.figures == [("human evaluation", "pairs", 0, True, 3 * 4)]  # a bar per pair and outcome


def test_a_session_without_votes_reports_its_count_and_no_undefined_figure():
    from clearml_adapter.human_evaluation import report_summary
    from components.human_eval.summary import summarise

    items, _ = three_systems_session()
    logger = RecordingLogger()
    report_summary(type("Task", (), {"get_logger": lambda self: logger})(), summarise([], items))
    assert logger.values == {"votes": 0} and logger.figures == [] and ("human evaluation", "bradley-terry", 0) not in logger.tables


def test_the_plot_draws_each_pairs_shares_with_their_intervals_under_its_name():
    """Per pair a group of four bars (the outcomes, in OUTCOMES order) filling 80 % of the pair's row, each as long as
    its share with its Wilson interval as the error bar, and the pair's name at the group's middle."""
    from matplotlib.container import BarContainer
    from matplotlib.font_manager import FontProperties

    from clearml_adapter.human_evaluation import pairs_figure
    from components.human_eval.summary import OUTCOMES, summarise

    items, votes = three_systems_session()
    summary = summarise(votes, items, bootstrap=20, seed=3)
    figure = pairs_figure(summary)
    [axes] = figure.axes
    assert tuple(figure.get_size_inches()) == pytest.approx((7, 1.2 + 0.9 * 3))  # 0.9 inch per pair
    bar = 0.8 / len(OUTCOMES)
    centres = []
    for k, (kind, container) in enumerate(zip(OUTCOMES, [c for c in axes.containers if isinstance(c, BarContainer)], strict=True)):
        assert container.get_label() == kind.replace("_", " ")
        shares = [getattr(outcome, kind) for outcome in summary.outcomes]
        assert [p.get_width() for p in container.patches] == pytest.approx([share.rate for share in shares])
        assert [p.get_height() for p in container.patches] == pytest.approx([bar] * 3)
        centres.append([p.get_y() + p.get_height() / 2 for p in container.patches])
        assert centres[-1] == pytest.approx([i + k * bar for i in range(3)])
        _, caps, [whiskers] = container.errorbar.lines
        segments = np.array(whiskers.get_segments())  # per bar: (x, y) at each end
        assert segments[:, :, 0] == pytest.approx(np.array([[share.low, share.high] for share in shares]))
        assert segments[:, :, 1] == pytest.approx(np.array([[y, y] for y in centres[-1]]))
        assert len(caps) == 2 and all(cap.get_markersize() == 2 * 3 for cap in caps)  # caps at both ends, 3 points each side
    assert axes.get_yticks() == pytest.approx(np.mean(centres, axis=0))
    assert [label.get_text() for label in axes.get_yticklabels()] == ["a\nvs b", "a\nvs c", "b\nvs c"]
    assert axes.get_xlim() == (0, 1)
    assert axes.get_xlabel() == "share of the pair's votes (95% Wilson interval)"
    legend = axes.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["wins", "ties", "both bad", "losses"]
    assert legend._loc == 4  # "lower right", where the short bars leave room
    assert {text.get_fontsize() for text in legend.get_texts()} == {FontProperties(size="small").get_size_in_points()}


def test_the_human_win_rate_goes_on_each_registered_model_of_a_rated_train_task(monkeypatch):
    """``tuned`` of one evaluate task, or each of several evaluate tasks by its id; an evaluation without a train task,
    or a system without votes, gives no metadata."""
    from clearml_adapter import human_evaluation as reporting
    from clearml_adapter import tracking
    from components.human_eval.session import PairItem
    from components.human_eval.summary import summarise

    train_task_of = {"evaluate-1": "train-1", "evaluate-2": "train-2", "evaluate-3": None, "evaluate-4": "train-4"}
    models = {"train-1": ["model-1a", "model-1b"], "train-2": ["model-2"], "train-4": ["model-4"]}
    written = []
    monkeypatch.setattr(tracking, "artifact_object", lambda task_id, name: {"evaluation": {"train_task_id": train_task_of[task_id]}}[name])
    monkeypatch.setattr(tracking, "registered_models_of", lambda task_id: [type("Model", (), {"id": m})() for m in models[task_id]])
    monkeypatch.setattr(tracking, "add_model_metadata", lambda model, metadata: written.append((model.id, metadata)))
    task = type("Task", (), {"id": "rating-task"})()

    def session(systems, preferred):
        items = [PairItem(f"{row}:{a}:{b}", row, "", "", "", a, "", b, "") for row in range(len(preferred)) for a, b in [systems]]
        return summarise([vote(item.id, "r", preferred[item.row], systems=systems) for item in items], items, bootstrap=2)

    tuned = session(("base", "tuned"), ["tuned", "tuned", "base", "tie"])  # tuned: 2 of 4
    assert reporting.add_win_rates_to_registered_models(task, tuned, ["evaluate-1"]) == ["model-1a", "model-1b"]
    share = wilson(2, 4)
    assert written == [
        (m, {"human_win_rate": share.rate, "human_votes": 4, "human_evaluation_task_id": "rating-task"}) for m in ("model-1a", "model-1b")
    ]

    written.clear()
    several = session(("evaluate-1", "evaluate-2"), ["evaluate-2", "evaluate-2", "evaluate-1"])
    # evaluate-3 trained nothing registered, evaluate-4 had no votes in this session; the tasks after them still count
    assert reporting.add_win_rates_to_registered_models(task, several, ["evaluate-1", "evaluate-3", "evaluate-4", "evaluate-2"]) == [
        "model-1a",
        "model-1b",
        "model-2",
    ]
    assert [(m, metadata["human_win_rate"], metadata["human_votes"]) for m, metadata in written] == [
        ("model-1a", wilson(1, 3).rate, 3),
        ("model-1b", wilson(1, 3).rate, 3),
        ("model-2", wilson(2, 3).rate, 3),
    ]
