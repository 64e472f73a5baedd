"""The local run's report: written, its loss curves a real image, its table the numbers of summary.json."""

import json

import pandas as pd
import pytest
from PIL import Image

from markdown_tables import table_rows

from components.comparison import compare, comparison_table
from pipelines.report import CURVES_FILE, HEADLINE_METRICS, REPORT_FILE, SIDE_BY_SIDE_ROWS


@pytest.fixture(scope="module")
def report(tiny_pipeline) -> str:
    return (tiny_pipeline / REPORT_FILE).read_text(encoding="utf-8")


def test_the_report_is_where_the_summary_says(tiny_pipeline):
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    assert summary["report"] == str(tiny_pipeline / REPORT_FILE)


def test_the_loss_curves_are_a_png_image(tiny_pipeline, report):
    assert f"]({CURVES_FILE})" in report
    with Image.open(tiny_pipeline / CURVES_FILE) as image:
        assert image.format == "PNG"
        assert image.width >= 400 and image.height >= 300
        image.load()  # decodes every pixel: a truncated file fails here
        darkest, lightest = image.convert("L").getextrema()
        assert lightest - darkest > 100  # lines and text, not a blank canvas


@pytest.mark.numeric
def test_the_metric_table_is_summary_json(tiny_pipeline, report):
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    rows = table_rows(report, "| metric | base (untuned) | tuned |")
    assert [row[0].removesuffix(" (lower is better)") for row in rows] == list(HEADLINE_METRICS)
    for name, base, tuned, difference, times in rows:  # printed with 4 decimals: off by at most half of 1e-4, the difference rounded once more
        name = name.removesuffix(" (lower is better)")
        assert float(base) == pytest.approx(summary["base_metrics"][name], abs=5e-5)
        assert float(tuned) == pytest.approx(summary["metrics"][name], abs=5e-5)
        assert float(difference) == pytest.approx(summary["metrics"][name] - summary["base_metrics"][name], abs=1e-4)
        if summary["base_metrics"][name]:  # the ratio, with 2 decimals
            assert float(times.removesuffix("x")) == pytest.approx(summary["metrics"][name] / summary["base_metrics"][name], abs=5e-3)
        else:
            assert times == "-"
    assert summary["decoding"] in report


def test_the_comparison_table_says_tuned_minus_base_and_tuned_over_base():
    """Figures chosen so that every inverted column differs: 0.2 -> 0.3 is +0.1 and 1.5x, a loss 2.0 -> 1.6 is -0.4 and
    0.8x, and a base of zero has no ratio. Without a base, one column of the tuned figures."""
    tuned, base = {"chrf": 0.3, "loss": 1.6, "bleu": 0.05}, {"chrf": 0.2, "loss": 2.0, "bleu": 0.0}
    assert comparison_table(tuned, base).splitlines() == [
        "| metric | base (untuned) | tuned | tuned - base | tuned / base |",
        "|---|---|---|---|---|",
        "| chrf | 0.2000 | 0.3000 | +0.1000 | 1.50x |",
        "| loss (lower is better) | 2.0000 | 1.6000 | -0.4000 | 0.80x |",
        "| bleu | 0.0000 | 0.0500 | +0.0500 | - |",
    ]
    assert comparison_table(tuned, base, ["loss"]).splitlines()[2:] == ["| loss (lower is better) | 2.0000 | 1.6000 | -0.4000 | 0.80x |"]
    assert comparison_table(tuned, None).splitlines() == ["| metric | tuned |", "|---|---|", "| chrf | 0.3000 |", "| loss | 1.6000 |", "| bleu | 0.0500 |"]
    assert compare(tuned, {"chrf": 0.2, "meteor": 0.1}) == {"chrf": pytest.approx(0.1)} and compare(tuned, None) is None


def test_test_rows_side_by_side_are_the_evaluated_predictions(tiny_pipeline, report):
    predictions = pd.read_csv(tiny_pipeline / "evaluate" / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows = table_rows(report, "| # | instruction and input | reference | base (untuned) | tuned |")
    assert len(rows) == min(SIDE_BY_SIDE_ROWS, len(predictions))
    for cells, expected in zip(rows, predictions.itertuples(index=False)):
        assert cells[2:] == [expected.output, expected.base_prediction or "", expected.prediction or ""]
