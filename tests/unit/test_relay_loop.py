"""The relay loop: a wake-up that arrives while it is draining is not lost."""

from __future__ import annotations

import asyncio
import time

from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
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


class FakeProducer:
    """Answers each send as scripted: an ack, a failure of the future, or a raise at once."""

    def __init__(self, script: dict[int, object]) -> None:
        self.script = script
        self.sent: list[int] = []

    async def send(self, topic, value, key, headers):
        n = int(value)
        self.sent.append(n)
        outcome = self.script.get(n, "ack")
        if outcome == "raise":
            raise KafkaTimeoutError()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result("ok")
        return future


def _rows(*keys: str) -> list[dict]:
    return [
        {"id": n, "topic": "t", "key": k.encode(), "value": str(n).encode(), "headers": {}}
        for n, k in enumerate(keys, start=1)
    ]


async def test_each_row_has_its_own_outcome_and_one_stream_never_reorders():
    producer = FakeProducer({1: KafkaTimeoutError(), 4: MessageSizeTooLargeError()})
    relay = OutboxRelay(pool=None, send=producer.send, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "a", "b", "b", "b"))  # type: ignore[arg-type]
    by_id = {o.row_id: o for o in outcomes}
    assert not by_id[1].sent and by_id[1].park_reason is None  # a passing failure: try again
    assert not by_id[2].sent  # acknowledged, but after a failed row of its stream: again, after
    assert by_id[3].sent  # another stream goes on
    assert by_id[4].park_reason and "MessageSizeTooLargeError" in by_id[4].park_reason
    assert by_id[5].sent  # parked rows do not hold their stream back


async def test_a_send_that_raises_stops_the_pass_but_keeps_what_was_acknowledged():
    producer = FakeProducer({3: "raise"})
    relay = OutboxRelay(pool=None, send=producer.send, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "b", "c", "d"))  # type: ignore[arg-type]
    assert [o.sent for o in outcomes] == [True, True, False, False]
    assert producer.sent == [1, 2, 3]  # nothing handed over after the failure
