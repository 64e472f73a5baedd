"""What the OpenAI-compatible server's tests share: an app served by uvicorn in a thread, an engine held at a gate, a
scripted engine for the API's own tests, the official client, a raw HTTP request, a bounded wait."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from contextlib import contextmanager

import openai
import uvicorn

from components.decoding import Decoding

MODEL = "rut5-instruct"
# How long a test waits for what takes milliseconds here (a request, a gate, a token): a bound for slow machines that
# still ends a hung request soon (a broken server fails its test in seconds, not at the client's default of 10 minutes).
PATIENCE_S = 10


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


class ScriptedEngine:
    """A stand-in engine for the API's own tests, with every part of the engine interface: it answers each text with the
    text's own tokens (the tokenizer's ids without special tokens, at most ``max_new_tokens``), passes them one by one
    to ``on_token`` when it streams (no beams), stops a text when told, and records each call. Its tokenizer is a real
    one, as the API decodes and counts with it."""

    name = "scripted"

    def __init__(self, tokenizer, defaults: Decoding) -> None:
        self.tokenizer, self.defaults = tokenizer, defaults
        self.calls: list[tuple[list[str], Decoding]] = []

    def streams(self, decoding: Decoding) -> bool:
        return decoding.num_beams == 1

    def answer(self, text: str, max_new_tokens: int) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens]

    def generate(self, texts, decoding, on_token=None):
        self.calls.append((list(texts), decoding))
        answers = []
        for index, text in enumerate(texts):
            answer = []
            for token in self.answer(text, decoding.max_new_tokens):
                answer.append(token)
                if on_token and self.streams(decoding) and on_token(index, token):
                    break
            answers.append(answer)
        return answers


def client(base: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=options.pop("api_key", "unused"), max_retries=0, timeout=PATIENCE_S, **options)


def streamed(stream, chat: bool) -> str:
    parts = [(chunk.choices[0].delta.content or "") if chat else chunk.choices[0].text for chunk in stream]
    return "".join(parts)


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
