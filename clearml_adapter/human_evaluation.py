"""A rating session's statistics in its ClearML task: single values, tables and a plot.

Single values (the task's "Summary" in the UI): ``votes``; per pair ``<system> vs <other>: wins`` (and ties,
both bad, losses; shares of the pair's votes); ``position bias (left wins)``; ``cohen kappa`` and
``krippendorff alpha`` where items were rated by several raters; ``<metric> agrees with raters``.
Tables: the pairs with their Wilson intervals, Bradley-Terry strengths (more than two systems), the checks.
Plot: each pair's shares with their intervals. On a server, a registered model that took part gets its human
win rate in its metadata.
"""

from __future__ import annotations

import math

import pandas as pd

from clearml_adapter import tracking
from components.human_eval.summary import OUTCOMES, Summary


def report_summary(task, summary: Summary) -> None:
    logger = task.get_logger()
    logger.report_single_value("votes", summary.votes)
    for outcome in summary.outcomes:
        for kind in OUTCOMES:
            _single(logger, f"{outcome.system} vs {outcome.other}: {kind.replace('_', ' ')}", getattr(outcome, kind).rate)
    _single(logger, "position bias (left wins)", summary.position_bias.rate)
    for key in ("cohen_kappa", "krippendorff_alpha"):
        _single(logger, key.replace("_", " "), summary.agreement[key])
    for name, share in summary.metric_agreement.items():
        _single(logger, f"{name} agrees with raters", share.rate)

    logger.report_table("human evaluation", "pairs", iteration=0, table_plot=pairs_table(summary))
    if summary.strengths:
        strengths = pd.DataFrame([{"system": system, **values} for system, values in summary.strengths.items()])
        logger.report_table("human evaluation", "bradley-terry", iteration=0, table_plot=strengths.sort_values("strength", ascending=False))
    checks = [{"check": "position bias (left wins)", **_row(summary.position_bias)}]
    checks += [{"check": f"{name} prefers the raters' answer", **_row(share)} for name, share in summary.metric_agreement.items()]
    logger.report_table("human evaluation", "checks", iteration=0, table_plot=pd.DataFrame(checks))
    if summary.outcomes:
        logger.report_matplotlib_figure("human evaluation", "pairs", figure=pairs_figure(summary), iteration=0, report_image=True)


def pairs_table(summary: Summary) -> pd.DataFrame:
    rows = []
    for outcome in summary.outcomes:
        row = {"system": outcome.system, "other": outcome.other, "votes": outcome.wins.total}
        for kind in OUTCOMES:
            share = getattr(outcome, kind)
            row.update({kind: share.rate, f"{kind} low": share.low, f"{kind} high": share.high})
        rows.append(row)
    return pd.DataFrame(rows)


def pairs_figure(summary: Summary):
    from matplotlib.figure import Figure  # not pyplot: no global figure to close, no GUI backend to choose

    figure = Figure(figsize=(7, 1.2 + 0.9 * len(summary.outcomes)))
    axes = figure.subplots()
    height = 0.8 / len(OUTCOMES)
    for k, kind in enumerate(OUTCOMES):
        shares = [getattr(outcome, kind) for outcome in summary.outcomes]
        positions = [i + k * height for i in range(len(shares))]
        rates = [share.rate for share in shares]
        errors = [[share.rate - share.low for share in shares], [share.high - share.rate for share in shares]]
        axes.barh(positions, rates, height, xerr=errors, capsize=3, label=kind.replace("_", " "))
    axes.set_yticks([i + 1.5 * height for i in range(len(summary.outcomes))], [f"{o.system}\nvs {o.other}" for o in summary.outcomes])
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of the pair's votes (95% Wilson interval)")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def _single(logger, name: str, value: float | None) -> None:
    if value is not None and not math.isnan(value):  # no votes (or no overlap) gives no figure, not NaN
        logger.report_single_value(name, value)


def _row(share) -> dict[str, float | int]:
    return {"rate": share.rate, "low": share.low, "high": share.high, "of": share.total}


def add_win_rates_to_registered_models(task, summary: Summary, evaluate_task_ids: list[str]) -> list[str]:
    """Metadata ``human_win_rate`` (and ``human_votes``, ``human_evaluation_task_id``) on every registered model trained
    by a train task whose evaluation took part: ``tuned`` of one evaluate task, or each of several. Returns the model ids."""
    if len(evaluate_task_ids) == 1:
        systems = {"tuned": evaluate_task_ids[0]}
    else:
        systems = {task_id: task_id for task_id in evaluate_task_ids}
    updated = []
    for system, evaluate_task_id in systems.items():
        train_task_id = tracking.artifact_object(evaluate_task_id, "evaluation").get("train_task_id")
        share = summary.win_rate(system)
        if not train_task_id or not share.total:
            continue
        for model in tracking.registered_models_of(train_task_id):
            tracking.add_model_metadata(model, {"human_win_rate": share.rate, "human_votes": share.total, "human_evaluation_task_id": task.id})
            updated.append(model.id)
    return updated
