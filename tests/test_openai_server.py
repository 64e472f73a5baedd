"""The OpenAI-compatible server (``python -m tools.serve``, components/serving) on the tiny export, asked by the official
``openai`` client: completions, chat and their streams answer what ``generate_predictions`` answers for the same
decoding, with either engine; concurrent requests are batched and each gets its own answer; a full queue is a 429; a
client that leaves mid-stream stops its own text while its batch goes on; malformed bodies are 4xx with one sentence;
the API key guards every route but /health. Most tests serve the app in this process (uvicorn in a thread), so that an
engine held at a gate can keep requests in flight; the documented command runs as a user runs it."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import uvicorn
from conftest import ROOT, TINY_EXPORT_MAX_TOKENS, TINY_EXPORT_PROMPT
from forked import run_main
from readme_commands import the_command

from components.data import source_text
from components.decoding import Decoding
from components.export.ctranslate2_model import convert_to_ctranslate2
from components.generation import generate_predictions
from components.modeling import load_finetuned
from components.serving.batching import Batching
from components.serving.engines import load_engine
from components.serving.openai_api import Limits, create_app
from tools import serve

MODEL = "rut5-instruct"
INPUT_LENGTH = TINY_EXPORT_MAX_TOKENS - TINY_EXPORT_PROMPT  # where the tiny export cuts inputs
TEXTS = ["Переведи на английский.\nкошка", "Сколько будет два плюс два?", "Перескажи кратко.\n" + " ".join(f"слово{n}" for n in range(30))]
MAX_TOKENS = 10
# How long a test waits for what takes milliseconds here (a request, a gate, a token): a bound for slow machines that
# still ends a hung request soon (a broken server fails its test in seconds, not at the client's default of 10 minutes).
PATIENCE_S = 10


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


@contextmanager
def serving(app):
    """``app`` served by uvicorn in a thread, on a free port of this machine: its base URL."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(PATIENCE_S)
        listening.close()


class GatedEngine:
    """The real engine behind a gate: ``generate`` waits until the test opens it (so requests stay in flight), and each
    call's texts and each token's stop answer are recorded. ``per_token`` slows each streamed token."""

    def __init__(self, engine) -> None:
        self.engine, self.name, self.tokenizer, self.defaults = engine, engine.name, engine.tokenizer, engine.defaults
        self.gate, self.inside, self.returned = threading.Event(), threading.Event(), threading.Event()
        self.calls: list[list[str]] = []
        self.stops: list[tuple[str, int, bool]] = []  # (text, token, what the server answered: stop?)

    def streams(self, decoding: Decoding) -> bool:
        return self.engine.streams(decoding)

    def generate(self, texts, decoding, on_token=None):
        self.calls.append(list(texts))
        self.inside.set()
        if not self.gate.wait(timeout=PATIENCE_S):
            raise TimeoutError("the test never opened the gate")

        def watched(index: int, token: int) -> bool:
            stop = on_token(index, token)
            self.stops.append((texts[index], token, stop))
            return stop

        try:
            return self.engine.generate(texts, decoding, watched if on_token else None)
        finally:
            self.returned.set()


def client(base: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=options.pop("api_key", "unused"), max_retries=0, timeout=PATIENCE_S, **options)


def streamed(stream, chat: bool) -> str:
    parts = [(chunk.choices[0].delta.content or "") if chat else chunk.choices[0].text for chunk in stream]
    return "".join(parts)


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


def test_concurrent_requests_are_generated_as_one_batch_each_answered_its_own(folders, expected):
    """16 requests in flight while the engine is busy are generated together in the next batch, each with its own answer;
    with --max-batch-size 1 (one request at a time) the same requests go one by one."""
    texts = [f"Переведи на английский.\nСлово номер {n}" for n in range(16)]
    want = expected(texts)
    for max_batch_size, batches in ((16, [1, 16]), (1, [1] * 17)):
        engine = GatedEngine(load_engine(folders["ctranslate2"]))
        app = create_app(engine, model_name=MODEL, batching=Batching(max_batch_size, 0.05))
        with serving(app) as base, ThreadPoolExecutor(17) as pool:
            api = client(base)
            first = pool.submit(api.completions.create, model=MODEL, prompt="Привет", max_tokens=MAX_TOKENS, temperature=0)
            assert engine.inside.wait(PATIENCE_S)
            answers = [pool.submit(api.completions.create, model=MODEL, prompt=text, max_tokens=MAX_TOKENS, temperature=0) for text in texts]
            wait_until(lambda: app.state.server.batcher.queued == len(texts))
            engine.gate.set()
            assert [future.result().choices[0].text for future in answers] == want
            first.result()
            assert list(app.state.server.batcher.batches) == batches
            assert json.loads(get(base, "/health")[1])["largest_recent_batch"] == max(batches)


