"""Secrets: channel keys (stored hashed) and signed bearer tokens for staff and customers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
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
    issued_at: float = 0.0  # seconds since the epoch: revocation compares it


def issue_token(
    secret: bytes, *, kind: str, subject: str, ttl_s: int, now: float | None = None
) -> str:
    """A signed token naming `subject`, valid for `ttl_s` seconds from its issue time."""
    # the issue time to the millisecond: a revocation refuses what was issued before it
    issued = math.floor((now if now is not None else time.time()) * 1000) / 1000
    claims = {
        "k": kind,
        "s": subject,
        "i": issued,
        "e": int(issued) + ttl_s,
        "j": secrets.token_hex(8),
    }
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


def verify_token(
    secret: bytes,
    token: str,
    *,
    kind: str,
    now: float | None = None,
    max_lifetime_s: float | None = None,
) -> Principal:
    """The principal a well-formed, genuine, unexpired token names; `InvalidToken` otherwise.

    With `max_lifetime_s`, a token issued for longer is refused too, as is one without an
    issue time (made before tokens carried one: it could never be revoked). Whether the
    subject is still an active member, and the token not revoked, is the directory's call
    (`shared.directory.admit`)."""
    body, _, sig = token.partition(".")
    if not body or not sig:
        raise InvalidToken("malformed token")
    if not token.isascii():
        raise InvalidToken("malformed token")
    expected = _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, sig):
        raise InvalidToken("bad signature")
    try:
        claims = json.loads(_unb64(body))
        expires, issued = float(claims.get("e", 0)), float(claims.get("i", -1))
    except (ValueError, TypeError):
        raise InvalidToken("malformed token") from None
    if claims.get("k") != kind:
        raise InvalidToken(f"not a {kind} token")
    if expires < (now if now is not None else time.time()):
        raise InvalidToken("expired")
    if max_lifetime_s is not None and (issued < 0 or expires - issued > max_lifetime_s):
        raise InvalidToken("issued for longer than tokens may live")
    return Principal(kind=kind, subject=str(claims["s"]), issued_at=max(issued, 0.0))


def new_channel_key(channel: str) -> str:
    """A fresh channel key; only its hash is stored."""
    return f"ck_{channel}_{secrets.token_urlsafe(24)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
