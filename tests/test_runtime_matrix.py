"""The runtime matrix: the session pipeline's export (and its CTranslate2 conversion) in each way a serving engineer
loads it, in transformers 4 and 5, in processes that cannot import this project (tests/runtimes/probe.py).

Every cell either gives this project's tokens (the encoder's input ids, prompt first; the greedy and beam search
answers; the clearml-serving module's texts) for the test split, inputs longer than the trained limit and a text
that names a prompt token, or refuses loudly. None drops the prompt silently. The table in docs/export.md is this
test's, written by it when ``RUNTIME_MATRIX_UPDATE=1`` is set and checked against it otherwise.

The transformers 4 environment is a virtualenv over the project's (``--system-site-packages``: the same torch and
CTranslate2) with transformers 4.57.6 and its tokenizers installed into it (tests/runtimes/transformers-4.txt);
it is built once under .cache/runtimes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT

from components.data import source_text
from components.export.ctranslate2_model import BEAM_PATIENCE
from components.generation import generate_predictions
from components.modeling import input_length_for, load_finetuned
from components.prompt_tuning import extend_attention_mask

RUNTIMES = ROOT / "tests" / "runtimes"
DOCUMENT = ROOT / "docs" / "export.md"
TABLE = re.compile(r"(<!-- runtime matrix: tests/test_runtime_matrix.py -->\n)(.*?)(<!-- end of the runtime matrix -->)", re.S)
SHOULD_WORK = (
    "AutoTokenizer",
    "AutoTokenizer(use_fast=False)",
    "PreTrainedTokenizerFast",
    "tokenizers.Tokenizer.from_file",
    "generate, greedy",
    "generate, beam 4",
    "CTranslate2, greedy",
    "CTranslate2, beam 4",
    "clearml-serving module",
)
SHOULD_REFUSE = ("T5TokenizerFast", "T5Tokenizer")  # T5's own template, without the prompt: refused on loading


def transformers_4_python() -> Path:
    """The transformers 4 virtualenv's python, built (pip, about 15 s) unless it holds the requirements already."""
    requirements = RUNTIMES / "transformers-4.txt"
    folder = ROOT / ".cache" / "runtimes" / "transformers-4"
    stamp = folder / "requirements.txt"
    python = folder / "bin" / "python"
    if not (python.exists() and stamp.is_file() and stamp.read_text() == requirements.read_text()):
        venv.EnvBuilder(system_site_packages=True, clear=True, with_pip=True).create(folder)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True, timeout=600)
        stamp.write_text(requirements.read_text())
    return python