def test_a_batch_waits_for_as_many_requests_as_the_last_one_held_and_a_lone_request_never_waits(folders, expected):
    """A lone request is generated at once, not max_wait (5 s here) later. After a batch of 3, the next waits until 3
    requests have come: one now, two 0.3 s later, one batch."""
    engine = GatedEngine(load_engine(folders["ctranslate2"]))
    engine.gate.set()
    app = create_app(engine, model_name=MODEL, batching=Batching(max_wait=5.0))
    batcher = app.state.server.batcher
    texts = [f"Переведи на английский.\nСлово номер {n}" for n in range(3)]
    with serving(app) as base, ThreadPoolExecutor(4) as pool:
        api = client(base)

        def ask(text: str):
            return pool.submit(api.completions.create, model=MODEL, prompt=text, max_tokens=MAX_TOKENS, temperature=0)

        start = time.monotonic()
        assert api.completions.create(model=MODEL, prompt="Привет", max_tokens=MAX_TOKENS, temperature=0).choices
        assert time.monotonic() - start < 4  # batch [1]: a lone request does not wait
        engine.gate.clear()
        busy = ask("Привет")
        wait_until(lambda: batcher.queued == 0 and len(batcher.batches) == 2)  # batch [1] generating, at the gate
        held = [ask(text) for text in texts]
        wait_until(lambda: batcher.queued == 3)
        engine.gate.set()
        busy.result()
        assert [future.result().choices[0].text for future in held] == expected(texts)  # batch [3]
        first = ask(texts[0])
        time.sleep(0.3)
        rest = [ask(text) for text in texts[1:]]
        answers = [future.result().choices[0].text for future in (first, *rest)]
        assert answers == expected(texts) and list(batcher.batches) == [1, 1, 3, 3]


def test_a_full_queue_answers_429_and_the_requests_taken_are_answered(folders, expected):
    engine = GatedEngine(load_engine(folders["ctranslate2"]))
    app = create_app(engine, model_name=MODEL, batching=Batching(max_batch_size=1, max_queue=2))
    with serving(app) as base, ThreadPoolExecutor(3) as pool:
        api = client(base)
        taken = [pool.submit(api.completions.create, model=MODEL, prompt=TEXTS[0], max_tokens=MAX_TOKENS, temperature=0)]
        assert engine.inside.wait(PATIENCE_S)
        taken += [pool.submit(api.completions.create, model=MODEL, prompt=TEXTS[0], max_tokens=MAX_TOKENS, temperature=0) for _ in range(2)]
        wait_until(lambda: app.state.server.batcher.queued == 2)
        with pytest.raises(openai.RateLimitError) as refused:
            api.completions.create(model=MODEL, prompt=TEXTS[0], max_tokens=MAX_TOKENS, temperature=0)
        assert refused.value.status_code == 429 and refused.value.response.headers["retry-after"] == "1"
        assert refused.value.body["message"] == "The server is busy (2 requests are queued already): retry shortly."
        engine.gate.set()
        assert [future.result().choices[0].text for future in taken] == expected(TEXTS[:1]) * 3


def test_a_client_that_leaves_mid_stream_is_dropped_and_its_batch_goes_on(folders, expected):
    """Two streams wait behind a busy engine; one client reads the stream's first event and leaves. Its text is never
    generated (the server saw it leave), and the other stream is answered in full."""
    engine = GatedEngine(load_engine(folders["ctranslate2"]))
    app = create_app(engine, model_name=MODEL, batching=Batching(max_wait=0.05))
    with serving(app) as base, ThreadPoolExecutor(2) as pool:
        api = client(base)
        busy = pool.submit(api.completions.create, model=MODEL, prompt="Привет", max_tokens=MAX_TOKENS, temperature=0)
        assert engine.inside.wait(PATIENCE_S)
        leaving = api.completions.create(model=MODEL, prompt=TEXTS[0], max_tokens=MAX_TOKENS, temperature=0, stream=True)
        staying = pool.submit(
            lambda: streamed(api.completions.create(model=MODEL, prompt=TEXTS[1], max_tokens=MAX_TOKENS, temperature=0, stream=True), False)
        )
        wait_until(lambda: app.state.server.batcher.queued == 2)
        assert next(iter(leaving)).choices[0].text == ""  # the stream's first event, sent before generation
        leaving.close()
        batcher = app.state.server.batcher
        wait_until(lambda: any(p.cancelled.is_set() for p in [*batcher._queue.queue, *batcher._waiting]))
        engine.gate.set()
        assert staying.result() == expected(TEXTS[1:2])[0]
        busy.result()
        assert engine.calls == [["Привет"], [TEXTS[1]]]  # the left client's text was dropped before generation
        assert json.loads(get(base, "/health")[1])["queued"] == 0


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


