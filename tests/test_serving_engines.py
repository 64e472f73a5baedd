"""``components.serving.engines`` on the tiny export: each engine starts from the export's own decoding, passes each new
token of each text to ``on_token`` as it is made (never the end of sequence) and stops a text when told, and loads with
the options asked for. Through the HTTP API: test_openai_server.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.decoding import Decoding
from components.export.ctranslate2_model import convert_to_ctranslate2
from components.serving.engines import load_engine

TEXTS = ["Переведи на английский.\nкошка", "Сколько будет два плюс два?"]


@pytest.fixture(scope="module")
def folders(tiny_export, tmp_path_factory) -> dict[str, Path]:
    return {"transformers": tiny_export, "ctranslate2": convert_to_ctranslate2(tiny_export, tmp_path_factory.mktemp("engines") / "ctranslate2")}


@pytest.mark.parametrize("engine_name", ["ctranslate2", "transformers"])
def test_each_engine_starts_from_the_exports_decoding(engine_name, folders, tmp_path):
    folder = shutil.copytree(folders[engine_name], tmp_path / "export")
    config = json.loads((folder / "generation_config.json").read_text())
    decoding = {"num_beams": 3, "do_sample": False, "temperature": 0.6, "top_k": 9, "top_p": 0.8, "max_new_tokens": 7}
    (folder / "generation_config.json").write_text(json.dumps({**config, **decoding}))
    engine = load_engine(folder)
    assert (engine.name, engine.defaults) == (engine_name, Decoding(**decoding))


@pytest.mark.parametrize("engine_name", ["ctranslate2", "transformers"])
def test_each_engine_passes_every_new_token_as_it_comes_and_stops_a_text_when_told(engine_name, folders):
    engine = load_engine(folders[engine_name])
    greedy = Decoding(max_new_tokens=8)
    seen: dict[int, list[int]] = {0: [], 1: []}
    answers = engine.generate(TEXTS, greedy, lambda index, token: seen[index].append(token) or False)
    assert seen == {0: answers[0], 1: answers[1]} and all(answers) and engine.tokenizer.eos_token_id not in seen[0] + seen[1]
    assert engine.generate(TEXTS, greedy) == answers and engine.streams(greedy) and not engine.streams(Decoding(num_beams=2))
    stopped: dict[int, list[int]] = {0: [], 1: []}

    def stop_the_first(index: int, token: int) -> bool:
        stopped[index].append(token)
        return index == 0

    engine.generate(TEXTS, greedy, stop_the_first)
    assert stopped == {0: answers[0][:1], 1: answers[1]}  # the first text's first token was its last passed on
    beams: dict[int, list[int]] = {0: [], 1: []}
    engine.generate(TEXTS, Decoding(num_beams=2, max_new_tokens=8), lambda index, token: beams[index].append(token) or False)
    assert beams == {0: [], 1: []}  # beam search answers whole


def test_the_ctranslate2_engine_loads_with_the_compute_type_asked_for(folders):
    assert (
        load_engine(folders["ctranslate2"], compute_type="int8").generator.translator.compute_type == "int8_float32"
    )  # int8 weights, float32 elsewhere
    assert load_engine(folders["ctranslate2"], "ctranslate2").generator.translator.device == "cpu"
