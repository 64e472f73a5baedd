"""The local run's report: written, its loss curves a real image, its table the numbers of summary.json."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ASCII_LOCALE, ROOT
from markdown_tables import table_rows
from PIL import Image

from clearml_adapter.tracking import to_json
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
    assert comparison_table(tuned, None).splitlines() == [
        "| metric | tuned |",
        "|---|---|",
        "| chrf | 0.3000 |",
        "| loss | 1.6000 |",
        "| bleu | 0.0500 |",
    ]
    assert compare(tuned, {"chrf": 0.2, "meteor": 0.1}) == {"chrf": pytest.approx(0.1)} and compare(tuned, None) is None


def test_test_rows_side_by_side_are_the_evaluated_predictions(tiny_pipeline, report):
    predictions = pd.read_csv(tiny_pipeline / "evaluate" / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows = table_rows(report, "| # | instruction and input | reference | base (untuned) | tuned |")
    assert len(rows) == min(SIDE_BY_SIDE_ROWS, len(predictions))
    for cells, expected in zip(rows, predictions.itertuples(index=False)):
        assert cells[2:] == [expected.output, expected.base_prediction or "", expected.prediction or ""]


# The report from step outputs written here (no pipeline run): every line read against the files it comes from.

TRAINING = {
    "train_losses": [[1, 2.5], [2, 2.25], [3, 1.75], [4, 1.5]],
    "initial_validation_loss": 2.0,
    "history": [{"step": 2, "validation_loss": 1.8}, {"step": 4, "validation_loss": 1.5}],
    "best_metric": "validation_loss",
    "best_step": 4,
    "best_value": 1.5,
    "steps": 4,
}
METRICS = {"bleu": 0.06, "rouge1": 0.09, "rouge2": 0.03, "rougeL": 0.08, "meteor": 0.2, "chrf": 0.3, "loss": 1.4}
HEADLINE = ["bleu", "chrf", "rouge1", "rouge2", "rougeL", "meteor", "loss"]  # the protocol's metrics, then the loss
BASE_METRICS = {"bleu": 0.01, "rouge1": 0.02, "rouge2": 0.0, "rougeL": 0.02, "meteor": 0.05, "chrf": 0.1, "loss": 3.0}


def step_outputs(folder, rows: int, compared: bool = True, training: dict = TRAINING) -> dict:
    """train/training.json, evaluate/evaluation.json and predictions.tsv as the steps write them; the run's summary."""
    (folder / "train").mkdir(parents=True)
    (folder / "evaluate").mkdir()
    (folder / "train" / "training.json").write_text(to_json(training), encoding="utf-8")  # as the steps write them
    (folder / "evaluate" / "evaluation.json").write_text(
        to_json({"rows": rows, "decoding": {"description": "beam search, 4 beams — no sampling"}}), encoding="utf-8"
    )
    frame = pd.DataFrame(
        {
            "instruction": ["12" if n == 5 else f"Вопрос {n} | с чертой" for n in range(rows)],
            "input": ["" if n % 2 else f"вход\r\n{n}" for n in range(rows)],
            "output": [f"{n:03}" for n in range(rows)],
            "prediction": [{0: "", 5: "007"}.get(n, f"ответ {n}") for n in range(rows)],
        }
    )  # texts that look like numbers stay texts
    if compared:
        frame.insert(3, "base_prediction", [f"база {n}" for n in range(rows)])
    frame.to_csv(folder / "evaluate" / "predictions.tsv", sep="\t", index=False)
    parameters = {
        "model": "ai-forever/ruT5-large",
        "lora_rank": 4,
        "prompt_length": 12,
        "test_tsv": "data/test.tsv",
        "train_tsv": "data/train.tsv",
        "seed": 7,
        "max_steps": None,
    }
    return {"parameters": parameters, "metrics": METRICS, "base_metrics": BASE_METRICS if compared else None, "model_dir": str(folder / "model")}


def test_a_report_is_each_figure_of_the_files_it_reads(tmp_path):
    from pipelines.report import write_report

    summary = step_outputs(tmp_path, rows=12)
    assert write_report(tmp_path, summary) == tmp_path / REPORT_FILE
    lines = (tmp_path / REPORT_FILE).read_text(encoding="utf-8").split("\n")
    table = comparison_table(METRICS, BASE_METRICS, HEADLINE).split("\n")
    assert lines[:8] == [
        "# Pipeline run: ai-forever/ruT5-large with LoRA rank 4 + a 12-vector prompt",
        "",
        "Test split: 12 rows of `data/test.tsv`. Decoding: beam search, 4 beams — no sampling.",
        "",
        "## Base vs fine-tuned on the test split",
        "",
        "The base is the same model with the adapters as training starts them (LoRA's B at zero, the prompt at its initialisation), "
        "so it is fed the same inputs. Text metrics are on a 0..1 scale (higher is better); `loss` is the cross-entropy per reference token.",
        "",
    ]
    assert lines[8 : 8 + len(table)] == table
    rest = lines[8 + len(table) :]
    assert rest[:8] == [
        "",
        "## Loss curves",
        "",
        "Validation loss: 2.0000 untuned, best 1.5000 at step 4 of 4 (-25.0%); validation split of `data/train.tsv`.",
        "",
        f"![train and validation loss]({CURVES_FILE})",
        "",
        "## The first 10 test rows side by side",
    ]
    assert rest[9:11] == ["| # | instruction and input | reference | base (untuned) | tuned |", "|---|---|---|---|---|"]
    assert rest[11] == "| 1 | Вопрос 0 \\| с чертой<br>вход<br>0 | 000 | база 0 |   |"  # an empty answer is a blank cell
    assert rest[12] == "| 2 | Вопрос 1 \\| с чертой | 001 | база 1 | ответ 1 |"  # no input: the instruction alone
    assert rest[16] == "| 6 | 12 | 005 | база 5 | 007 |"
    assert rest[20] == "| 10 | Вопрос 9 \\| с чертой | 009 | база 9 | ответ 9 |" and rest[21] == ""  # ten rows of twelve
    assert rest[22:] == [
        "## Where things are",
        "",
        f"- model directory: `{tmp_path / 'model'}`",
        f"- all metrics and task ids: `{tmp_path / 'summary.json'}`; every prediction: `{tmp_path / 'evaluate' / 'predictions.tsv'}`",
        "- settings: model ai-forever/ruT5-large, lora_rank 4, prompt_length 12, test_tsv data/test.tsv, train_tsv data/train.tsv, seed 7",
        "",
    ]


