"""Token buckets as pure arithmetic: refill, grant, retry-after.

A caller (a channel key in intake, a staff member in resolution) may act `rate_per_s` times a
second on average and `burst` at once. The bucket is shared by every replica of the service (a
row in PostgreSQL, `quotas.take_tokens`, which runs the same arithmetic in SQL); each replica
draws a few tokens at a time and spends them locally (`quotas.Quotas`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A replica draws at most this long's worth of tokens at once (and at most a quarter of the
# burst): little enough that tokens held by idle replicas barely matter, enough that a busy
# caller costs one database round trip per chunk rather than per request.
CHUNK_S = 0.1


@dataclass(frozen=True)
class Limit:
    rate_per_s: float
    burst: int


@dataclass(frozen=True)
class Bucket:
    tokens: float
    at_s: float  # when `tokens` was counted (seconds on the one clock every replica shares)


def limit_for(
    rate_per_s: float | None, burst: int | None, *, default_rate: float, default_burst: int
) -> Limit:
    """A caller's limit: its own values, the defaults where it has none."""
    return Limit(
        rate_per_s=default_rate if rate_per_s is None else rate_per_s,
        burst=default_burst if burst is None else burst,
    )


def chunk(limit: Limit) -> int:
    """How many tokens a replica draws at once: a quarter of the burst or `CHUNK_S` worth of the
    rate, whichever is smaller, and at least one."""
    return max(1, min(limit.burst // 4, int(limit.rate_per_s * CHUNK_S)))


def refill(tokens: float, elapsed_s: float, limit: Limit) -> float:
    """What a bucket holding `tokens` holds `elapsed_s` later (never more than the burst; a
    clock that went backwards adds nothing)."""
    return min(float(limit.burst), tokens + limit.rate_per_s * max(0.0, elapsed_s))


def grant(tokens: float, want: int) -> tuple[int, float]:
    """The whole tokens handed out of a bucket holding `tokens` (at most `want`), and what is
    left in it."""
    granted = max(0, min(want, math.floor(tokens)))
    return granted, tokens - granted


def draw(bucket: Bucket | None, now_s: float, limit: Limit, want: int) -> tuple[int, Bucket]:
    """Take up to `want` tokens at `now_s` from `bucket` (None: a new one, full); what was
    granted and the bucket after."""
    if bucket is None:
        level, at_s = float(limit.burst), now_s
    else:
        level, at_s = refill(bucket.tokens, now_s - bucket.at_s, limit), max(bucket.at_s, now_s)
    granted, left = grant(level, want)
    return granted, Bucket(left, at_s)


def wait_s(left: float, limit: Limit) -> float:
    """Seconds until a bucket now holding `left` tokens holds a whole one again."""
    return max(0.0, (1.0 - left) / limit.rate_per_s)


def retry_after(wait: float) -> int:
    """A `Retry-After` value for a wait: whole seconds, rounded up, at least one."""
    return max(1, math.ceil(wait))
