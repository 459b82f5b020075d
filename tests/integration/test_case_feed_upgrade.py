"""Intake learns case changes from the internal cases feed; while upgrading from a version that
read them on `complaints.events.v1`, from both (the inbox drops the copies)."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from complaints import system
from services.intake.app import Intake
from shared import kafka, topics
from shared.events import CloudEvent, EventType, new_event
from shared.settings import Settings
from tests.conftest import SECRET, Running, isolated_parts
from tests.support import eventually, produce_submissions, submission


async def _commit(
    settings: Settings, group: str, topic: str, partition: int = 0, offset: int = 0
) -> None:
    """Commit `offset` for `group` on a partition of `topic`, as its consumer would."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(), group_id=group, enable_auto_commit=False
    )
    try:
        await consumer.start()
        where = TopicPartition(topic, partition)
        consumer.assign([where])
        await consumer.commit({where: offset})
    finally:
        await consumer.stop()


async def test_a_group_has_read_a_topic_once_it_committed_there(settings: Settings) -> None:
    group = f"upgrade-{uuid.uuid4().hex[:8]}"
    assert not await kafka.group_has_read(settings, group, topics.EVENTS)
    await _commit(settings, group, topics.CASES)
    assert not await kafka.group_has_read(settings, group, topics.EVENTS)
    assert await kafka.group_has_read(settings, group, topics.CASES)


async def test_a_new_installation_follows_the_feed_alone(running: Running) -> None:
    intake = running.services["intake"]
    assert isinstance(intake, Intake)
    assert await intake.case_topics() == (topics.CASES,)
    subscribed = [{t.name for t in s.topics} for s in intake.broker.subscribers]
    assert {topics.CASES} in subscribed
    assert not any(topics.EVENTS in names for names in subscribed)


async def test_the_setting_decides_over_what_the_group_read(settings: Settings) -> None:
    """Told to, intake follows the events topic though its group never read it; told not to,
    it does not though its group did."""
    on = Intake(settings.model_copy(update={"intake_follow_events_topic": True}), secret=SECRET)
    off = Intake(settings.model_copy(update={"intake_follow_events_topic": False}), secret=SECRET)
    try:
        for intake in (on, off):
            intake.group_id = f"upgrade-{uuid.uuid4().hex[:8]}"
        await _commit(settings, off.cases_group, topics.EVENTS)
        assert await on.case_topics() == (topics.CASES, topics.EVENTS)
        assert await off.case_topics() == (topics.CASES,)
    finally:
        for intake in (on, off):
            intake.tracer_provider.shutdown()


def _event(type_: str, complaint_id: str, **data: Any) -> CloudEvent:
    return new_event(
        type=type_,
        source="complaints/resolution",
        subject=complaint_id,
        data={"complaint_id": complaint_id, "actor": "amy", **data},
    )


async def test_an_upgraded_intake_reads_both_topics_and_applies_each_event_once(smtp) -> None:
    """An intake of the version before the feed read `complaints.events.v1` in its cases
    group: the new one sees that, follows both topics, applies what an older resolution
    published there alone, and applies an event on both topics once."""
    async with isolated_parts(smtp, services=("intake",)) as settings:
        producer = AIOKafkaProducer(**settings.kafka_client_options())
        await producer.start()
        # the old version read this one and committed past it: it is not read again
        applied = _event(EventType.REOPENED, "c-applied-before", reason="appeal")
        where = await producer.send_and_wait(topics.EVENTS, applied.to_bytes(), key=b"c-1")
        await _commit(
            settings, "complaints-intake-cases", topics.EVENTS, where.partition, where.offset + 1
        )
        intake = system.build_services(settings, ["intake"], secret=SECRET)[0]
        conn = await asyncpg.connect(settings.require_database_url())
        try:
            await intake.start()
            sent = submission("phone", category="service")
            await produce_submissions(settings.kafka_bootstrap, [sent])

            async def routed() -> str | None:
                found: str | None = await conn.fetchval(
                    "SELECT complaint_id FROM intake.complaints WHERE external_id = $1",
                    sent["external_id"],
                )
                return found

            complaint_id = await eventually(routed, what="the complaint routed")
            key = complaint_id.encode()
            # an older resolution: on the events topic only
            resolved = _event(EventType.RESOLVED, complaint_id, outcome="upheld").to_bytes()
            await producer.send_and_wait(topics.EVENTS, resolved, key=key)
            # a new one: the same event on both
            reopened = _event(EventType.REOPENED, complaint_id, reason="appeal").to_bytes()
            for topic in (topics.EVENTS, topics.CASES):
                await producer.send_and_wait(topic, reopened, key=key)
            # and one more on each, so that both copies are known to have been read
            rated = _event(EventType.FEEDBACK_RECEIVED, complaint_id, score=2).to_bytes()
            await producer.send_and_wait(topics.EVENTS, rated, key=key)
            acknowledged = _event(EventType.ACKNOWLEDGED, complaint_id).to_bytes()
            await producer.send_and_wait(topics.CASES, acknowledged, key=key)

            async def learnt() -> Any:
                return await conn.fetchrow(
                    """SELECT c.outcome, c.reopens, c.satisfaction, a.acknowledged
                       FROM intake.complaints c JOIN intake.assignments a USING (complaint_id)
                       WHERE complaint_id = $1 AND c.satisfaction IS NOT NULL
                         AND a.acknowledged""",
                    complaint_id,
                )

            row = await eventually(learnt, what="intake to read past every event")
            assert (row["outcome"], row["reopens"], row["satisfaction"]) == ("upheld", 1, 2)
            seen = await conn.fetchval(
                "SELECT count(*) FROM intake.inbox WHERE event_id = $1", applied.id
            )
            assert seen == 0  # it took up the events topic where the old version stopped
        finally:
            await producer.stop()
            await conn.close()
            await intake.stop()
