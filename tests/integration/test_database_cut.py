"""The database cut from under the services during a burst: nothing lost, nothing doubled, no
valid record dead-lettered, nothing published twice, and one quiet log line per failure."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter

from aiokafka import AIOKafkaProducer

from shared import topics
from shared.events import EventType, new_event
from tests.conftest import Running
from tests.support import eventually, read_topic, submission


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def cut(running: Running) -> int:
    """Terminate every connection the services hold; how many there were."""
    rows = await running.sql(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'complaints-%'"
    )
    return int(rows[0]["n"])


async def test_connections_cut_during_a_burst_lose_and_double_nothing(running: Running):
    run = uuid.uuid4().hex[:8]
    docs = [submission("phone", external_id=f"cut-{run}-{n}") for n in range(600)]
    kept = Kept()
    logging.getLogger().addHandler(kept)
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        cuts = 0
        for n, doc in enumerate(docs):
            await producer.send(
                topics.SUBMITTED,
                new_event(type=EventType.SUBMITTED, source="phone/ivr", data=doc).to_bytes(),
                key=topics.submission_key("phone", doc["external_id"]).encode(),
            )
            if n % 150 == 75:
                await producer.flush()
                await asyncio.sleep(0.2)  # let the services be mid-batch
                cuts += await cut(running)
        await producer.flush()
    finally:
        await producer.stop()
    assert cuts > 0

    async def all_accepted() -> bool:
        rows = await running.sql(
            "SELECT count(*) AS n, count(DISTINCT external_id) AS d FROM intake.complaints "
            "WHERE external_id LIKE $1",
            f"cut-{run}-%",
        )
        assert rows[0]["n"] == rows[0]["d"]  # never twice
        return rows[0]["n"] == len(docs)

    try:
        await eventually(all_accepted, timeout_s=90, what="every complaint accepted")

        async def all_published() -> bool:
            rows = await running.sql(
                "SELECT count(*) AS n FROM intake.outbox WHERE sent_at IS NULL "
                "AND parked_at IS NULL"
            )
            return rows[0]["n"] == 0

        await eventually(all_published, timeout_s=60, what="the outbox drained")
    finally:
        logging.getLogger().removeHandler(kept)

    letters = await running.sql(
        "SELECT count(*) AS n FROM intake.deadletters "
        "WHERE position(convert_to($1, 'UTF8') IN coalesce(key, '')) > 0",
        f"cut-{run}",
    )
    assert letters[0]["n"] == 0  # the database being away is nobody's fault
    received = Counter(
        json.loads(r.value)["data"]["external_id"]
        for r in await read_topic(running.settings.kafka_bootstrap, topics.EVENTS, timeout_s=10)
        if b'"complaint.received"' in r.value and f"cut-{run}-".encode() in r.value
    )
    assert len(received) == len(docs)
    assert max(received.values()) == 1, "an event was published twice"
    # one line per failure, and no traceback for a transient one
    assert all(r.exc_info is None for r in kept.records), [r.getMessage() for r in kept.records]
    assert len(kept.records) <= 20 * cuts, [r.getMessage() for r in kept.records][:20]
