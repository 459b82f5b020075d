"""Idle consumers fetch less often, on the real broker, and still take the first record."""

from __future__ import annotations

import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.resolution.case_model import Kind
from services.resolution.handlers import OWN
from shared import fetch_pacing, kafka, topics
from shared.events import EventType
from shared.settings import Settings
from tests.conftest import Running
from tests.support import eventually


async def test_an_idle_consumer_waits_longer_and_still_takes_the_first_record(
    settings: Settings,
) -> None:
    topic = f"test.pacing.{uuid.uuid4().hex[:8]}"
    await kafka.ensure_topics(settings, [topic])
    consumer = AIOKafkaConsumer(
        topic,
        **settings.kafka_client_options(),
        group_id=f"pacing-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    producer = AIOKafkaProducer(**settings.kafka_client_options())
    await consumer.start()
    await producer.start()
    try:
        fetcher = consumer._fetcher
        # a second with no record and the wait is long; checked within a second of a record
        assert fetch_pacing.pace(consumer, 300, idle_after_s=1.0) is not None

        async def waits(ms: int) -> bool:
            await consumer.getmany(timeout_ms=50)
            return bool(fetcher._fetch_max_wait_ms == ms)

        await eventually(lambda: waits(300), timeout_s=20, what="the idle wait")
        await producer.send_and_wait(topic, b"first after a quiet spell")
        taken: list[bytes] = []

        waits_after: list[int] = []

        async def take() -> bool:
            batches = await consumer.getmany(timeout_ms=100)
            taken.extend(r.value for rs in batches.values() for r in rs)
            if taken:
                waits_after.append(fetcher._fetch_max_wait_ms)
            return bool(taken)

        await eventually(take, timeout_s=20, what="the record")
        assert taken == [b"first after a quiet spell"]
        assert waits_after == [10]  # busy again: the short wait
    finally:
        await producer.stop()
        await consumer.stop()


async def test_the_services_pace_their_latency_consumers(running: Running) -> None:
    """Resolution's command consumer (idle unless a console speaks Kafka) settles on the idle
    wait; a follower keeps its own, longer one."""
    resolution = running.services["resolution"]
    waits = {
        subscriber.topics[0].name: subscriber.consumer._fetcher
        for subscriber in resolution.broker.subscribers
    }
    idle_ms = running.settings.kafka_idle_fetch_wait_ms
    assert running.settings.kafka_fetch_max_wait_ms < idle_ms
    await eventually(
        lambda: waits[topics.COMMANDS]._fetch_max_wait_ms == idle_ms,
        timeout_s=20,
        what="the command consumer's idle wait",
    )
    assert waits[topics.STAFF]._fetch_max_wait_ms == running.settings.kafka_follower_fetch_wait_ms


async def test_resolutions_event_consumer_is_paced_by_what_it_acts_on(running: Running) -> None:
    """Resolution's event consumer is judged: a batch of its own events (passed over by their
    header) leaves it idle; one it acts on brings the short wait back."""
    resolution = running.services["resolution"]
    [events] = [s for s in resolution.broker.subscribers if s.topics[0].name == topics.EVENTS]
    pacing = resolution._judged[events.group_id]
    assert pacing is not None
    fetcher = events.consumer._fetcher
    idle_ms = running.settings.kafka_idle_fetch_wait_ms

    def record(type_: str) -> kafka.Record:
        headers = (("event-type", type_.encode()),)
        return kafka.Record(
            topic=topics.EVENTS, partition=0, offset=0, key=None, value=b"{}", headers=headers
        )

    pacing._last_records -= 60  # as if nothing it acts on had come for a minute
    own = [record(EventType.ACKNOWLEDGED), record(Kind.DEADLINES_SET)]
    assert resolution._acted_on(events.group_id, own, None, OWN) == []
    assert pacing.after_fetch(True) == idle_ms  # fetched, passed over: still idle
    await eventually(lambda: fetcher._fetch_max_wait_ms == idle_ms, what="the idle wait")
    routed = [record(EventType.ROUTED)]
    assert resolution._acted_on(events.group_id, routed, None, OWN) == routed
    await eventually(
        lambda: fetcher._fetch_max_wait_ms == running.settings.kafka_fetch_max_wait_ms,
        what="the short wait",
    )
