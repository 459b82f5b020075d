"""Secrets: channel keys (stored hashed) and signed bearer tokens for staff and customers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings

STAFF = "staff"
CUSTOMER = "customer"


class InvalidToken(Exception):
    """A bearer token that is malformed, forged, expired or of the wrong kind."""


def resolve_secret(settings: Settings, state: Path | None = None) -> bytes:
    """`COMPLAINTS_AUTH_SECRET`, else a secret generated once and kept in the state directory."""
    if settings.auth_secret is not None:
        return settings.auth_secret.get_secret_value().encode()
    if state is None:
        from shared.devinfra import state_dir

        state = state_dir()
    path = state / "auth-secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Principal:
    kind: str
    subject: str


def issue_token(
    secret: bytes, *, kind: str, subject: str, ttl_s: int, now: float | None = None
) -> str:
    """A signed token naming `subject`, valid for `ttl_s` seconds."""
    issued = int(now if now is not None else time.time())
    body = _b64(
        json.dumps({"k": kind, "s": subject, "e": issued + ttl_s}, separators=(",", ":")).encode()
    )
    sig = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


def verify_token(secret: bytes, token: str, *, kind: str, now: float | None = None) -> Principal:
    """The principal a valid token names; `InvalidToken` otherwise."""
    body, _, sig = token.partition(".")
    if not body or not sig:
        raise InvalidToken("malformed token")
    expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, sig):
        raise InvalidToken("bad signature")
    try:
        claims = json.loads(_unb64(body))
    except ValueError:
        raise InvalidToken("malformed token") from None
    if claims.get("k") != kind:
        raise InvalidToken(f"not a {kind} token")
    if int(claims.get("e", 0)) < (now if now is not None else time.time()):
        raise InvalidToken("expired")
    return Principal(kind=kind, subject=str(claims["s"]))


def new_channel_key(channel: str) -> str:
    """A fresh channel key; only its hash is stored."""
    return f"ck_{channel}_{secrets.token_urlsafe(24)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
