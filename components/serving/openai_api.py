"""The OpenAI-compatible HTTP API over an engine and its dynamic batcher (Starlette; uvicorn serves it).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.
Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, one sentence each.

**Decoding per request.** With none of ``temperature``, ``top_p``, ``top_k``, ``num_beams`` the export's
own decoding (the evaluation's, from ``generation_config.json``) answers; ``max_tokens`` caps the new
tokens (default: the export's). ``temperature`` 0 is greedy search (``num_beams`` > 1: beam search); a
positive ``temperature``, or ``top_p`` or ``top_k``, samples (``top_k`` 0 and ``top_p`` 1 unless given, as
OpenAI's API has no top-k). ``top_k`` and ``num_beams`` are not OpenAI's: the ``openai`` client sends
them with ``extra_body``. What the server does not do (several answers, stop sequences, log
probabilities, penalties, seeds, beams with sampling) is refused with a 400 naming the field, never ignored.

**Chat** maps the messages to what the model was trained on, an instruction and its optional input
(``components.data.source_text``): one user message is the instruction; a system message and one
user message are the instruction and its input. Any other conversation is a 400: the model answers
one instruction, with no memory of turns.

**Streaming** (``stream: true``, one prompt) sends server-sent events as OpenAI does, ending with
``data: [DONE]``; the text arrives token by token for greedy search and sampling, whole for beam
search (no engine streams beams). The deltas add up to the text a non-streamed call answers. A client
that leaves mid-stream stops its own generation; the batch it was in goes on.

**Limits.** A full queue is a 429 (clients retry), a body over ``max_body_bytes`` a 413, a prompt
over ``max_prompt_chars`` or more prompts than ``max_prompts`` a 400. With ``api_key`` set, every
route but ``/health`` needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from components.data import source_text
from components.decoding import Decoding
from components.serving.batching import Batching, DynamicBatcher, Overloaded, Pending
from components.serving.engines import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_000_000
    max_prompt_chars: int = 20_000
    max_prompts: int = 16
    max_tokens: int = 512


# A body over the limit is still read, up to this many times the limit, before the 413: a server that closes the
# connection with a body unread resets it, and the client sees a broken connection instead of the answer.
DRAINED_BODY_FACTOR = 64


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def error_response(error: ApiError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": None}}
    return JSONResponse(body, status_code=error.status, headers={"Retry-After": "1"} if error.status == 429 else None)


# Fields a request may hold, and for those the server does not implement, the one value it accepts (the default).
COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "num_beams", "stream", "user"}
AT_DEFAULT = {
    "n": (1,),
    "best_of": (1,),
    "echo": (False,),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "suffix": (None,),
    "stop": (None, []),
    "seed": (None,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": (None, {}),
    "stream_options": (None,),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "response_format": (None, {"type": "text"}),
}
COMPLETION_FIELDS = COMMON | {"prompt"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens"}


def _number(body: dict, name: str, kind: type, low: float, high: float):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or not low <= value <= high:
        raise ApiError(400, f"{name} must be {'a number' if kind is float else 'an integer'} from {low} to {high}, not {value!r}.", name)
    return value


def requested_decoding(body: dict, defaults: Decoding, limits: Limits, tokens_field: str = "max_tokens") -> Decoding:
    """The decoding a request asks for, from the export's ``defaults`` (see the module's docstring)."""
    max_tokens = _number(body, tokens_field, int, 1, limits.max_tokens)
    temperature, top_p = _number(body, "temperature", float, 0, 2), _number(body, "top_p", float, 0.0, 1.0)
    top_k, num_beams = _number(body, "top_k", int, 0, 1000), _number(body, "num_beams", int, 1, 16)
    decoding = replace(defaults, max_new_tokens=max_tokens or defaults.max_new_tokens)
    if temperature == 0:
        decoding = replace(decoding, do_sample=False)
    elif temperature is not None or top_p is not None or top_k is not None:
        sampling = {"temperature": temperature or 1.0, "top_p": 1.0 if top_p is None else top_p, "top_k": top_k or 0}
        decoding = replace(decoding, do_sample=True, num_beams=1, **sampling)
    if num_beams is not None:
        if decoding.do_sample and num_beams > 1:
            raise ApiError(400, "num_beams > 1 searches; it does not sample: give temperature 0 with it, or no num_beams.", "num_beams")
        decoding = replace(decoding, num_beams=num_beams)
    return decoding


def check_fields(body: dict, allowed: set[str]) -> None:
    for name, value in body.items():
        if name in AT_DEFAULT:
            if value not in AT_DEFAULT[name]:
                raise ApiError(400, f"{name} is not supported by this server: leave it out.", name)
        elif name not in allowed:
            raise ApiError(400, f"Unknown field {name!r}.", name)
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "stream must be true or false.", "stream")


def chat_source(messages) -> str:
    """The instruction (and input) a conversation stands for, as the model was trained on them."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects.", "messages")
    texts: dict[str, str] = {}
    roles = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, "Each message must be an object with a role (system, user) and its content.", "messages")
        content = message.get("content")
        if isinstance(content, list) and all(isinstance(part, dict) and part.get("type") == "text" for part in content):
            content = "".join(str(part.get("text", "")) for part in content)
        if not isinstance(content, str):
            raise ApiError(400, "A message's content must be text.", "messages")
        role = "system" if message["role"] == "developer" else message["role"]
        roles.append(role)
        texts[role] = content
    if roles == ["user"]:
        return source_text(texts["user"], "")
    if roles == ["system", "user"]:
        return source_text(texts["system"], texts["user"])
    raise ApiError(
        400,
        "The model answers one instruction: send one user message (the instruction), or a system message (the instruction) "
        "and one user message (its input); it keeps no earlier turns.",
        "messages",
    )


