"""The OpenAI-compatible server (``python -m tools.serve``, components/serving) with its real engines on the tiny export,
asked by the official ``openai`` client: completions, chat and their streams answer what ``generate_predictions``
answers for the same decoding, with either engine; sampling varies; a client that leaves while its text generates
stops it; the documented command runs as a user runs it, never logging the key; its options and refusals. The API's
own behaviour (shapes, batching, the queue, malformed requests, the key) over a scripted engine: test_openai_api.py."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from conftest import ROOT, TINY_EXPORT_MAX_TOKENS, TINY_EXPORT_PROMPT
from forked import run_main
from openai_serving import MODEL, PATIENCE_S, GatedEngine, client, get, serving, streamed
from readme_commands import the_command

from components.data import source_text
from components.export.ctranslate2_model import convert_to_ctranslate2
from components.generation import generate_predictions
from components.modeling import load_finetuned
from components.serving.batching import Batching
from components.serving.engines import load_engine
from components.serving.openai_api import Limits, create_app
from tools import serve

INPUT_LENGTH = TINY_EXPORT_MAX_TOKENS - TINY_EXPORT_PROMPT  # where the tiny export cuts inputs
TEXTS = ["Переведи на английский.\nкошка", "Сколько будет два плюс два?", "Перескажи кратко.\n" + " ".join(f"слово{n}" for n in range(30))]
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def folders(tiny_export, tmp_path_factory) -> dict[str, Path]:
    """The engines' folders: the tiny export (transformers) and its CTranslate2 conversion; the adapter it was exported from."""
    converted = convert_to_ctranslate2(tiny_export, tmp_path_factory.mktemp("served") / "ctranslate2")
    return {"transformers": tiny_export, "ctranslate2": converted, "adapter": tiny_export.parent / "adapter"}


@pytest.fixture(scope="module")
def expected(folders):
    """What the project answers for texts with the adapter folder, by decoding: the reference of every answer."""
    model, tokenizer = load_finetuned(folders["adapter"])

    def answers(texts: list[str], **decoding) -> list[str]:
        return generate_predictions(model, tokenizer, texts, max_input_length=INPUT_LENGTH, **{"max_new_tokens": MAX_TOKENS, **decoding})

    return answers


@pytest.mark.parametrize("engine_name", ["ctranslate2", "transformers"])
def test_completions_chat_and_streams_answer_what_generate_predictions_answers(engine_name, folders, expected):
    app = create_app(load_engine(folders[engine_name]), model_name=MODEL)
    decodings = {"greedy": ({"temperature": 0}, {}), "beam 4": ({"temperature": 0, "extra_body": {"num_beams": 4}}, {"num_beams": 4})}
    with serving(app) as base:
        api = client(base)
        assert [model.id for model in api.models.list()] == [MODEL]
        # No decoding asked: the export's own (the tiny export's generation config: greedy, 200 new tokens at most).
        answer = api.completions.create(model=MODEL, prompt=TEXTS[0], max_tokens=MAX_TOKENS)
        assert answer.choices[0].text == expected(TEXTS[:1])[0] and answer.choices[0].finish_reason in ("stop", "length")
        for name, (asked, decoding) in decodings.items():
            want = expected(TEXTS, **decoding)
            assert len(set(want)) == len(want), "the texts must have distinct answers for the order to be checked"
            batch = api.completions.create(model=MODEL, prompt=TEXTS, max_tokens=MAX_TOKENS, **asked)
            assert [choice.text for choice in sorted(batch.choices, key=lambda c: c.index)] == want, name
            for text, answer in zip(TEXTS, want):
                single = api.completions.create(model=MODEL, prompt=text, max_tokens=MAX_TOKENS, **asked)
                assert single.choices[0].text == answer, name
                assert streamed(api.completions.create(model=MODEL, prompt=text, max_tokens=MAX_TOKENS, stream=True, **asked), chat=False) == answer
            # Chat: a system message is the instruction, the user's its input; one user message alone is the instruction.
            instruction, given = TEXTS[0].split("\n")
            conversations = {
                source_text(instruction, given): [{"role": "system", "content": instruction}, {"role": "user", "content": given}],
                source_text(TEXTS[1], ""): [{"role": "user", "content": TEXTS[1]}],
            }
            for text, messages in conversations.items():
                [answer] = expected([text], **decoding)
                chat = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, **asked)
                assert (chat.choices[0].message.role, chat.choices[0].message.content) == ("assistant", answer), name
                stream = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=MAX_TOKENS, stream=True, **asked)
                assert streamed(stream, chat=True) == answer, name
        usage = api.completions.create(model=MODEL, prompt=TEXTS[2], max_tokens=3, temperature=0).usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (TINY_EXPORT_MAX_TOKENS, 3)  # the cut input, prompt tokens included


def test_sampling_is_asked_by_temperature_top_p_or_top_k_and_answers_vary(folders):
    """A positive temperature samples (different answers across calls); temperature 0 does not, whatever top_p says."""
    app = create_app(load_engine(folders["ctranslate2"]), model_name=MODEL)
    with serving(app) as base:
        api = client(base)
        sampled = {api.completions.create(model=MODEL, prompt=TEXTS[1], max_tokens=8, temperature=1.5).choices[0].text for _ in range(8)}
        greedy = {api.completions.create(model=MODEL, prompt=TEXTS[1], max_tokens=8, temperature=0, top_p=0.5).choices[0].text for _ in range(3)}
        assert len(sampled) > 1 and len(greedy) == 1


