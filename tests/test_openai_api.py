"""The OpenAI-compatible API (``components.serving.openai_api`` with its batcher) served in this process over a scripted
engine (tests/openai_serving.py: it answers each text with the text's own tokens), asked by the official ``openai``
client and by raw HTTP: the shapes of every route's answers, the decoding each request hands the engine, streaming,
batching, a full queue, a client that leaves, the malformed requests, the API key. Fast, so that every mutant of the
API is tried against them (benchmarks/results/mutation.md). The real engines behind the API: test_openai_server.py."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from openai_serving import MODEL, GatedEngine, ScriptedEngine, client, get, serving, streamed, wait_until

from components.decoding import Decoding
from components.modeling import load_tokenizer
from components.serving.batching import Batching
from components.serving.openai_api import Limits, create_app

DEFAULTS = Decoding(num_beams=1, max_new_tokens=6)  # the scripted export's own decoding
TEXTS = ["Переведи на английский.\nкошка", "Сколько будет два плюс два?", "Привет"]


@pytest.fixture
def engine(tiny_model_dir) -> ScriptedEngine:
    return ScriptedEngine(load_tokenizer(str(tiny_model_dir)), DEFAULTS)


def echoed(engine: ScriptedEngine, text: str, max_new_tokens: int = DEFAULTS.max_new_tokens) -> str:
    """The scripted answer as the API gives it, computed here: the text's first tokens, decoded."""
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]
    return engine.tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_every_route_answers_in_openais_shapes(engine):
    with serving(create_app(engine, model_name=MODEL)) as base:
        api = client(base)
        assert [(model.id, model.object, model.owned_by) for model in api.models.list()] == [(MODEL, "model", "rut5-peft")]
        single = api.completions.create(model=MODEL, prompt=TEXTS[2], max_tokens=6)
        assert (single.object, single.model, single.choices[0].index, single.choices[0].text) == (
            "text_completion",
            MODEL,
            0,
            echoed(engine, TEXTS[2]),
        )
        assert single.id.startswith("cmpl-") and single.choices[0].finish_reason == "stop"  # fewer tokens than asked for
        prompt_tokens = len(engine.tokenizer(TEXTS[2], add_special_tokens=False)["input_ids"]) + 1  # and the end of sequence
        completion_tokens = len(engine.answer(TEXTS[2], 6))
        assert (single.usage.prompt_tokens, single.usage.completion_tokens, single.usage.total_tokens) == (
            prompt_tokens,
            completion_tokens,
            prompt_tokens + completion_tokens,
        )
        listed = api.completions.create(model=MODEL, prompt=TEXTS, max_tokens=3)
        finish = ["length" if len(engine.tokenizer(t, add_special_tokens=False)["input_ids"]) >= 3 else "stop" for t in TEXTS]
        assert [(c.index, c.text, c.finish_reason) for c in listed.choices] == [(i, echoed(engine, t, 3), finish[i]) for i, t in enumerate(TEXTS)]
        assert set(finish) == {"length", "stop"}  # the two kinds, "Привет" being shorter than 3 tokens
        assert engine.calls[-1][0] == TEXTS  # one batch
        chat = api.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "Переведи."}, {"role": "user", "content": "кошка"}])
        assert (chat.object, chat.choices[0].message.role, chat.choices[0].message.content) == (
            "chat.completion",
            "assistant",
            echoed(engine, "Переведи.\nкошка"),
        )
        assert chat.id.startswith("chatcmpl-") and chat.usage.completion_tokens == 6 and chat.choices[0].finish_reason == "length"
        health = json.loads(get(base, "/health")[1])
        assert health == {"status": "ok", "model": MODEL, "engine": "scripted", "queued": 0, "largest_recent_batch": 3}


