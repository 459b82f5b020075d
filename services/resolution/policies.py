"""The policy store: every version of the authority and clock policy, exactly one active.

Versions are numbered from 1 and never deleted; loading stores a new version inactive, and
the operator activates it (or an earlier one again). An empty store is seeded with the
packaged default as version 1, loaded by `default`, so a fresh system has a policy at once.
Connections must carry the json/jsonb codecs (`shared.db.prepare_connection`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.resolution.policy import Policy, default_policy, diff
from shared.db import Conn

__all__ = [
    "Loaded",
    "PolicyCache",
    "UnknownVersion",
    "activate",
    "active",
    "get",
    "load",
    "versions",
]


class UnknownVersion(LookupError):
    """No policy version by that number."""

    def __init__(self, version: int) -> None:
        super().__init__(f"no policy version {version}")
        self.version = version


@dataclass(frozen=True)
class Loaded:
    """The outcome of a load: the version stored (None on a dry run) and the changes from the
    active version, one line each."""

    version: int | None
    diff: list[str]


def _document(policy: Policy, version: int) -> dict[str, Any]:
    return policy.model_copy(update={"version": version}).model_dump(mode="json")


def _policy(row: Any) -> Policy:
    return Policy.model_validate({**row["document"], "version": row["version"]})


async def _lock(conn: Conn) -> None:
    # one writer at a time (versions are max + 1, one active); readers are never blocked
    await conn.execute("LOCK TABLE policies IN EXCLUSIVE MODE")


async def active(conn: Conn) -> Policy:
    """The active policy; an empty store gets the default as version 1 first."""
    row = await conn.fetchrow("SELECT version, document FROM policies WHERE active")
    if row is None:
        # two replicas starting at once: one insert wins, the other does nothing and re-reads
        await conn.execute(
            """INSERT INTO policies (version, document, loaded_by, active)
               VALUES (1, $1, 'default', true) ON CONFLICT DO NOTHING""",
            _document(default_policy(), 1),
        )
        row = await conn.fetchrow("SELECT version, document FROM policies WHERE active")
    if row is None:
        raise RuntimeError("the policy store has versions but none is active")
    return _policy(row)


async def get(conn: Conn, version: int) -> Policy | None:
    """Policy version `version`, or None."""
    row = await conn.fetchrow("SELECT version, document FROM policies WHERE version = $1", version)
    return None if row is None else _policy(row)


async def versions(conn: Conn) -> list[dict[str, Any]]:
    """Every version, oldest first: `version`, `loaded_by`, `loaded_at`, `active`."""
    rows = await conn.fetch(
        "SELECT version, loaded_by, loaded_at, active FROM policies ORDER BY version"
    )
    return [dict(r) for r in rows]


async def load(conn: Conn, policy: Policy, *, loaded_by: str, dry_run: bool = False) -> Loaded:
    """Compare `policy` with the active version and, unless a dry run, store it as the next
    version, not active."""
    current = await active(conn)
    changes = diff(current, policy.model_copy(update={"version": current.version}))
    if dry_run:
        return Loaded(None, changes)
    async with conn.transaction():
        await _lock(conn)
        version = int(await conn.fetchval("SELECT coalesce(max(version), 0) + 1 FROM policies"))
        await conn.execute(
            "INSERT INTO policies (version, document, loaded_by) VALUES ($1, $2, $3)",
            version,
            _document(policy, version),
            loaded_by,
        )
    return Loaded(version, changes)


async def activate(conn: Conn, version: int) -> Policy:
    """Make `version` the active policy (`UnknownVersion` if there is none by that number)."""
    async with conn.transaction():
        await _lock(conn)
        found = await get(conn, version)
        if found is None:
            raise UnknownVersion(version)
        # two statements: the one-active index is checked row by row, not per statement
        await conn.execute(
            "UPDATE policies SET active = false WHERE active AND version <> $1", version
        )
        await conn.execute("UPDATE policies SET active = true WHERE version = $1", version)
    return found


class PolicyCache:
    """The active policy for one replica, re-read at most every `ttl_s` seconds."""

    def __init__(self, *, ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        self._policy: Policy | None = None
        self._read_at = -math.inf
        self._versions: dict[int, Policy] = {}  # versions never change once stored

    async def current(self, conn: Conn) -> Policy:
        """The active policy as of at most `ttl_s` seconds ago (read on `conn` when stale: a
        caller inside a transaction never waits for a second connection)."""
        now = self._clock()
        if self._policy is None or now - self._read_at >= self.ttl_s:
            self._policy = await active(conn)
            self._read_at = now
        return self._policy

    async def version(self, conn: Conn, number: int) -> Policy:
        """Version `number` (what a pending approval started under); the active one when that
        version is unknown (a database restored without it)."""
        found = self._versions.get(number)
        if found is None:
            found = await get(conn, number)
            if found is None:
                return await self.current(conn)
            if len(self._versions) > 100:
                self._versions.clear()
            self._versions[number] = found
        return found