def test_a_client_that_leaves_while_its_text_generates_stops_it(folders):
    """Leaving during generation: the engine, holding the text's first token until the server answers it with a stop,
    is told to stop within seconds of the client closing the stream."""
    engine = GatedEngine(load_engine(folders["ctranslate2"]))
    engine.gate.set()
    app = create_app(engine, model_name=MODEL)
    first_token, closed = threading.Event(), threading.Event()
    real = engine.engine.generate

    def holding(texts, decoding, on_token=None):
        def held(index: int, token: int) -> bool:
            first_token.set()
            closed.wait(PATIENCE_S)
            deadline = time.monotonic() + PATIENCE_S
            while not on_token(index, token) and time.monotonic() < deadline:  # until the server has seen the client leave
                time.sleep(0.01)
            return on_token(index, token)

        return real(texts, decoding, held if on_token else None)

    engine.engine.generate = holding
    with serving(app) as base:
        stream = client(base).completions.create(model=MODEL, prompt=TEXTS[0], max_tokens=MAX_TOKENS, temperature=0, stream=True)
        next(iter(stream))
        assert first_token.wait(PATIENCE_S)
        stream.close()
        closed.set()
        assert engine.returned.wait(PATIENCE_S)
        assert engine.stops[-1][2]
        assert {(text, token) for text, token, _ in engine.stops} == {engine.stops[0][:2]}  # one text, one token: the first was its last


@pytest.fixture
def documented_server(folders, tmp_path):
    """docs/serving.md's command on the tiny export's CTranslate2 folder, with the key from the environment; one change:
    a free port (--port), for tests that run beside each other."""
    command = the_command("python -m tools.serve")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = command.replace("runs/export/ctranslate2", str(folders["ctranslate2"])).split()[1:] + ["--port", str(port)]
    log = tmp_path / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, *argv], cwd=ROOT, env={**os.environ, "SERVE_API_KEY": "k3y-never-logged"}, stdout=output, stderr=output
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if get(base, "/health")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield base, log
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_documented_command_serves_the_ctranslate2_export_and_never_logs_the_key(documented_server, expected):
    base, log = documented_server
    api = client(base, api_key="k3y-never-logged")
    assert api.completions.create(model=MODEL, prompt=TEXTS[0], max_tokens=MAX_TOKENS, temperature=0).choices[0].text == expected(TEXTS[:1])[0]
    assert json.loads(get(base, "/health")[1])["engine"] == "ctranslate2"
    # The page's python snippet, run as written in a process that cannot import the project: its address and key are the test's.
    [snippet] = re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / "serving.md").read_text(encoding="utf-8"), re.S | re.M)
    run = snippet.replace("http://127.0.0.1:8000", base).replace('api_key="unused"', 'api_key="k3y-never-logged"')
    assert run.count(base) == 1 and "k3y-never-logged" in run
    printed = subprocess.run([sys.executable, "-I", "-c", run], capture_output=True, text=True, timeout=120, cwd=log.parent)
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert printed.stdout.strip() == expected([source_text("Переведи на английский.", "Доброе утро")], max_new_tokens=200)[0]
    text = log.read_text()
    assert re.search(
        r"Serving .*ctranslate2 as 'rut5-instruct' with ctranslate2 at http://127\.0\.0\.1:\d+/v1, the API key from SERVE_API_KEY\.", text
    )
    assert "k3y-never-logged" not in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model-dir", "{tmp}"], "{tmp} is not an export for either engine: give the export step's ctranslate2 folder (model.bin)"),
        (["--model-dir", "{transformers}", "--engine", "ctranslate2"], "{transformers} is not an export for ctranslate2"),
        (["--model-dir", "{tmp}", "--max-queue", "0"], "--max-queue must be at least 1, not 0."),
    ],
)
def test_a_folder_that_is_no_export_or_a_bad_limit_is_refused_in_one_sentence(argv, message, folders, tmp_path):
    values = {"tmp": str(tmp_path), "transformers": str(folders["transformers"])}
    completed = run_main(serve.main, [arg.format(**values) for arg in argv], dict(os.environ))
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith("error: " + message.format(**values)), completed.stderr


def test_every_option_reaches_the_engine_the_app_or_uvicorn(monkeypatch, capsys, tmp_path):
    """Each option away from its default, read back where it acts: the engine's loading, the app's batching and limits,
    uvicorn's address; the key from the environment."""
    from components.serving import engines, openai_api

    calls = {}
    monkeypatch.setattr(engines, "load_engine", lambda folder, engine, **options: calls.update(engine=(folder, engine, options)) or FakeName())
    monkeypatch.setattr(openai_api, "create_app", lambda engine, **options: calls.update(app=options) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.update(run=(app, options)))
    monkeypatch.setenv("SERVE_API_KEY", "from-the-environment")
    serve.main(
        ["--model-dir", str(tmp_path), "--engine", "transformers", "--model-name", "мой", "--host", "0.0.0.0", "--port", "9123"]
        + ["--device", "cuda", "--compute-type", "int8", "--max-batch-size", "5", "--max-wait-ms", "250", "--max-queue", "7"]
        + ["--max-body-bytes", "999", "--max-prompt-chars", "88", "--max-prompts", "4", "--max-tokens", "66"]
    )
    assert calls["engine"] == (tmp_path, "transformers", {"device": "cuda", "compute_type": "int8"})
    assert calls["app"] == {
        "model_name": "мой",
        "api_key": "from-the-environment",
        "limits": Limits(max_body_bytes=999, max_prompt_chars=88, max_prompts=4, max_tokens=66),
        "batching": Batching(max_batch_size=5, max_wait=0.25, max_queue=7),
    }
    assert calls["run"] == ("app", {"host": "0.0.0.0", "port": 9123, "log_level": "info"})
    assert "from-the-environment" not in capsys.readouterr().out


class FakeName:
    name = "transformers"
