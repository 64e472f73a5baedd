"""The local run's report: written, its loss curves a real image, its table the numbers of summary.json."""

import json
import re

import pandas as pd
import pytest
from PIL import Image

from pipelines.report import CURVES_FILE, HEADLINE_METRICS, REPORT_FILE, SIDE_BY_SIDE_ROWS


@pytest.fixture(scope="module")
def report(tiny_pipeline) -> str:
    return (tiny_pipeline / REPORT_FILE).read_text(encoding="utf-8")


def table_rows(markdown: str, header_start: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with ``header_start``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


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
    for name, base, tuned, difference, _ in rows:  # printed with 4 decimals: off by at most half of 1e-4, the difference rounded once more
        name = name.removesuffix(" (lower is better)")
        assert float(base) == pytest.approx(summary["base_metrics"][name], abs=5e-5)
        assert float(tuned) == pytest.approx(summary["metrics"][name], abs=5e-5)
        assert float(difference) == pytest.approx(summary["metrics"][name] - summary["base_metrics"][name], abs=1e-4)
    assert summary["decoding"] in report


def test_test_rows_side_by_side_are_the_evaluated_predictions(tiny_pipeline, report):
    predictions = pd.read_csv(tiny_pipeline / "evaluate" / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows = table_rows(report, "| # | instruction and input | reference | base (untuned) | tuned |")
    assert len(rows) == min(SIDE_BY_SIDE_ROWS, len(predictions))
    for cells, expected in zip(rows, predictions.itertuples(index=False)):
        assert cells[2:] == [expected.output, expected.base_prediction or "", expected.prediction or ""]
