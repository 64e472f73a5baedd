"""auth.*: ``apiserver/services/auth.py``."""

from __future__ import annotations

from ..registry import Call, endpoint


@endpoint("auth.login", fields=("expiration_sec",), mutates=False)
def login(call: Call) -> dict:
    """``auth.login``: a token for the calling user (``AuthBLL.get_token_for_user``)."""
    return {"token": call.authenticator.create_token(call.user, call.get("expiration_sec"))}
