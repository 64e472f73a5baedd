"""The fine-tuned model beside its untuned base: differences, ratios and one table for the console and the report."""

from __future__ import annotations

LOWER_IS_BETTER = frozenset({"loss"})


def compare(metrics: dict[str, float], base_metrics: dict[str, float] | None) -> dict[str, float] | None:
    """tuned - base for every metric both have (None without a base)."""
    if base_metrics is None:
        return None
    return {name: metrics[name] - base_metrics[name] for name in metrics if name in base_metrics}


def ratio(tuned: float, base: float) -> float | None:
    return tuned / base if base else None


def comparison_table(metrics: dict[str, float], base_metrics: dict[str, float] | None, names: list[str] | None = None) -> str:
    """A Markdown table of the metrics (all, or ``names``): tuned alone, or base, tuned, difference and ratio."""
    names = names or list(metrics)
    if base_metrics is None:
        rows = ["| metric | tuned |", "|---|---|", *(f"| {name} | {metrics[name]:.4f} |" for name in names)]
        return "\n".join(rows)
    rows = ["| metric | base (untuned) | tuned | tuned - base | tuned / base |", "|---|---|---|---|---|"]
    for name in names:
        tuned, base = metrics[name], base_metrics[name]
        times = ratio(tuned, base)
        direction = " (lower is better)" if name in LOWER_IS_BETTER else ""
        rows.append(f"| {name}{direction} | {base:.4f} | {tuned:.4f} | {tuned - base:+.4f} | {'-' if times is None else f'{times:.2f}x'} |")
    return "\n".join(rows)
