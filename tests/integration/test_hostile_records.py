"""Hostile records never lose, stall or block anything: each one is handled on its own, the good
records around it go through, and a fresh complaint is routed right after (issue 8, 1-3)."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from shared import outbox, topics
from shared.events import EventType, new_event
from tests.conftest import Running
from tests.support import eventually, read_topic, submission

DEEP = (
    b'{"specversion":"1.0","id":"x","source":"s","type":"complaint.submitted","data":'
    + (b"[" * 10_000 + b"]" * 10_000)
    + b"}"
)


def submitted(data: dict[str, Any]) -> bytes:
    return new_event(type=EventType.SUBMITTED, source="phone/ivr-eu-1", data=data).to_bytes()


async def produce(
    running: Running,
    topic: str,
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
    *,
    partition: int | None = None,
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=running.settings.kafka_bootstrap,
        acks="all",
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(
                topic, value, key=key, headers=headers, partition=partition
            )
    finally:
        await producer.stop()


async def accepted(running: Running, *external_ids: str) -> dict[str, str]:
    """The complaint id of each external id intake accepted (all of them, or wait)."""

    async def probe() -> dict[str, str] | None:
        rows = await running.sql(
            "SELECT external_id, complaint_id::text AS id FROM intake.complaints "
            "WHERE external_id = ANY($1::text[])",
            list(external_ids),
        )
        found = {r["external_id"]: r["id"] for r in rows}
        return found if len(found) == len(external_ids) else None

    return await eventually(probe, timeout_s=30, what=f"{len(external_ids)} accepted")


async def routed(running: Running, complaint_id: str) -> None:
    """Resolution has the case and notify kept its events: the events topic is not stuck."""

    async def probe() -> bool:
        case = await running.sql(
            "SELECT 1 FROM resolution.cases WHERE complaint_id::text = $1", complaint_id
        )
        stream = await running.sql(
            "SELECT 1 FROM notify.stream_events WHERE complaint_id = $1 "
            "AND type = 'complaint.routed'",
            complaint_id,
        )
        return bool(case and stream)

    await eventually(probe, timeout_s=30, what=f"{complaint_id} routed downstream")


async def letters(running: Running, schema: str, key: bytes | None, n: int) -> list[Any]:
    async def probe() -> list[Any] | None:
        rows = await running.sql(
            f"SELECT * FROM {schema}.deadletters WHERE key IS NOT DISTINCT FROM $1 "
            'ORDER BY "offset"',
            key,
        )
        return rows if len(rows) >= n else None

    return await eventually(probe, timeout_s=30, what=f"{n} dead letters in {schema}")


async def fresh_complaint_is_routed(running: Running) -> None:
    data = submission("web")
    answer = await running.http.post(
        "/v1/complaints", json=data, headers={"Authorization": f"Bearer {running.web_key}"}
    )
    assert answer.status_code == 202
    await routed(running, answer.json()["complaint_id"])


async def test_an_undecodable_traceparent_loses_nothing(running: Running):
    """Finding 1: a header that is not UTF-8 once skipped the whole fetched batch."""
    before, hostile, after = (submission("phone") for _ in range(3))
    key = f"phone:hostile-{uuid.uuid4().hex[:8]}".encode()  # one key: one partition, in order
    await produce(
        running,
        topics.SUBMITTED,
        [
            (key, submitted(before), []),
            (key, submitted(hostile), [("traceparent", b"garbage\xff"), ("x-odd", b"\x00\xfe")]),
            (key, submitted(after), []),
        ],
    )

    ids = await accepted(
        running, before["external_id"], hostile["external_id"], after["external_id"]
    )
    for complaint_id in ids.values():
        await routed(running, complaint_id)
    await fresh_complaint_is_routed(running)


async def test_a_deep_document_is_dead_lettered_not_looped(running: Running):
    """Finding 2: 10,000 levels of nesting once looped the consumer forever."""
    before, after = submission("phone"), submission("phone")
    key = f"phone:deep-{uuid.uuid4().hex[:8]}".encode()
    await produce(
        running,
        topics.SUBMITTED,
        [(key, submitted(before), []), (key, DEEP, []), (key, submitted(after), [])],
    )

    await accepted(running, before["external_id"], after["external_id"])
    (letter,) = await letters(running, "intake", key, 1)
    assert letter["reason_code"] == "too_deep"
    assert bytes(letter["value"]) == DEEP
    await fresh_complaint_is_routed(running)


async def test_a_deep_event_stalls_no_consumer_of_the_events_topic(running: Running):
    """Finding 2 on `complaints.events.v1`: resolution and notify each dead-letter it, and go
    on with the events behind it; so does intake's follower on the internal cases feed."""
    key = f"poison-{uuid.uuid4().hex[:8]}".encode()
    await produce(running, topics.EVENTS, [(key, DEEP, [])])
    await produce(running, topics.CASES, [(key, DEEP, [])])

    for schema, topic in (
        ("resolution", topics.EVENTS),
        ("notify", topics.EVENTS),
        ("intake", topics.CASES),
    ):
        (letter,) = await letters(running, schema, key, 1)
        assert letter["reason_code"] == "too_deep"
        assert letter["topic"] == topic
    await fresh_complaint_is_routed(running)


