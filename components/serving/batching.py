"""Dynamic batching: the requests that arrive together and decode alike become one ``generate`` call.

A request is queued (a bounded queue: a full one refuses at once, :class:`Overloaded`); one thread
takes the oldest and every request queued behind it, up to ``max_batch_size``, and generates those
with the oldest's decoding together. The others keep their turn. Under load, the requests that
arrive while a batch generates form the next one. Clients that send their next request when answered
would then split into two half batches taking turns; so while fewer requests wait than the last batch
held, the batch waits up to
``max_wait`` for them. A lone client's batches hold one request and never wait. ``max_batch_size`` 1
serves one request at a time (the comparison of benchmarks/openai_server.py).

The thread owns the engine (one ``generate`` at a time), and the event loop never waits on it:
a request's answer is a ``concurrent.futures.Future``, its streamed tokens a callback from the thread.
A cancelled request (a client that left) stops its own text where the engine can and is answered no more.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from components.decoding import Decoding
from components.serving.engines import Engine


class Overloaded(Exception):
    """The queue is full: the request was not taken."""


@dataclass
class Pending:
    """One text waiting for its answer: the new token ids, in ``answer``."""

    text: str
    decoding: Decoding
    on_token: Callable[[int], None] | None = None  # called from the batching thread with each new token id
    answer: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Batching:
    """How requests are batched: texts generated together at most, seconds a batch may wait for the requests of
    the last one's clients, requests waiting at most (one more is refused)."""

    max_batch_size: int = 16
    max_wait: float = 0.02
    max_queue: int = 64


_STOP = object()


class DynamicBatcher:
    def __init__(self, engine: Engine, settings: Batching) -> None:
        self.engine, self.max_batch_size, self.max_wait = engine, settings.max_batch_size, settings.max_wait
        self._queue: queue.Queue = queue.Queue(maxsize=settings.max_queue)
        self._waiting: deque[Pending] = deque()
        self._expected = 1  # the size of the last batch: its clients, answered, are likely to ask again at once
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.batches: deque[int] = deque(maxlen=1000)  # the sizes of the latest batches generated, for /health

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop: the requests queued before are answered in turn, those left waiting for another batch fail."""
        self._queue.put(_STOP)
        self._thread.join()

    @property
    def queued(self) -> int:
        return self._queue.qsize() + len(self._waiting)

    def submit(self, text: str, decoding: Decoding, on_token: Callable[[int], None] | None = None) -> Pending:
        pending = Pending(text, decoding, on_token)
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} requests are queued already") from None
        return pending

    def _serve(self) -> None:
        while True:
            if not self._waiting:
                item = self._queue.get()
                if item is _STOP:
                    return self._fail_waiting()
                self._waiting.append(item)
            batch = self._gather()
            if batch is None:
                return self._fail_waiting()
            if batch:
                self._generate(batch)

    def _gather(self) -> list[Pending] | None:
        """The oldest request's decoding: the waiting requests with it, every queued request (up to a batch's worth
        waiting), and, while there are fewer than the last batch held, those arriving within ``max_wait`` (None once
        asked to stop). Cancelled requests are dropped."""
        decoding = self._waiting[0].decoding
        deadline = time.monotonic() + self.max_wait
        while len(self._waiting) < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or sum(p.decoding == decoding for p in self._waiting) >= self._expected:
                    break
                try:
                    item = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if item is _STOP:
                return None
            self._waiting.append(item)
        batch = [p for p in self._waiting if p.decoding == decoding][: self.max_batch_size]
        for pending in batch:
            self._waiting.remove(pending)
        self._expected = len(batch)
        return [p for p in batch if not p.cancelled.is_set() and p.answer.set_running_or_notify_cancel()]

    def _generate(self, batch: list[Pending]) -> None:
        def on_token(index: int, token: int) -> bool:
            pending = batch[index]
            if pending.on_token and not pending.cancelled.is_set():
                pending.on_token(token)
            return pending.cancelled.is_set()

        streaming = any(p.on_token for p in batch)
        self.batches.append(len(batch))
        try:
            answers = self.engine.generate([p.text for p in batch], batch[0].decoding, on_token if streaming else None)
        except Exception as error:  # the batch's requests are answered with it; the server goes on
            for pending in batch:
                pending.answer.set_exception(error)
            return
        for pending, answer in zip(batch, answers):
            pending.answer.set_result(answer)

    def _fail_waiting(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._waiting.append(item)
        for pending in self._waiting:
            if pending.answer.set_running_or_notify_cancel():
                pending.answer.set_exception(Overloaded("the server is shutting down"))
        self._waiting.clear()
