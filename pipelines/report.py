"""The local run's report, for a person: ``<output-dir>/report.md`` and its ``loss_curves.png``.

It reads what the steps wrote (the train step's ``training.json``, the evaluate step's
``evaluation.json`` and ``predictions.tsv``) and shows the untuned base beside the
fine-tuned model: the metric table, the decoding, the train and validation loss curves,
and test rows side by side, so a run can be judged without a ClearML server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from components.comparison import comparison_table
from components.metrics import PROTOCOL_METRICS

HEADLINE_METRICS = (*PROTOCOL_METRICS, "loss")
REPORT_FILE = "report.md"
CURVES_FILE = "loss_curves.png"
SIDE_BY_SIDE_ROWS = 10


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def plot_loss_curves(training: dict, path: Path) -> Path:
    """Train loss at every optimizer step and validation loss at every evaluation, from the untuned start (step 0)."""
    from matplotlib.figure import Figure  # not pyplot: no global figure to close, no GUI backend to choose

    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    if training["train_losses"]:
        steps, losses = zip(*training["train_losses"])
        axes.plot(steps, losses, color="tab:blue", alpha=0.45, linewidth=1, label="train (each step)")
    validation = [(0, training["initial_validation_loss"])] + [(entry["step"], entry["validation_loss"]) for entry in training["history"]]
    axes.plot(*zip(*validation), color="tab:orange", marker="o", label="validation (step 0: untuned)")
    if training["best_metric"] == "validation_loss" and training["best_step"] is not None:
        axes.axvline(training["best_step"], color="tab:green", linestyle="--", linewidth=1, label=f"best, step {training['best_step']}")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy per target token")
    axes.set_title("Training of the adapters (LoRA + prompt); the base is frozen")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def cell(text: str) -> str:
    """A table cell: pipes escaped, line breaks kept as <br>."""
    return str(text).replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>") or " "


def side_by_side(predictions: pd.DataFrame, rows: int = SIDE_BY_SIDE_ROWS) -> str:
    has_base = "base_prediction" in predictions.columns
    header = ["instruction and input", "reference", *(["base (untuned)"] if has_base else []), "tuned"]
    lines = ["| # | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for number, row in enumerate(predictions.head(rows).itertuples(index=False), start=1):
        source = row.instruction + (f"\n{row.input}" if row.input else "")
        cells = [source, row.output, *([row.base_prediction] if has_base else []), row.prediction]
        lines.append(f"| {number} | " + " | ".join(cell(value) for value in cells) + " |")
    return "\n".join(lines)


def write_report(output_dir: Path, summary: dict) -> Path:
    """Write ``report.md`` and ``loss_curves.png`` into ``output_dir``; returns the report's path."""
    training = read_json(output_dir / "train" / "training.json")
    evaluation = read_json(output_dir / "evaluate" / "evaluation.json")
    predictions = pd.read_csv(output_dir / "evaluate" / "predictions.tsv", sep="\t", dtype=str, keep_default_na=False)
    plot_loss_curves(training, output_dir / CURVES_FILE)
    parameters = summary["parameters"]
    best = training["best_value"]
    start = training["initial_validation_loss"]
    compared = summary["base_metrics"] is not None
    text = [
        f"# Pipeline run: {parameters['model']} with LoRA rank {parameters['lora_rank']} + a {parameters['prompt_length']}-vector prompt",
        "",
        f"Test split: {evaluation['rows']} rows of `{parameters['test_tsv']}`. Decoding: {evaluation['decoding']['description']}.",
        "",
        "## Base vs fine-tuned on the test split" if compared else "## Fine-tuned model on the test split",
        "",
        (
            "The base is the same model with the adapters as training starts them (LoRA's B at zero, the prompt at its "
            "initialisation), so it is fed the same inputs. "
            if compared
            else "The untuned base was not scored (`--compare-base false`). "
        )
        + "Text metrics are on a 0..1 scale (higher is better); `loss` is the cross-entropy per reference token.",
        "",
        comparison_table(summary["metrics"], summary["base_metrics"], list(HEADLINE_METRICS)),
        "",
        "## Loss curves",
        "",
        f"Validation loss: {start:.4f} untuned, best {best:.4f} at step {training['best_step']} of {training['steps']} "
        f"({100 * (best / start - 1):+.1f}%); validation split of `{parameters['train_tsv']}`.",
        "",
        f"![train and validation loss]({CURVES_FILE})",
        "",
        f"## The first {min(SIDE_BY_SIDE_ROWS, len(predictions))} test rows side by side",
        "",
        side_by_side(predictions),
        "",
        "## Where things are",
        "",
        f"- model directory: `{summary['model_dir']}`",
        f"- all metrics and task ids: `{output_dir / 'summary.json'}`; every prediction: `{output_dir / 'evaluate' / 'predictions.tsv'}`",
        "- settings: " + ", ".join(f"{name} {value}" for name, value in parameters.items() if value is not None),
        "",
    ]
    path = output_dir / REPORT_FILE
    path.write_text("\n".join(text), encoding="utf-8")
    return path