async def test_an_oversized_record_is_kept_whole_and_announced_capped(running: Running):
    """Finding 3: a 2 MB record's dead letter once outgrew the broker's limit and blocked the
    relay for good, re-sending the events queued ahead of it on every try."""
    before, after = submission("phone"), submission("phone")
    big = b'{"padding": "' + b"p" * (2 * 1024 * 1024) + b'"}'
    key = f"phone:big-{uuid.uuid4().hex[:8]}".encode()
    await produce(
        running,
        topics.SUBMITTED,
        [(key, submitted(before), []), (key, big, []), (key, submitted(after), [])],
    )

    ids = await accepted(running, before["external_id"], after["external_id"])
    (kept,) = await letters(running, "intake", key, 1)
    assert kept["reason_code"] == "oversized"
    assert bytes(kept["value"]) == big  # the full original stays in PostgreSQL

    async def announced() -> dict[str, Any] | None:
        rows = await running.sql(
            "SELECT value, sent_at FROM intake.outbox WHERE event_id = $1", kept["id"]
        )
        return json.loads(bytes(rows[0]["value"]))["data"] if rows and rows[0]["sent_at"] else None

    letter = await eventually(announced, what="the capped dead letter published")
    assert letter["value_length"] == len(big)
    assert letter["value_sha256"] == hashlib.sha256(big).hexdigest()
    assert letter["value_truncated"] is True
    assert len(letter["value_base64"]) < 100 * 1024

    for complaint_id in ids.values():
        await routed(running, complaint_id)
    # nothing queued ahead of it was published twice
    received = [
        r
        for r in await read_topic(running.settings.kafka_bootstrap, topics.EVENTS)
        if r.key == ids[before["external_id"]].encode()
        and json.loads(r.value)["type"] == "complaint.received"
    ]
    assert len(received) == 1
    await fresh_complaint_is_routed(running)


async def test_a_row_the_broker_refuses_is_parked_and_the_rows_behind_it_go_out(
    running: Running,
):
    """The outbox never blocks on one row: parked, reported in the health detail, skipped."""
    intake = running.services["intake"]
    huge = new_event(type="test.huge", source="test", data={"x": "y" * (3 * 1024 * 1024)})
    small = new_event(type="test.small", source="test", data={"x": "y"})
    async with intake.pool.acquire() as conn, conn.transaction():
        await outbox.enqueue(
            conn,
            [
                outbox.Message(topics.EVENTS, "parked-test", huge),
                outbox.Message(topics.EVENTS, "parked-test", small),
            ],
        )
    intake.relay.wake()

    async def settled() -> list[Any] | None:
        rows = await running.sql(
            "SELECT event_id, sent_at, parked_at, park_reason FROM intake.outbox "
            "WHERE event_id = ANY($1::text[]) ORDER BY id",
            [huge.id, small.id],
        )
        return rows if rows[0]["parked_at"] and rows[1]["sent_at"] else None

    first, _small = await eventually(settled, what="the huge row parked, the small one sent")
    assert first["sent_at"] is None
    assert "MessageSizeTooLarge" in first["park_reason"]
    # shown in the readiness detail, without taking the service out of rotation
    ready = await running.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"
    outbox_state = ready.json()["detail"]["intake"]["outbox"]
    assert outbox_state["status"] == "parked" and outbox_state["parked"] >= 1
    # clean up, so later tests see a healthy relay
    await running.sql("DELETE FROM intake.outbox WHERE event_id = $1", huge.id)
    await fresh_complaint_is_routed(running)