def test_a_report_without_the_base_shows_the_tuned_model_alone(tmp_path):
    from pipelines.report import write_report

    text = write_report(tmp_path, step_outputs(tmp_path, rows=3, compared=False)).read_text(encoding="utf-8")
    assert "## Fine-tuned model on the test split\n\nThe untuned base was not scored (`--compare-base false`). Text metrics" in text
    assert comparison_table(METRICS, None, HEADLINE) in text
    assert "## The first 3 test rows side by side\n\n| # | instruction and input | reference | tuned |\n|---|---|---|---|\n" in text


def test_the_loss_curves_are_the_training_files_losses_with_the_best_step_marked(tmp_path, monkeypatch):
    import matplotlib.figure
    from matplotlib import pyplot, rcParams
    from matplotlib.colors import to_hex

    from pipelines.report import plot_loss_curves

    saved, open_figures = [], pyplot.get_fignums()
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, path, **options: saved.append((figure, path, options)))
    for training, marked in (
        (TRAINING, True),
        ({**TRAINING, "best_metric": "bleu"}, False),
        ({**TRAINING, "best_step": None}, False),
        ({**TRAINING, "train_losses": []}, True),
    ):
        saved.clear()
        assert plot_loss_curves(training, tmp_path / "curves.png") == tmp_path / "curves.png"
        [(figure, path, options)] = saved
        assert (path, options) == (tmp_path / "curves.png", {"dpi": 100, "bbox_inches": "tight"})
        [axes] = figure.axes
        lines = {line.get_label(): line for line in axes.get_lines()}
        expected = (
            {"validation (step 0: untuned)"}
            | ({"train (each step)"} if training["train_losses"] else set())
            | ({"best, step 4"} if marked else set())
        )
        assert set(lines) == expected
        assert [t.get_text() for t in axes.get_legend().get_texts()] == [
            label for label in ("train (each step)", "validation (step 0: untuned)", "best, step 4") if label in expected
        ]
        validation = lines["validation (step 0: untuned)"]
        assert (list(validation.get_xdata()), list(validation.get_ydata())) == ([0, 2, 4], [2.0, 1.8, 1.5])
        if training["train_losses"]:
            train = lines["train (each step)"]
            assert (list(train.get_xdata()), list(train.get_ydata())) == ([1, 2, 3, 4], [2.5, 2.25, 1.75, 1.5])
        if marked:
            assert list(lines["best, step 4"].get_xdata()) == [4, 4]
        assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == (
            "optimizer step",
            "cross-entropy per target token",
            "Training of the adapters (LoRA + prompt); the base is frozen",
        )
        assert tuple(figure.get_size_inches()) == (8, 4.5)
        style = {
            label: (to_hex(line.get_color()), line.get_alpha(), line.get_linewidth(), line.get_linestyle(), line.get_marker())
            for label, line in lines.items()
        }
        assert style == {
            label: value
            for label, value in {
                "train (each step)": (to_hex("tab:blue"), 0.45, 1, "-", "None"),  # faint: one point per step
                "validation (step 0: untuned)": (to_hex("tab:orange"), None, rcParams["lines.linewidth"], "-", "o"),
                "best, step 4": (to_hex("tab:green"), None, 1, "--", "None"),
            }.items()
            if label in expected
        }
        assert {(line.get_visible(), line.get_alpha()) for line in axes.xaxis.get_gridlines() + axes.yaxis.get_gridlines()} == {(True, 0.3)}
        assert pyplot.get_fignums() == open_figures  # none left open: a long run's reports leak no figures


def test_the_report_is_written_and_read_as_utf_8_whatever_the_locale(tmp_path, clearml_home):
    summary = step_outputs(tmp_path / "here", rows=3)
    step_outputs(tmp_path / "there", rows=3)
    program = (
        "import json, sys; from pathlib import Path; from pipelines.report import write_report; "
        "write_report(Path(sys.argv[1]), json.loads(sys.argv[2]))"
    )
    there = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "there"), json.dumps({**summary, "model_dir": "model"})],
        cwd=ROOT,
        env={**clearml_home, **ASCII_LOCALE},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert there.returncode == 0, there.stderr
    from pipelines.report import write_report

    here = write_report(tmp_path / "here", {**summary, "model_dir": "model"}).read_text(encoding="utf-8")
    assert (tmp_path / "there" / REPORT_FILE).read_text(encoding="utf-8") == here.replace(str(tmp_path / "here"), str(tmp_path / "there"))