def test_streams_send_the_answer_token_by_token_and_whole_for_beams(engine):
    with serving(create_app(engine, model_name=MODEL)) as base:
        api = client(base)
        events = list(api.completions.create(model=MODEL, prompt=TEXTS[0], max_tokens=5, stream=True))
        texts = [event.choices[0].text for event in events]
        assert texts[0] == "" and events[-1].choices[0].finish_reason == "length" and all(e.choices[0].finish_reason is None for e in events[:-1])
        assert "".join(texts) == echoed(engine, TEXTS[0], 5) and len([t for t in texts if t]) > 2  # several deltas
        assert {event.id for event in events} == {events[0].id} and events[0].object == "text_completion"
        beams = list(api.completions.create(model=MODEL, prompt=TEXTS[0], max_tokens=5, stream=True, temperature=0, extra_body={"num_beams": 2}))
        assert [event.choices[0].text for event in beams if event.choices[0].text] == [echoed(engine, TEXTS[0], 5)]  # whole
        chat = list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": TEXTS[1]}], stream=True))
        assert chat[0].choices[0].delta.role == "assistant" and chat[0].object == "chat.completion.chunk"
        assert streamed(iter(chat), chat=True) == echoed(engine, TEXTS[1]) and chat[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    "asked, decoding",
    [
        ({}, DEFAULTS),
        ({"max_tokens": 4}, Decoding(max_new_tokens=4)),
        ({"temperature": 0, "extra_body": {"num_beams": 3}}, Decoding(num_beams=3, max_new_tokens=6)),
        ({"temperature": 0.5, "top_p": 0.8, "extra_body": {"top_k": 7}}, Decoding(1, True, 0.5, 7, 0.8, 6)),
    ],
)
def test_each_request_hands_the_engine_the_decoding_it_asks_for(engine, asked, decoding):
    with serving(create_app(engine, model_name=MODEL, limits=Limits(max_tokens=6))) as base:
        client(base).completions.create(model=MODEL, prompt="Привет", **asked)
        client(base).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Привет"}], **asked)
        assert [call[1] for call in engine.calls] == [decoding, decoding]


def test_concurrent_requests_are_generated_as_one_batch_each_answered_its_own(engine):
    """16 requests in flight while the engine is busy are generated together in the next batch, each with its own answer;
    with --max-batch-size 1 (one request at a time) the same requests go one by one."""
    texts = [f"Переведи на английский.\nСлово номер {n}" for n in range(16)]
    for max_batch_size, batches in ((16, [1, 16]), (1, [1] * 17)):
        gated = GatedEngine(engine)
        app = create_app(gated, model_name=MODEL, batching=Batching(max_batch_size, 0.05))
        with serving(app) as base, ThreadPoolExecutor(17) as pool:
            api = client(base)
            first = pool.submit(api.completions.create, model=MODEL, prompt="Привет", temperature=0)
            assert gated.inside.wait(10)
            answers = [pool.submit(api.completions.create, model=MODEL, prompt=text, temperature=0) for text in texts]
            wait_until(lambda: app.state.server.batcher.queued == len(texts))
            gated.gate.set()
            assert [future.result().choices[0].text for future in answers] == [echoed(engine, text) for text in texts]
            first.result()
            assert list(app.state.server.batcher.batches) == batches
            assert json.loads(get(base, "/health")[1])["largest_recent_batch"] == max(batches)


def test_a_batch_waits_for_as_many_requests_as_the_last_one_held_and_a_lone_request_never_waits(engine):
    """A lone request is generated at once, not max_wait (5 s here) later. After a batch of 3, the next waits until 3
    requests have come: one now, two 0.3 s later, one batch."""
    import time

    gated = GatedEngine(engine)
    gated.gate.set()
    app = create_app(gated, model_name=MODEL, batching=Batching(max_wait=5.0))
    batcher = app.state.server.batcher
    texts = [f"Переведи на английский.\nСлово номер {n}" for n in range(3)]
    with serving(app) as base, ThreadPoolExecutor(4) as pool:
        api = client(base)

        def ask(text: str):
            return pool.submit(api.completions.create, model=MODEL, prompt=text, temperature=0)

        start = time.monotonic()
        assert api.completions.create(model=MODEL, prompt="Привет", temperature=0).choices
        assert time.monotonic() - start < 4  # batch [1]: a lone request does not wait
        gated.gate.clear()
        busy = ask("Привет")
        wait_until(lambda: batcher.queued == 0 and len(batcher.batches) == 2)  # batch [1] generating, at the gate
        held = [ask(text) for text in texts]
        wait_until(lambda: batcher.queued == 3)
        gated.gate.set()
        busy.result()
        assert [future.result().choices[0].text for future in held] == [echoed(engine, text) for text in texts]  # batch [3]
        first = ask(texts[0])
        time.sleep(0.3)
        rest = [ask(text) for text in texts[1:]]
        assert [future.result().choices[0].text for future in (first, *rest)] == [echoed(engine, text) for text in texts]
        assert list(batcher.batches) == [1, 1, 3, 3]


