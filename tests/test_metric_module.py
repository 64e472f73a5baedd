"""components/ru_text_metrics: the evaluation protocol as a Hugging Face ``evaluate`` module."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
from conftest import ROOT

from components.metrics import compute_metrics

MODULE = ROOT / "components" / "ru_text_metrics"
# A fixed Russian sample with partial, exact, empty, mixed-script and reordered answers.
PREDICTIONS = ["Кошка сидит на ковре у окна.", "Столица Франции — Париж.", "", "Python 3.11 вышел в 2022 году.", "Ёжик в тумане искал лошадку"]
REFERENCES = [
    "Кошка сидела на ковре у окна.",
    "Париж — столица Франции.",
    "Ответ не дан.",
    "Версия Python 3.11 вышла в октябре 2022 года.",
    "Ежик искал в тумане лошадку.",
]

# Run in a fresh interpreter, from an unrelated working directory (the project is not on sys.path),
# with every socket refused: loading and computing must need neither the project on the path nor a network.
LOAD_OFFLINE = textwrap.dedent(
    """
    import importlib.util
    import json
    import socket
    import sys

    def refuse(*args, **kwargs):
        raise OSError("network access attempted while the hub is unreachable")

    socket.socket.connect = socket.create_connection = socket.getaddrinfo = refuse
    import evaluate

    assert importlib.util.find_spec("components") is None, "the project must not be importable here"
    request = json.load(sys.stdin)
    metric = evaluate.load(request["module"])
    print(json.dumps(metric.compute(predictions=request["predictions"], references=request["references"])))
    """
)


def load_in_fresh_process(tmp_path: Path) -> dict[str, float]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    request = json.dumps({"module": str(MODULE), "predictions": PREDICTIONS, "references": REFERENCES})
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_OFFLINE], input=request, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_the_module_returns_exactly_compute_metrics_offline_from_another_directory(tmp_path):
    scores = load_in_fresh_process(tmp_path)
    expected = compute_metrics(PREDICTIONS, REFERENCES)
    assert scores == expected  # same keys, values equal to the last bit (JSON round-trips floats exactly)
    assert 0 < scores["rouge1"] < 1 and scores["published_rouge1"] < scores["rouge1"]
    # evaluate ran its cached copy of the module, next to a copy of components/metrics.py
    [copied] = (tmp_path / "hf" / "modules" / "evaluate_modules" / "metrics" / "ru_text_metrics").glob("*/metrics.py")
    assert copied.read_bytes() == (ROOT / "components" / "metrics.py").read_bytes()


def test_the_module_card_describes_every_score():
    description = (MODULE / "ru_text_metrics.py").read_text(encoding="utf-8").split("_KWARGS_DESCRIPTION =")[0]
    for key in compute_metrics(["а"], ["а"]):
        assert f"{key}:" in description or f"{key}," in description, key


def test_the_evaluate_step_scores_through_the_module(tiny_pipeline, clearml_home):
    evaluation = json.loads((tiny_pipeline / "evaluate" / "evaluation.json").read_text(encoding="utf-8"))
    table = pd.read_csv(tiny_pipeline / "evaluate" / "predictions.tsv", sep="\t", keep_default_na=False, dtype=str)
    text_metrics = {name: value for name, value in evaluation["metrics"].items() if name != "loss"}  # the step adds the test loss
    assert text_metrics == compute_metrics(table["prediction"].tolist(), table["output"].tolist())
    base_metrics = {name: value for name, value in evaluation["base_metrics"].items() if name != "loss"}
    assert base_metrics == compute_metrics(table["base_prediction"].tolist(), table["output"].tolist())
    # the step loaded the module through evaluate (its copy lands in the step's Hugging Face cache)
    cache = Path(clearml_home["HOME"]) / ".cache" / "huggingface" / "modules" / "evaluate_modules" / "metrics" / "ru_text_metrics"
    assert list(cache.glob("*/ru_text_metrics.py"))


def test_the_module_card_is_the_documented_one_and_its_inputs_are_two_string_columns(tmp_path, monkeypatch):
    """The card evaluate shows (description, citation, inputs, code) and the features it checks the inputs against,
    read from the module imported here (evaluate.load imports a copy, whose mutants a mutation run cannot reach)."""
    import datasets

    from components.ru_text_metrics import ru_text_metrics as module

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    metric = module.RuTextMetrics(cache_dir=str(tmp_path))
    info = metric.info
    assert (info.module_type, info.description, info.citation, info.inputs_description) == (
        "metric",
        module._DESCRIPTION,
        module._CITATION,
        module._KWARGS_DESCRIPTION,
    )
    assert info.features == datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")})
    assert info.codebase_urls == ["https://github.com/mjpost/sacrebleu", "https://github.com/google-research/google-research/tree/master/rouge"]
    assert metric.compute(predictions=PREDICTIONS, references=REFERENCES) == compute_metrics(PREDICTIONS, REFERENCES)
