"""Endpoint registration and the per-call context handed to handlers.

Each handler declares the request fields it implements; a call with any other field is
refused with an error naming it (a test double must fail loudly, never ignore a filter).
``ignored`` lists fields clients send that clearml-server's request model does not have
(the server drops them); they are dropped here too. ``fields=OWN_VALIDATION`` marks
handlers that check their fields themselves (get_all queries).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import errors
from .auth import Authenticator
from .store import Store

OWN_VALIDATION = None


@dataclass
class Call:
    endpoint: str
    data: dict[str, Any]
    batch: list[dict] | None
    user: dict[str, str]
    worker: str
    store: Store
    authenticator: Authenticator

    def get(self, name: str, default: Any = None) -> Any:
        value = self.data.get(name)
        return default if value is None else value


Handler = Callable[[Call], "dict[str, Any] | None"]


@dataclass(frozen=True)
class Endpoint:
    name: str
    handler: Handler
    fields: frozenset[str] | None
    required: tuple[str, ...] = ()
    authorize: bool = True
    batched: bool = False
    mutates: bool = True
    ignored: frozenset[str] = frozenset()

    def validate(self, data: dict[str, Any]) -> None:
        for key in self.ignored & set(data):
            del data[key]
        if self.fields is not OWN_VALIDATION:
            for key in data:
                if key not in self.fields:
                    raise errors.unsupported_field(self.name, key)
        for key in self.required:
            if data.get(key) is None:
                # fastjsonschema's message for a missing required property, as the server words it
                raise errors.validation_error(f"data must contain ['{key}'] properties")


ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(
    name: str,
    *,
    fields: tuple[str, ...] | None = (),
    required: tuple[str, ...] = (),
    authorize: bool = True,
    batched: bool = False,
    mutates: bool = True,
    ignored: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    """Register ``name`` (``service.action``); ``required`` fields are accepted fields too."""

    def register(handler: Handler) -> Handler:
        accepted = None if fields is OWN_VALIDATION else frozenset(fields) | frozenset(required)
        ENDPOINTS[name] = Endpoint(name, handler, accepted, tuple(required), authorize, batched, mutates, frozenset(ignored))
        return handler

    return register
