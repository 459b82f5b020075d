"""The relay loop: a wake-up that arrives while it is draining is not lost."""

from __future__ import annotations

import asyncio
import time

from opentelemetry.trace import NoOpTracer

from shared.outbox import OutboxRelay


class ScriptedRelay(OutboxRelay):
    """A relay whose drains are timed instead of reading a database."""

    def __init__(self) -> None:
        super().__init__(pool=None, send=None, tracer=NoOpTracer(), poll_interval_s=5.0)  # type: ignore[arg-type]
        self.drains: list[float] = []

    async def drain_once(self) -> int:
        self.drains.append(time.monotonic())
        if len(self.drains) == 1:
            await asyncio.sleep(0.05)
            self.wake()  # a commit lands while the first drain is still publishing
        if len(self.drains) == 2:
            self.stop()
        return 0


async def test_a_wake_during_a_drain_starts_the_next_drain_at_once():
    relay = ScriptedRelay()
    await asyncio.wait_for(relay.run(), timeout=2)  # the poll interval is 5 s
    assert len(relay.drains) == 2
    assert relay.drains[1] - relay.drains[0] < 0.5