def test_a_full_queue_answers_429_and_the_requests_taken_are_answered(engine):
    gated = GatedEngine(engine)
    app = create_app(gated, model_name=MODEL, batching=Batching(max_batch_size=1, max_queue=2))
    with serving(app) as base, ThreadPoolExecutor(3) as pool:
        api = client(base)
        taken = [pool.submit(api.completions.create, model=MODEL, prompt=TEXTS[0], temperature=0)]
        assert gated.inside.wait(10)
        taken += [pool.submit(api.completions.create, model=MODEL, prompt=TEXTS[0], temperature=0) for _ in range(2)]
        wait_until(lambda: app.state.server.batcher.queued == 2)
        with pytest.raises(openai.RateLimitError) as refused:
            api.completions.create(model=MODEL, prompt=TEXTS[0], temperature=0)
        assert refused.value.status_code == 429 and refused.value.response.headers["retry-after"] == "1"
        assert refused.value.body == {
            "message": "The server is busy (2 requests are queued already): retry shortly.",
            "type": "rate_limit_error",
            "param": None,
            "code": None,
        }
        gated.gate.set()
        assert [future.result().choices[0].text for future in taken] == [echoed(engine, TEXTS[0])] * 3


def test_a_client_that_leaves_mid_stream_is_dropped_and_its_batch_goes_on(engine):
    """Two streams wait behind a busy engine; one client reads the stream's first event and leaves. Its text is never
    generated (the server saw it leave), and the other stream is answered in full."""
    gated = GatedEngine(engine)
    app = create_app(gated, model_name=MODEL, batching=Batching(max_wait=0.05))
    with serving(app) as base, ThreadPoolExecutor(2) as pool:
        api = client(base)
        busy = pool.submit(api.completions.create, model=MODEL, prompt="Привет", temperature=0)
        assert gated.inside.wait(10)
        leaving = api.completions.create(model=MODEL, prompt=TEXTS[0], temperature=0, stream=True)
        staying = pool.submit(lambda: streamed(api.completions.create(model=MODEL, prompt=TEXTS[1], temperature=0, stream=True), False))
        wait_until(lambda: app.state.server.batcher.queued == 2)
        assert next(iter(leaving)).choices[0].text == ""  # the stream's first event, sent before generation
        leaving.close()
        batcher = app.state.server.batcher
        wait_until(lambda: any(p.cancelled.is_set() for p in [*batcher._queue.queue, *batcher._waiting]))
        gated.gate.set()
        assert staying.result() == echoed(engine, TEXTS[1])
        busy.result()
        assert gated.calls == [["Привет"], [TEXTS[1]]]  # the left client's text was dropped before generation
        assert json.loads(get(base, "/health")[1])["queued"] == 0


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


def test_malformed_requests_are_refused_with_one_sentence_in_openais_error_shape(engine):
    limits = Limits(max_body_bytes=2000, max_prompt_chars=300, max_prompts=3, max_tokens=40)
    with serving(create_app(engine, model_name=MODEL, limits=limits)) as base:
        for path, body, status, message in MALFORMED:
            got, text = get(base, path, "POST", body)
            error = json.loads(text)["error"]
            assert (got, message in error["message"]) == (status, True), (body, text)
            assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]
        for path, method, status in (("/v1/completions", "GET", 405), ("/v1/embeddings", "POST", 404)):
            got, text = get(base, path, method, b"{}")
            assert got == status and json.loads(text)["error"]["message"].startswith(f"{method} {path}: "), text
        # Between the refusals the server answers as before, and nothing of them reached the engine.
        assert client(base).completions.create(model=MODEL, prompt="Привет", max_tokens=3).choices[0].text == echoed(engine, "Привет", 3)
        assert [texts for texts, _ in engine.calls] == [["Привет"]]


