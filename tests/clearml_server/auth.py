"""Authentication: one access/secret key pair is accepted; tokens are HS256 JWTs.

Follows ``apiserver/service_repo/auth/auth.py`` (Basic credentials or a Bearer token on
any call; a key pair it does not know is ``401.22 invalid_credentials``, "failed to locate
provided credentials") and ``apiserver/bll/auth/__init__.py:get_token_for_user`` (the token
carries ``api_version``, ``server_version`` and ``feature_set``, which the SDK and the agent
read from the token to decide which API level to speak). As clearml-server's
``secure.auth.token_secret`` is fixed by its configuration, the signing secret is drawn once
per state directory and kept there: tokens issued before a restart stay valid after it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from . import errors
from .store import COMPANY_ID, COMPANY_NAME

API_VERSION = "2.31"  # apiserver/service_repo/service_repo.py: ServiceRepo._max_version
SERVER_VERSION = "2.0.0"  # apiserver/version.py at the release the endpoints follow
SERVER_BUILD = "test-double"
DEFAULT_EXPIRATION_S = 30 * 24 * 3600  # apiserver.auth.default_expiration_sec
# The one user's key pair (the server prints it with its other variables); any other pair is refused.
ACCESS_KEY, SECRET_KEY = "test-access-key", "test-secret-key"
TOKEN_SECRET_FILE = "token_secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_secret(state_dir: Path) -> bytes:
    """The signing secret of this state directory: drawn on the first start, read back on every later one."""
    path = Path(state_dir) / TOKEN_SECRET_FILE
    if not path.exists():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


class Authenticator:
    def __init__(self, state_dir: Path) -> None:
        self._secret = token_secret(state_dir)

    def user_for_key(self, access_key: str) -> dict[str, str]:
        """One user per access key, so tasks record who created them."""
        return {"id": hashlib.sha1(access_key.encode()).hexdigest()[:32], "name": access_key}

    def create_token(self, user: dict[str, str], expiration_s: int | None) -> str:
        issued = int(time.time())
        claims = {
            "identity": {"user": user["id"], "company": COMPANY_ID, "role": "user", "user_name": user["name"], "company_name": COMPANY_NAME},
            "env": "test",
            "iat": issued,
            "exp": issued + int(expiration_s or DEFAULT_EXPIRATION_S),
            "api_version": API_VERSION,
            "server_version": SERVER_VERSION,
            "server_build": SERVER_BUILD,
            "feature_set": "basic",
        }
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps(claims).encode())
        signature = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def _user_from_token(self, token: str) -> dict[str, str]:
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _unb64(signature)):
                raise ValueError("signature verification failed")
            claims = json.loads(_unb64(payload))
        except ValueError as error:
            raise errors.invalid_token("invalid jwt token", reason=str(error)) from None
        if claims["exp"] < time.time():
            raise errors.invalid_token("expired token")
        identity = claims["identity"]
        return {"id": identity["user"], "name": identity["user_name"]}

    def authenticate(self, header: str | None, required: bool) -> dict[str, str] | None:
        """The calling user from an ``Authorization`` header (``validators.py:validate_auth``)."""
        if not header:
            if required:
                raise errors.no_credentials()
            return None
        kind, _, data = header.partition(" ")
        if kind == "Bearer":
            return self._user_from_token(data)
        if kind == "Basic":
            try:
                access_key, _, secret_key = base64.b64decode(data).decode().partition(":")
            except ValueError:
                raise errors.bad_credentials() from None
            if not access_key or not secret_key:
                raise errors.bad_credentials("access key and secret key are required")
            if not (hmac.compare_digest(access_key, ACCESS_KEY) and hmac.compare_digest(secret_key, SECRET_KEY)):
                raise errors.invalid_credentials("failed to locate provided credentials")
            return self.user_for_key(access_key)
        raise errors.bad_auth_type()