def get(base: str, path: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=PATIENCE_S)
    connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    return response.status, response.read().decode()


def wait_until(condition, timeout: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


MALFORMED = [
    ("/v1/completions", b"{not json", 400, "The body is not JSON."),
    ("/v1/completions", b"[1, 2]", 400, "The body must be a JSON object."),
    ("/v1/completions", b'{"prompt": "x"}', 404, "The model None does not exist: this server serves 'rut5-instruct'."),
    ("/v1/completions", b'{"model": "gpt-4", "prompt": "x"}', 404, "The model 'gpt-4' does not exist: this server serves 'rut5-instruct'."),
    ("/v1/completions", b'{"model": "rut5-instruct"}', 400, "prompt must be a text or a non-empty list of texts"),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": [1, 2, 3]}', 400, "token ids are not taken"),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": "x", "n": 2}', 400, "n is not supported by this server: leave it out."),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": "x", "stop": ["."]}', 400, "stop is not supported by this server"),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": "x", "logprobs": 2}', 400, "logprobs is not supported by this server"),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": "x", "frobnicate": 1}', 400, "Unknown field 'frobnicate'."),
    (
        "/v1/completions",
        b'{"model": "rut5-instruct", "prompt": "x", "temperature": "hot"}',
        400,
        "temperature must be a number from 0 to 2, not 'hot'.",
    ),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": "x", "max_tokens": 100000}', 400, "max_tokens must be an integer from 1 to 40"),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": "x", "max_tokens": true}', 400, "max_tokens must be an integer"),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": "x", "temperature": 1, "num_beams": 3}', 400, "num_beams > 1 searches"),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": "x", "stream": "yes"}', 400, "stream must be true or false."),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": ["a", "b"], "stream": true}', 400, "Streaming answers one prompt"),
    ("/v1/completions", b'{"model": "rut5-instruct", "prompt": ["a", "b", "c", "d"]}', 400, "prompt holds 4 texts; send at most 3."),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": "я" * 301}).encode(), 400, "A prompt is 301 characters, over the limit of 300."),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": "я" * 3000}).encode(), 413, "The body is over 2000 bytes."),
    ("/v1/chat/completions", b'{"model": "rut5-instruct", "messages": []}', 400, "messages must be a non-empty list"),
    ("/v1/chat/completions", b'{"model": "rut5-instruct", "messages": [{"role": "tool", "content": "x"}]}', 400, "Each message must be an object"),
    ("/v1/chat/completions", b'{"model": "rut5-instruct", "messages": [{"role": "user", "content": 5}]}', 400, "A message's content must be text."),
    (
        "/v1/chat/completions",
        b'{"model": "rut5-instruct", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}',
        400,
        "The model answers one instruction",
    ),
]


def test_malformed_requests_are_refused_with_one_sentence_in_openais_error_shape(folders):
    app = create_app(
        load_engine(folders["ctranslate2"]), model_name=MODEL, limits=Limits(max_body_bytes=2000, max_prompt_chars=300, max_prompts=3, max_tokens=40)
    )
    with serving(app) as base:
        for path, body, status, message in MALFORMED:
            got, text = get(base, path, "POST", body)
            error = json.loads(text)["error"]
            assert (got, message in error["message"]) == (status, True), (body, text)
            assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
        for path, method, status in (("/v1/completions", "GET", 405), ("/v1/embeddings", "POST", 404)):
            got, text = get(base, path, method, b"{}")
            assert got == status and json.loads(text)["error"]["message"].startswith(f"{method} {path}: "), text
        # Between the refusals the server answers as before.
        assert client(base).completions.create(model=MODEL, prompt="Привет", max_tokens=3).choices[0].text is not None


def test_with_an_api_key_every_route_but_health_needs_it(folders):
    app = create_app(load_engine(folders["ctranslate2"]), model_name=MODEL, api_key="s3cret-key")
    with serving(app) as base:
        for key in ("wrong", "s3cret-key-and-more"):
            with pytest.raises(openai.AuthenticationError) as refused:
                client(base, api_key=key).completions.create(model=MODEL, prompt="Привет", max_tokens=3)
            assert refused.value.body["message"] == "Missing or wrong API key: send Authorization: Bearer <key>."
        assert get(base, "/v1/models")[0] == 401
        assert client(base, api_key="s3cret-key").completions.create(model=MODEL, prompt="Привет", max_tokens=3).choices
        assert [m.id for m in client(base, api_key="s3cret-key").models.list()] == [MODEL]
        assert get(base, "/health")[0] == 200


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
