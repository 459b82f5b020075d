"""Staff actions' rate limit: each member may act `staff_action_rate` times a second with bursts
of `staff_action_burst`, over HTTP and the command topic together, across every resolution
replica (one bucket per member, `shared/quotas.py`), so a leaked token cannot flood cases."""

from __future__ import annotations

from collections.abc import Callable

from services.resolution.case import Refusal
from shared import quota, quotas
from shared.db import Pool
from shared.settings import Settings


class ActionLimit:
    """The members' buckets, as this replica spends them."""

    def __init__(self, settings: Settings, pool: Callable[[], Pool]) -> None:
        self.limit = quota.Limit(settings.staff_action_rate, settings.staff_action_burst)
        self._quotas = quotas.Quotas(pool)

    async def check(self, staff_id: str) -> Refusal | None:
        """None when the member may act now (one of their tokens is spent), else 429
        `rate_limited` saying when to retry. Call it holding no connection and outside any
        transaction: a draw takes a connection of the pool and holds the bucket's row only for
        its own statement."""
        wait = await self._quotas.spend(staff_id, self.limit)
        return None if wait is None else refusal(self.limit, wait)


def refusal(limit: quota.Limit, wait: float) -> Refusal:
    """The refusal of an action past the member's limit, `wait` seconds before the next."""
    seconds = quota.retry_after(wait)
    return Refusal(
        429,
        f"a staff member may act {limit.rate_per_s:g} times a second and {limit.burst} at "
        f"once; retry in {seconds} s",
        "rate_limited",
        retry_after=seconds,
    )