def probe(python: Path, export: Path, converted: Path, texts: list[str], max_new_tokens: int, cwd: Path) -> dict:
    completed = subprocess.run(
        [str(python), "-I", str(RUNTIMES / "probe.py"), str(export), str(converted), str(ROOT / "components/export/clearml_serving_preprocess.py")],
        input=json.dumps({"texts": texts, "max_new_tokens": max_new_tokens}),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def new_tokens(sequences: list[list[int]], eos: int) -> list[list[int]]:
    return [row[1 : row.index(eos, 1)] if eos in row[1:] else row[1:] for row in sequences]


def project_answers(model_dir: Path, texts: list[str], max_new_tokens: int, decoding: dict) -> dict:
    """What this project makes of the texts with the registered adapter folder: the reference of every cell."""
    model, tokenizer = load_finetuned(model_dir)
    limit = input_length_for(model_dir)
    prompt_length = model.encoder.embed_tokens.prompt_length
    prompt = list(range(model.config.vocab_size, model.config.vocab_size + prompt_length))
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": extend_attention_mask(encoded["attention_mask"], prompt_length)}
    answers = {"input_ids": [prompt + row for row in tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]}
    with torch.no_grad():
        for name, beams in (("greedy", 1), ("beam 4", 4)):
            answers[name] = new_tokens(model.generate(**inputs, num_beams=beams, max_new_tokens=max_new_tokens).tolist(), tokenizer.eos_token_id)
    settings = {key: decoding[key] for key in ("num_beams", "do_sample", "temperature", "top_k", "top_p", "max_new_tokens")}
    answers["texts"] = generate_predictions(model, tokenizer, texts, max_input_length=limit, **settings)
    return answers


def verdict(cell: dict, reference: dict) -> str:
    """The cell as the table shows it; an answer that differs from the project's fails the test."""
    if "refused" in cell:
        return f"refuses: `{cell['refused'].split(':')[0]}` on loading"
    for key, name in (("input_ids", "input ids"), ("tokens", "tokens"), ("texts", "answers")):
        if key in cell:
            expected = reference[key] if key != "tokens" else reference[cell["decoding"]]
            same = sum(a == b for a, b in zip(cell[key], expected))
            if cell["measured"]:
                return f"{same}/{len(expected)} rows the project's"
            assert same == len(expected) == len(cell[key]), f"{same} of {len(expected)} {name} are the project's"
            return f"the project's {name} ({same}/{len(expected)})"
    raise AssertionError(f"a cell with no result: {cell}")


@pytest.mark.numeric
def test_every_runtime_gives_the_projects_tokens_or_refuses(tiny_pipeline, tmp_path, one_thread):
    summary = json.loads((tiny_pipeline / "summary.json").read_text())
    registered, export, converted = tiny_pipeline / "register" / "model", tiny_pipeline / "export" / "model", tiny_pipeline / "export" / "ctranslate2"
    test = pd.read_csv(tiny_pipeline / "ingest" / "splits" / "test.tsv", sep="\t", dtype=str, keep_default_na=False)
    texts = [source_text(i, x) for i, x in zip(test["instruction"], test["input"])]
    texts += [f"Перескажи кратко.\n{' '.join(['слово'] * n)}" for n in (150, 400)] + ["Что значит <prompt_3>?"]
    limit = input_length_for(registered)
    max_new_tokens = summary["parameters"]["max_new_tokens"]
    decoding = json.loads((registered / "evaluation.json").read_text())["decoding"]
    reference = project_answers(registered, texts, max_new_tokens, decoding)
    assert max(len(ids) for ids in reference["input_ids"]) > limit  # the long texts are cut (at the limit plus the prompt)
    assert f"patience={BEAM_PATIENCE}" in (converted / "README.md").read_text()  # the card's CTranslate2 settings are the library's

    columns = {}
    for python in (Path(sys.executable), transformers_4_python()):
        found = probe(python, export, converted, texts, max_new_tokens, tmp_path)
        column = {}
        for name, cell in found["cells"].items():
            cell["decoding"], cell["measured"] = "beam 4" if "beam" in name else "greedy", name not in SHOULD_WORK + SHOULD_REFUSE
            column[name] = verdict(cell, reference)
        refused = {name for name, shown in column.items() if shown.startswith("refuses")}
        assert refused == set(SHOULD_REFUSE), {name: found["cells"][name] for name in refused ^ set(SHOULD_REFUSE)}
        columns[f"transformers {found['versions']['transformers']}, tokenizers {found['versions']['tokenizers']}"] = column
    assert [heading.split(".")[0] for heading in columns] == ["transformers 5", "transformers 4"]

    rows = list(next(iter(columns.values())))
    table = "| loaded with | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    table += "".join(f"| {row} | " + " | ".join(column[row] for column in columns.values()) + " |\n" for row in rows)
    document = DOCUMENT.read_text(encoding="utf-8")
    [(_, shown, _)] = TABLE.findall(document)
    if os.environ.get("RUNTIME_MATRIX_UPDATE") == "1":
        DOCUMENT.write_text(TABLE.sub(lambda match: match.group(1) + table + match.group(3), document), encoding="utf-8")
    else:
        assert shown == table, "docs/export.md's runtime matrix is not this test's: rerun it with RUNTIME_MATRIX_UPDATE=1"
