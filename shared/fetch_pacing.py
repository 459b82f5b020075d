"""How long an idle consumer's fetches wait at the broker.

A consumer on a latency path fetches with a short wait (`COMPLAINTS_KAFKA_FETCH_MAX_WAIT_MS`,
10 ms by default) because the dev broker does not answer a waiting fetch when data arrives: it
answers when the wait is over, so the wait is the latency of every hop. The price is a fetch
every 10 ms per consumer even when nothing comes: measured on the dev broker, the three
services idle used half a core of the two, two thirds of it in the broker answering empty
fetches. A consumer that has had no record for a while (`IDLE_AFTER_S`) therefore waits longer
per fetch (`COMPLAINTS_KAFKA_IDLE_FETCH_WAIT_MS`); the first fetch that brings records puts it
back to the short wait. What that costs: on the dev broker, the first record after a quiet
spell may wait up to the idle wait on each idle hop. Apache Kafka answers a waiting fetch as
soon as data arrives, so there an idle consumer loses nothing, and a deployment's fetch wait
(500 ms in `deploy/complaints.env.example`) is already longer than the idle one, which then
changes nothing.

A consumer that passes over most of its topic unread is paced by the records it acts on
(`Pacing`'s `judged`): resolution skips its own events, which are most of the events topic
while staff act, and fetching them every 10 ms cost the broker and resolution about 5 % of
the CPU of a staff action (measured: `docs/performance.md`, eighth pass). Its price, on the dev
broker only: the first event it acts on after a quiet spell of such events waits up to two idle
waits.

aiokafka reads the fetcher's wait each time it builds a fetch request; `pace` sets it there,
after each fetch's answer. That is a private attribute of aiokafka's fetcher: if a release
renames it, `pace` says so once and the consumers keep their fixed wait.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# Nothing for this long and a consumer is idle.
IDLE_AFTER_S = 1.0


class Pacing:
    """The wait of a consumer's next fetch: `busy_ms` until no fetch has brought a record for
    `idle_after_s`, then `idle_ms` (never shorter than `busy_ms`) until one does.

    A `judged` consumer's records count only when it says they were of use (`acted`): one
    that passes over most of what its topic carries (resolution skips its own events) is idle
    while nothing it acts on comes, however busy the topic."""

    def __init__(
        self,
        busy_ms: int,
        idle_ms: int,
        *,
        idle_after_s: float = IDLE_AFTER_S,
        judged: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.busy_ms = busy_ms
        self.idle_ms = max(idle_ms, busy_ms)
        self._idle_after_s = idle_after_s
        self._judged = judged
        self._clock = clock
        self._last_records = clock()

    def after_fetch(self, got_records: bool) -> int:
        """The wait for the next fetch, given whether this one brought records."""
        now = self._clock()
        if got_records and not self._judged:
            self._last_records = now
            return self.busy_ms
        if now - self._last_records >= self._idle_after_s:
            return self.idle_ms
        return self.busy_ms

    def acted(self) -> None:
        """The consumer acted on records it fetched: it is busy."""
        self._last_records = self._clock()


@functools.cache
def _say_unpaced() -> None:
    """Log, once (it is cached), that this aiokafka's fetcher is not the one expected."""
    log.warning(
        "this aiokafka's fetcher is not the one expected: idle consumers keep their fixed "
        "fetch wait"
    )


def pace(
    consumer: Any, idle_ms: int, *, idle_after_s: float = IDLE_AFTER_S, judged: bool = False
) -> Pacing | None:
    """Make a started aiokafka consumer's fetches wait `idle_ms` once it is idle, and its own
    wait while records come (see `Pacing` for `judged`); its pacing, or None when its fetches
    are not paced (see the module's note)."""
    if consumer is None:
        return None
    fetcher: Any = getattr(consumer, "_fetcher", None)
    fetch = getattr(fetcher, "_proc_fetch_request", None)
    busy_ms = getattr(fetcher, "_fetch_max_wait_ms", None)
    if fetch is None or not isinstance(busy_ms, int):
        _say_unpaced()
        return None
    if idle_ms <= busy_ms:
        return None  # it waits that long already
    pacing = Pacing(busy_ms, idle_ms, idle_after_s=idle_after_s, judged=judged)

    async def paced_fetch(*args: Any, **kwargs: Any) -> Any:
        got = await fetch(*args, **kwargs)
        fetcher._fetch_max_wait_ms = pacing.after_fetch(bool(got))
        return got

    fetcher._proc_fetch_request = paced_fetch
    return pacing