class OpenAIServer:
    """The API's state: the engine, its batcher, the served model's name, the limits and the key."""

    def __init__(self, engine: Engine, batcher: DynamicBatcher, *, model_name: str, api_key: str | None, limits: Limits) -> None:
        self.engine, self.batcher, self.model_name, self.api_key, self.limits = engine, batcher, model_name, api_key, limits
        self.created = int(time.time())

    # Requests

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "Missing or wrong API key: send Authorization: Bearer <key>.", kind="authentication_error")

    async def read_body(self, request: Request) -> dict:
        self.authorize(request)
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        declared_bytes = int(declared) if declared.isdigit() else 0  # uvicorn itself refuses a Content-Length that is no number
        data, received = bytearray(), 0
        async for chunk in request.stream():  # an oversized body is read to its end (up to a bound) so that the client gets the 413
            received += len(chunk)
            if received <= limit:
                data += chunk
            elif received > DRAINED_BODY_FACTOR * limit:
                break
        if max(received, declared_bytes) > limit:
            raise ApiError(413, f"The body is over {limit} bytes.")
        try:
            body = json.loads(data)
        except ValueError:
            raise ApiError(400, "The body is not JSON.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "The body must be a JSON object.")
        if body.get("model") != self.model_name:
            raise ApiError(
                404, f"The model {body.get('model')!r} does not exist: this server serves {self.model_name!r}.", "model", "not_found_error"
            )
        return body

    def check_prompt(self, text: str, field_name: str) -> str:
        if len(text) > self.limits.max_prompt_chars:
            raise ApiError(400, f"A prompt is {len(text)} characters, over the limit of {self.limits.max_prompt_chars}.", field_name)
        return text

    def submit(self, text: str, decoding: Decoding, on_token=None) -> Pending:
        try:
            return self.batcher.submit(text, decoding, on_token)
        except Overloaded as error:
            raise ApiError(429, f"The server is busy ({error}): retry shortly.", kind="rate_limit_error") from None

    # Answers

    async def answers(self, texts: list[str], decoding: Decoding) -> list[list[int]]:
        pendings: list[Pending] = []
        try:
            for text in texts:
                pendings.append(self.submit(text, decoding))
            return list(await asyncio.gather(*(asyncio.wrap_future(p.answer) for p in pendings)))
        finally:
            for pending in pendings:
                if not pending.answer.done():
                    pending.cancelled.set()

    def text(self, ids: list[int]) -> str:
        return self.engine.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def usage(self, texts: list[str], answers: list[list[int]]) -> dict:
        prompt = sum(len(ids) for ids in self.engine.tokenizer(texts, truncation=True)["input_ids"])
        completion = sum(len(ids) for ids in answers)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def finish_reason(ids: list[int], decoding: Decoding) -> str:
        return "length" if len(ids) >= decoding.max_new_tokens else "stop"

    async def stream(self, text: str, decoding: Decoding, chunk) -> AsyncIterator[str]:
        """Server-sent events of one answer: ``chunk(text_delta, finish_reason)`` makes each event's object."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[int] = asyncio.Queue()
        pending = self.submit(text, decoding, lambda token: loop.call_soon_threadsafe(tokens.put_nowait, token))
        answer = asyncio.wrap_future(pending.answer)

        async def events() -> AsyncIterator[str]:
            ids: list[int] = []
            sent = ""
            try:
                yield f"data: {json.dumps(chunk('', None, first=True), ensure_ascii=False)}\n\n"
                while True:
                    next_token = asyncio.ensure_future(tokens.get())
                    done, _ = await asyncio.wait({next_token, answer}, return_when=asyncio.FIRST_COMPLETED)
                    if next_token not in done:
                        next_token.cancel()
                        break
                    ids.append(next_token.result())
                    shown = self.text(ids)
                    if shown.startswith(sent) and not shown.endswith("\ufffd") and len(shown) > len(sent):
                        yield f"data: {json.dumps(chunk(shown[len(sent) :], None), ensure_ascii=False)}\n\n"
                        sent = shown
                final = await answer
                shown = self.text(final)
                if shown.startswith(sent) and len(shown) > len(sent):
                    yield f"data: {json.dumps(chunk(shown[len(sent) :], None), ensure_ascii=False)}\n\n"
                yield f"data: {json.dumps(chunk('', self.finish_reason(final, decoding)), ensure_ascii=False)}\n\n"
                yield "data: [DONE]\n\n"
            except Exception as error:  # generation failed after the stream began: the error is the stream's last event
                log.exception("Generation failed")
                yield f"data: {json.dumps({'error': {'message': f'Generation failed: {error}', 'type': 'server_error'}})}\n\n"
            finally:
                if not answer.done():
                    pending.cancelled.set()  # the client left: its text stops, the batch goes on

        return events()

    # Routes

    async def health(self, request: Request) -> Response:
        batches = self.batcher.batches
        return JSONResponse(
            {
                "status": "ok",
                "model": self.model_name,
                "engine": self.engine.name,
                "queued": self.batcher.queued,
                "largest_recent_batch": max(batches, default=0),
            }
        )

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        model = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "rut5-peft"}
        return JSONResponse({"object": "list", "data": [model]})

    async def completions(self, request: Request) -> Response:
        body = await self.read_body(request)
        check_fields(body, COMPLETION_FIELDS)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError(
                400, "prompt must be a text or a non-empty list of texts (token ids are not taken: the tokenizer adds the prompt tokens).", "prompt"
            )
        if len(prompts) > self.limits.max_prompts:
            raise ApiError(400, f"prompt holds {len(prompts)} texts; send at most {self.limits.max_prompts}.", "prompt")
        texts = [self.check_prompt(p, "prompt") for p in prompts]
        decoding = requested_decoding(body, self.engine.defaults, self.limits)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None, first: bool = False) -> dict:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "text_completion", "created": created, "model": self.model_name, "choices": [choice]}

        if body.get("stream"):
            if len(texts) > 1:
                raise ApiError(400, "Streaming answers one prompt: send one text, or stream false.", "prompt")
            return StreamingResponse(await self.stream(texts[0], decoding, chunk), media_type="text/event-stream")
        answers = await self.answers(texts, decoding)
        choices = [
            {"index": i, "text": self.text(ids), "logprobs": None, "finish_reason": self.finish_reason(ids, decoding)}
            for i, ids in enumerate(answers)
        ]
        body = {"id": ident, "object": "text_completion", "created": created, "model": self.model_name, "choices": choices}
        return JSONResponse({**body, "usage": self.usage(texts, answers)})

    async def chat(self, request: Request) -> Response:
        body = await self.read_body(request)
        check_fields(body, CHAT_FIELDS)
        text = self.check_prompt(chat_source(body.get("messages")), "messages")
        tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        decoding = requested_decoding(body, self.engine.defaults, self.limits, tokens_field)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None, first: bool = False) -> dict:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": self.model_name, "choices": [choice]}

        if body.get("stream"):
            return StreamingResponse(await self.stream(text, decoding, chunk), media_type="text/event-stream")
        [ids] = await self.answers([text], decoding)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": self.text(ids)},
            "logprobs": None,
            "finish_reason": self.finish_reason(ids, decoding),
        }
        answer = {"id": ident, "object": "chat.completion", "created": created, "model": self.model_name, "choices": [choice]}
        return JSONResponse({**answer, "usage": self.usage([text], [ids])})


def create_app(
    engine: Engine, *, model_name: str, api_key: str | None = None, limits: Limits = Limits(), batching: Batching = Batching()
) -> Starlette:
    """The API as a Starlette app; its lifespan starts and stops the batching thread."""
    batcher = DynamicBatcher(engine, batching)
    server = OpenAIServer(engine, batcher, model_name=model_name, api_key=api_key, limits=limits)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close)

    async def api_error(request: Request, error: ApiError) -> Response:
        return error_response(error)

    async def http_error(request: Request, error: HTTPException) -> Response:
        return error_response(ApiError(error.status_code, f"{request.method} {request.url.path}: {error.detail}.", kind="invalid_request_error"))

    async def server_error(request: Request, error: Exception) -> Response:
        log.exception("Generation failed")
        return error_response(ApiError(500, f"Generation failed: {error}", kind="server_error"))

    routes = [
        Route("/health", server.health),
        Route("/v1/models", server.models),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.server = server
    return app
