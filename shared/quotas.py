"""Limits per caller across replicas: one token bucket per id in PostgreSQL (`quota_buckets`,
in every service's schema), drawn a chunk at a time and spent locally; `quota` is the
arithmetic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from shared import quota
from shared.db import Conn, Pool

# The level of a bucket row at the taking statement's time (`quota.refill` in SQL).
_LEVEL = """least($3::float8, b.tokens + $2::float8 * greatest(0::float8,
    extract(epoch FROM EXCLUDED.refilled_at - b.refilled_at)::float8))"""


async def take_tokens(
    conn: Conn,
    bucket_id: str,
    *,
    rate_per_s: float,
    burst: int,
    want: int,
    now: datetime | None = None,
) -> tuple[int, float]:
    """Draw up to `want` tokens from an id's shared bucket (`quota.draw`, in one statement);
    the tokens granted and those left. The clock is the database's (one for every replica);
    `now` overrides it for tests."""
    row = await conn.fetchrow(
        f"""INSERT INTO quota_buckets AS b (bucket_id, tokens, granted, refilled_at)
            SELECT $1, $3::float8 - n.granted, n.granted, n.at
            FROM (SELECT least($4::int, $3::int) AS granted,
                         coalesce($5::timestamptz, clock_timestamp()) AS at) AS n
            ON CONFLICT (bucket_id) DO UPDATE SET
                granted = least($4::int, floor({_LEVEL}))::int,
                tokens = {_LEVEL} - least($4::int, floor({_LEVEL})),
                refilled_at = greatest(b.refilled_at, EXCLUDED.refilled_at)
            RETURNING granted, tokens""",
        bucket_id,
        rate_per_s,
        burst,
        want,
        now,
    )
    assert row is not None
    return int(row["granted"]), float(row["tokens"])


async def forget(conn: Conn, bucket_id: str) -> None:
    """Drop an id's bucket (its caller is gone: a revoked key)."""
    await conn.execute("DELETE FROM quota_buckets WHERE bucket_id = $1", bucket_id)


@dataclass
class _Held:
    """This replica's share of one id's bucket."""

    tokens: int = 0
    empty_until: float = 0.0  # monotonic; the shared bucket holds no whole token before then
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Quotas:
    """Per-id limits across replicas: tokens are drawn from the id's shared bucket in the
    database a chunk at a time (`quota.chunk`) and spent here; one draw per id at a time."""

    def __init__(self, pool: Callable[[], Pool]) -> None:
        self._pool = pool  # called at a draw: the pool exists once the service has started
        self._held: dict[str, _Held] = {}

    async def spend(self, bucket_id: str, limit: quota.Limit) -> float | None:
        """Spend one of the id's tokens: None when there was one, else the seconds to wait.
        A draw runs on a connection of the pool, outside any transaction (the bucket's row is
        held for its one statement)."""
        held = self._held.get(bucket_id)
        if held is None:
            if len(self._held) > 10_000:
                self._held.clear()  # forgetting held tokens only errs on the strict side
            held = self._held[bucket_id] = _Held()
        if held.tokens > 0:
            held.tokens -= 1
            return None
        if (refused := held.empty_until - time.monotonic()) > 0:
            return refused
        async with held.lock:
            # another request may have drawn (or been refused) while this one waited
            if held.tokens > 0:
                held.tokens -= 1
                return None
            if (refused := held.empty_until - time.monotonic()) > 0:
                return refused
            async with self._pool().acquire() as conn:
                granted, left = await take_tokens(
                    conn,
                    bucket_id,
                    rate_per_s=limit.rate_per_s,
                    burst=limit.burst,
                    want=quota.chunk(limit),
                )
            if granted == 0:
                wait = quota.wait_s(left, limit)
                held.empty_until = time.monotonic() + wait
                return wait
            held.tokens = granted - 1
            return None
