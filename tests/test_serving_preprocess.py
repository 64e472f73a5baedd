"""``components/export/clearml_serving_preprocess.py`` loaded as clearml-serving loads it (the file alone, by its path)
and called as its custom engine calls it, on the tiny model: each malformed request is a ValueError with the request's
form, one text or a list comes back in the same form and order, and long requests are generated in batches.
clearml-serving itself in front of it, on the tiny pipeline's export: test_serving.py."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading

import pytest
import torch
from conftest import ROOT, TINY_EXPORT_MAX_TOKENS
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BatchEncoding

MODULE_FILE = ROOT / "components" / "export" / "clearml_serving_preprocess.py"
FORM = 'the request body must be a JSON object {"text": "..."} or {"text": ["...", ...]}'


@pytest.fixture(scope="module")
def serving_module():
    """The file executed alone (no package above it is imported), with nothing of this project imported through it.
    Its name is its name in this repository, which the mutation tool counts calls under."""
    spec = importlib.util.spec_from_file_location("components.export.clearml_serving_preprocess", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    spec.loader.exec_module(module)
    assert not {name for name in set(sys.modules) - before if name.split(".")[0] in ("components", "clearml_adapter", "pipelines", "steps")}
    return module


@pytest.fixture
def engine(serving_module, tiny_export):
    preprocess = serving_module.Preprocess()
    assert preprocess.load(str(tiny_export)) is preprocess.model
    return preprocess


def answer(engine, body, statistics=None):
    """One request as clearml-serving's custom_async engine makes it: a fresh state, then the three calls, each awaited."""

    async def calls():
        state = {}
        data = await engine.preprocess(body, state, statistics)
        return await engine.postprocess(await engine.process(data, state, statistics), state, statistics)

    return asyncio.run(calls())


def preprocessed(engine, body):
    return asyncio.run(engine.preprocess(body, {}))


@pytest.mark.parametrize("where", [None, "", "folder"])
def test_a_model_that_is_not_the_exports_folder_is_refused(serving_module, tmp_path, where):
    preprocess = serving_module.Preprocess()
    if where == "folder":
        (tmp_path / "config.json").write_text("{}")  # the adapter model's folder has no tokenizer.json
    with pytest.raises(ValueError) as refused:
        preprocess.load(str(tmp_path) if where == "folder" else where)
    no_model = "The endpoint has no model: add it with --model-id <the export step's registered model>."
    assert (
        str(refused.value)
        == {
            None: no_model,
            "": no_model,
            "folder": (
                f"{tmp_path} is not the export step's folder (config.json and tokenizer.json): give --model-id the model steps/export.py "
                "registered, not the adapter model."
            ),
        }[where]
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ("Привет", f"The request body must be {FORM[len('the request body must be ') :]}."),
        ({"texts": "Привет"}, f"The request body must be {FORM[len('the request body must be ') :]}."),
        ({"text": "Привет", "max_length": 5}, f"The request body must be {FORM[len('the request body must be ') :]}."),
        ({"text": 5}, f'"text" must be a string or a non-empty list of strings: {FORM}.'),
        ({"text": []}, f'"text" must be a string or a non-empty list of strings: {FORM}.'),
        ({"text": ["a", 5]}, f'"text" must be a string or a non-empty list of strings: {FORM}.'),
        ({"text": ["a"] * 257}, '"text" holds 257 texts; send at most 256 in one request.'),
    ],
)
def test_a_malformed_request_is_a_value_error_saying_what_to_send(engine, body, message):
    with pytest.raises(ValueError) as refused:
        preprocessed(engine, body)
    assert str(refused.value) == message


def test_one_text_or_a_list_is_answered_in_the_same_form_and_order_in_batches(engine, tiny_export, monkeypatch):
    texts = [f"Переведи на английский.\nСлово номер {n}" for n in range(17)]
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_export), AutoModelForSeq2SeqLM.from_pretrained(tiny_export).eval()

    def reference(batch):  # transformers alone, the generation config's decoding, the same batch
        with torch.inference_mode():
            generated = model.generate(**tokenizer(batch, padding=True, truncation=True, return_tensors="pt"))
            return [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]

    batches, generate = [], engine.model.generate
    monkeypatch.setattr(engine.model, "generate", lambda **inputs: batches.append(len(inputs["input_ids"])) or generate(**inputs))
    statistics = []
    assert answer(engine, {"text": texts}, statistics.append) == {"text": reference(texts[:16]) + reference(texts[16:])}
    assert batches == [16, 1] and statistics == [{"texts": 17}]
    assert answer(engine, {"text": texts[16]}) == {"text": reference(texts[16:])[0]}  # a string answered with a string
    assert preprocessed(engine, {"text": ["a"] * 256}) == ["a"] * 256  # the most one request may hold


def test_a_long_input_is_cut_where_the_exports_tokenizer_says(engine, tiny_export, monkeypatch):
    """The model is given the text's first tokens and the end-of-sequence token (the tiny model's answers hardly depend
    on the end of a long text, so the input is what is compared)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_export)
    text = "Перескажи кратко. " + " ".join(f"слово{n}" for n in range(40))
    ids = tokenizer(text).input_ids
    assert len(ids) > TINY_EXPORT_MAX_TOKENS
    given, generate = [], engine.model.generate
    monkeypatch.setattr(engine.model, "generate", lambda **inputs: given.append(inputs["input_ids"].tolist()) or generate(**inputs))
    answer(engine, {"text": text})
    assert given == [[ids[: TINY_EXPORT_MAX_TOKENS - 1] + [tokenizer.eos_token_id]]]


@pytest.mark.parametrize("cuda", [True, False])
def test_the_model_goes_to_the_gpu_when_there_is_one(serving_module, tiny_export, monkeypatch, cuda):
    moved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.nn.Module, "to", lambda module, *args, **kwargs: moved.append(args) or module)
    serving_module.Preprocess().load(str(tiny_export))
    assert moved == [("cuda" if cuda else "cpu",)]


def test_the_inputs_go_to_the_models_device(engine, monkeypatch):
    """(On a GPU machine a CPU tensor would fail in generate; here the call itself is what is checked.)"""
    devices, to = [], BatchEncoding.to
    monkeypatch.setattr(BatchEncoding, "to", lambda encoding, device: devices.append(device) or to(encoding, device))
    answer(engine, {"text": ["один", "два"]})
    assert devices == [engine.model.device]


def test_generation_runs_beside_the_event_loop(engine, monkeypatch):
    """While a request generates, the worker's event loop goes on: here a coroutine on it releases the generation,
    which would otherwise wait in vain (and fail after 30 s) if ``process`` held the loop."""
    released, generate = threading.Event(), engine.model.generate

    def waiting_generate(**inputs):
        if not released.wait(timeout=30):
            raise TimeoutError("the event loop was held while generating")
        return generate(**inputs)

    monkeypatch.setattr(engine.model, "generate", waiting_generate)

    async def request_and_release():
        answering = asyncio.create_task(engine.process(["один"], {}))
        await asyncio.sleep(0)  # the request starts
        released.set()  # only possible while the loop runs
        return await answering

    assert len(asyncio.run(request_and_release())) == 1
