"""Intake under pressure: racing duplicates from two doors, and a long stream with poison in it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections import Counter, defaultdict

from aiokafka import AIOKafkaProducer

from shared import topics
from shared.events import EventType, new_event
from tests.conftest import Running
from tests.support import eventually, read_topic, submission


async def _producer(running: Running) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=running.settings.kafka_bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=2 * 1024 * 1024,
    )
    await producer.start()
    return producer


async def test_hundred_duplicates_half_http_half_kafka_make_one_complaint(running: Running):
    key = await running.channel_key("phone")
    data = submission("phone")
    event = new_event(type=EventType.SUBMITTED, source="phone/ivr", data=data).to_bytes()
    record_key = topics.submission_key("phone", data["external_id"]).encode()
    producer = await _producer(running)
    try:
        kafka_sends = [producer.send(topics.SUBMITTED, event, key=record_key) for _ in range(50)]
        posts = [
            running.http.post(
                "/v1/complaints", json=data, headers={"Authorization": f"Bearer {key}"}
            )
            for _ in range(50)
        ]
        results = await asyncio.gather(*posts, *kafka_sends)
        await asyncio.gather(*results[50:])
    finally:
        await producer.stop()
    answers = results[:50]
    assert {a.status_code for a in answers} == {202}
    ids = {a.json()["complaint_id"] for a in answers}
    assert len(ids) == 1
    complaint_id = ids.pop()

    async def consumed_all() -> bool:
        # every Kafka copy has been read once the group's committed offsets pass them
        rows = await running.sql(
            "SELECT count(*) AS n FROM notify.stream_events WHERE complaint_id = $1 AND type = $2",
            complaint_id,
            "complaint.routed",
        )
        return rows[0]["n"] == 1

    await eventually(consumed_all, what="the complaint to be routed")
    await asyncio.sleep(2)  # let the remaining Kafka copies be consumed
    rows = await running.sql(
        "SELECT count(*) AS n FROM intake.complaints WHERE channel = 'phone' AND external_id = $1",
        data["external_id"],
    )
    assert rows[0]["n"] == 1
    received = [
        r
        for r in await read_topic(running.settings.kafka_bootstrap, topics.EVENTS)
        if r.key == complaint_id.encode() and json.loads(r.value)["type"] == "complaint.received"
    ]
    assert len(received) == 1


KINDS = (
    "not_json",
    "not_cloudevent",
    "unknown_type",
    "schema_violation",
    "oversized",
    "unknown_channel",
)


def _bad(kind: str, n: int) -> bytes:
    data = submission("phone")
    if kind == "not_json":
        return b"\x00\x01 garbage " + str(n).encode()
    if kind == "not_cloudevent":
        return json.dumps({"hello": n, "data": data}).encode()
    if kind == "unknown_type":
        return new_event(type="complaint.closed", source="phone/ivr", data=data).to_bytes()
    if kind == "schema_violation":
        del data["description"]
    elif kind == "oversized":
        data["description"] = "x" * 9000
        data["desired_outcome"] = "y" * 2000
        data["order_id"] = "z" * 100
        return new_event(
            type=EventType.SUBMITTED, source="phone/ivr", data={**data, "padding": "p" * 270_000}
        ).to_bytes()
    elif kind == "unknown_channel":
        data["channel"] = "fax"
    return new_event(type=EventType.SUBMITTED, source="phone/ivr", data=data).to_bytes()


async def test_thousand_records_with_ten_percent_of_each_malformed_kind(running: Running):
    run = uuid.uuid4().hex[:6]
    keys = [f"phone:stream-{run}-k{k}".encode() for k in range(10)]
    plan: list[tuple[bytes, bytes, str | None]] = []  # (key, value, expected reason or None)
    good_sent: dict[bytes, list[str]] = defaultdict(list)
    for n in range(1000):
        key = keys[n % 10]
        slot = n % 10
        if slot < len(KINDS):
            kind = KINDS[(n // 10 + slot) % len(KINDS)]
            plan.append((key, _bad(kind, n), kind))
        else:
            data = submission("phone", external_id=f"stream-{run}-{n:04d}")
            plan.append(
                (
                    key,
                    new_event(type=EventType.SUBMITTED, source="phone/ivr", data=data).to_bytes(),
                    None,
                )
            )
            good_sent[key].append(data["external_id"])
    assert Counter(kind for _, _, kind in plan if kind) == {kind: 100 for kind in KINDS}

    producer = await _producer(running)
    try:
        sends = [await producer.send(topics.SUBMITTED, value, key=key) for key, value, _ in plan]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    async def all_good_accepted():
        rows = await running.sql(
            "SELECT count(*) AS n FROM intake.complaints WHERE external_id LIKE $1",
            f"stream-{run}-%",
        )
        return rows[0]["n"] == 400

    await eventually(all_good_accepted, timeout_s=120, what="400 good records accepted")

    # processing order per key: intake wrote each complaint.received in the order it handled them
    rows = await running.sql(
        "SELECT value FROM intake.outbox WHERE topic = $1 ORDER BY id", topics.EVENTS
    )
    by_key: dict[bytes, list[str]] = defaultdict(list)
    for row in rows:
        event = json.loads(bytes(row["value"]))
        external = event["data"].get("external_id", "")
        if event["type"] == "complaint.received" and external.startswith(f"stream-{run}-"):
            by_key[keys[int(external.rsplit("-", 1)[1]) % 10]].append(external)
    assert by_key == good_sent

    async def dead_letters():
        found = [
            json.loads(r.value)["data"]
            for r in await read_topic(running.settings.kafka_bootstrap, topics.DEADLETTER)
            if r.key in keys
        ]
        return found if len(found) >= 600 else None

    letters = await eventually(dead_letters, timeout_s=60, what="600 dead letters")
    assert Counter(letter["reason_code"] for letter in letters) == {kind: 100 for kind in KINDS}
    # each bad record is on the dead-letter topic with its own reason: its first bytes, its
    # full length and sha256 (an oversized one is cut there) ...
    expected = Counter(
        (hashlib.sha256(value).hexdigest(), len(value), kind) for _, value, kind in plan if kind
    )
    seen = Counter(
        (letter["value_sha256"], letter["value_length"], letter["reason_code"])
        for letter in letters
    )
    assert seen == expected
    for letter in letters:
        preview = base64.b64decode(letter["value_base64"])
        assert len(preview) == min(letter["value_length"], 64 * 1024)
        assert letter["value_truncated"] is (letter["value_length"] > 64 * 1024)
    # ... and whole, byte for byte, in intake's own table
    kept = await running.sql(
        "SELECT value, reason_code FROM intake.deadletters WHERE key = ANY($1::bytea[])", keys
    )
    assert Counter((bytes(r["value"]), r["reason_code"]) for r in kept) == Counter(
        (value, kind) for _, value, kind in plan if kind
    )