def test_with_an_api_key_every_route_but_health_needs_it(engine):
    app = create_app(engine, model_name=MODEL, api_key="s3cret-key")
    with serving(app) as base:
        for key in ("wrong", "s3cret-key-and-more"):
            with pytest.raises(openai.AuthenticationError) as refused:
                client(base, api_key=key).completions.create(model=MODEL, prompt="Привет", max_tokens=3)
            assert refused.value.body["message"] == "Missing or wrong API key: send Authorization: Bearer <key>."
            assert refused.value.body["type"] == "authentication_error"
        assert get(base, "/v1/models")[0] == 401
        assert get(base, "/v1/chat/completions", "POST", b"{}")[0] == 401
        assert client(base, api_key="s3cret-key").completions.create(model=MODEL, prompt="Привет", max_tokens=3).choices
        assert [m.id for m in client(base, api_key="s3cret-key").models.list()] == [MODEL]
        assert get(base, "/health")[0] == 200


def raw_stream(base: str, path: str, body: dict) -> tuple[str, list[dict | str]]:
    """A streamed answer read as bytes: its content type and its events (JSON objects, and the closing ``[DONE]``)."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    text = response.read().decode()
    assert text.endswith("\n\n") and all(block.startswith("data: ") for block in text.split("\n\n")[:-1]), text
    events = [block.removeprefix("data: ") for block in text.split("\n\n")[:-1]]
    assert "\\u" not in text  # Cyrillic as it is (ensure_ascii off), as OpenAI sends it
    return response.getheader("content-type"), [event if event == "[DONE]" else json.loads(event) for event in events]


def test_the_streams_bytes_are_openais_events_exactly(engine):
    with serving(create_app(engine, model_name=MODEL)) as base:
        kind, events = raw_stream(
            base,
            "/v1/chat/completions",
            {"model": MODEL, "messages": [{"role": "user", "content": "Привет мир"}], "stream": True, "max_completion_tokens": 2},
        )
        assert kind.startswith("text/event-stream") and events[-1] == "[DONE]"
        ident, created = events[0]["id"], events[0]["created"]
        assert ident.startswith("chatcmpl-") and isinstance(created, int)
        ids = engine.answer("Привет мир", 2)
        pieces, sent = [], ""  # what each token adds to the decoded answer (a lone "▁" adds nothing: no event)
        for n in range(len(ids)):
            shown = engine.tokenizer.decode(ids[: n + 1], skip_special_tokens=True).strip()
            if len(shown) > len(sent):
                pieces, sent = [*pieces, shown[len(sent) :]], shown
        assert pieces and sent == echoed(engine, "Привет мир", 2)

        def chunk(delta: dict, finish: str | None) -> dict:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": MODEL, "choices": [choice]}

        assert events[:-1] == [chunk({"role": "assistant", "content": ""}, None), *(chunk({"content": p}, None) for p in pieces), chunk({}, "length")]
        assert engine.calls[-1][1].max_new_tokens == 2  # max_completion_tokens reached the engine
        _, events = raw_stream(base, "/v1/completions", {"model": MODEL, "prompt": "Привет мир", "stream": True, "max_tokens": 2})
        first = events[0]

        def text_chunk(text: str, finish: str | None) -> dict:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {"id": first["id"], "object": "text_completion", "created": first["created"], "model": MODEL, "choices": [choice]}

        assert events == [text_chunk("", None), *(text_chunk(piece, None) for piece in pieces), text_chunk("", "length"), "[DONE]"]


class FailingEngine(ScriptedEngine):
    """The scripted engine, failing as an engine can (out of memory, say) after its first token."""

    def generate(self, texts, decoding, on_token=None):
        if on_token:
            on_token(0, self.answer(texts[0], 1)[0])
        raise RuntimeError("out of memory")


def test_an_engine_that_fails_is_a_500_or_the_streams_last_event_and_the_server_goes_on(tiny_model_dir):
    failing = FailingEngine(load_tokenizer(str(tiny_model_dir)), DEFAULTS)
    with serving(create_app(failing, model_name=MODEL)) as base:
        status, text = get(base, "/v1/completions", "POST", json.dumps({"model": MODEL, "prompt": "Привет"}).encode())
        assert (status, json.loads(text)) == (
            500,
            {"error": {"message": "Generation failed: out of memory", "type": "server_error", "param": None, "code": None}},
        )
        _, events = raw_stream(base, "/v1/completions", {"model": MODEL, "prompt": "Привет", "stream": True})
        assert events[-1] == {"error": {"message": "Generation failed: out of memory", "type": "server_error"}} and "[DONE]" not in events
        assert json.loads(get(base, "/health")[1]) == {"status": "ok", "model": MODEL, "engine": "scripted", "queued": 0, "largest_recent_batch": 1}


def test_the_models_and_health_routes_answer_exactly(engine):
    with serving(create_app(engine, model_name=MODEL)) as base:
        assert json.loads(get(base, "/health")[1]) == {"status": "ok", "model": MODEL, "engine": "scripted", "queued": 0, "largest_recent_batch": 0}
        models = json.loads(get(base, "/v1/models")[1])
        assert models == {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": models["data"][0]["created"], "owned_by": "rut5-peft"}],
        }
        assert isinstance(models["data"][0]["created"], int)
        status, text = get(base, "/v1/completions", "POST", b"{}")
        assert status == 404 and "retry-after" not in {name.lower() for name in http_headers(base)}  # Retry-After only with a 429


def http_headers(base: str) -> list[str]:
    import http.client

    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", "/v1/completions", body=b"{}", headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    response.read()
    return [name for name, _ in response.getheaders()]


def test_a_streamed_and_a_whole_answer_share_a_batch(engine):
    """A stream and a plain request that decode alike are one batch: the stream gets its tokens, the other its answer."""
    gated = GatedEngine(engine)
    app = create_app(gated, model_name=MODEL)
    with serving(app) as base, ThreadPoolExecutor(3) as pool:
        api = client(base)
        busy = pool.submit(api.completions.create, model=MODEL, prompt="Привет", temperature=0)
        assert gated.inside.wait(10)
        stream = pool.submit(lambda: streamed(api.completions.create(model=MODEL, prompt=TEXTS[0], temperature=0, stream=True), False))
        whole = pool.submit(api.completions.create, model=MODEL, prompt=TEXTS[1], temperature=0)
        wait_until(lambda: app.state.server.batcher.queued == 2)
        gated.gate.set()
        assert (stream.result(), whole.result().choices[0].text) == (echoed(engine, TEXTS[0]), echoed(engine, TEXTS[1]))
        busy.result()
        assert list(app.state.server.batcher.batches) == [1, 2]


def test_closing_the_batcher_answers_what_came_before_fails_what_is_left_and_its_thread_never_holds_a_process(engine):
    """Closing while A generates, with B and C (another decoding) queued: A and B, the next batch, are answered; C, left
    waiting when the stop comes, fails with the server's sentence."""
    from components.serving.batching import DynamicBatcher, Overloaded

    gated = GatedEngine(engine)
    batcher = DynamicBatcher(gated, Batching(max_batch_size=2))
    assert batcher._thread.daemon  # a server that dies without closing it still exits
    batcher.start()
    first = batcher.submit(TEXTS[0], DEFAULTS)
    assert gated.inside.wait(10)
    alike, other = batcher.submit(TEXTS[1], DEFAULTS), batcher.submit(TEXTS[2], Decoding(max_new_tokens=2))
    closing = ThreadPoolExecutor(1).submit(batcher.close)
    gated.gate.set()
    closing.result(timeout=10)
    assert [pending.answer.result(timeout=10) for pending in (first, alike)] == [engine.answer(text, 6) for text in TEXTS[:2]]
    with pytest.raises(Overloaded, match="the server is shutting down"):
        other.answer.result(timeout=10)
