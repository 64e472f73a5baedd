"""debug.ping and server.info: ``apiserver/services/debug.py``, ``apiserver/services/server/__init__.py``."""

from __future__ import annotations

from ..auth import API_VERSION, SERVER_BUILD, SERVER_VERSION
from ..registry import OWN_VALIDATION, Call, endpoint
from ..store import COMPANY_ID


@endpoint("debug.ping", fields=OWN_VALIDATION, authorize=False, mutates=False)
def ping(call: Call) -> dict:
    """``debug.ping``: echoes the request data next to ``msg``."""
    return {"msg": "ClearML server", **call.data}


@endpoint("server.info", authorize=False, mutates=False)
def info(call: Call) -> dict:
    """``server.info`` (2.12): version, build, commit, uid and the API version."""
    return {"version": SERVER_VERSION, "build": SERVER_BUILD, "commit": None, "uid": COMPANY_ID, "api_version": API_VERSION}
