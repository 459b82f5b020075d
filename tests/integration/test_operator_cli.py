"""An operator reads what was refused and sends it again: `complaints deadletters` and
`complaints outbox`, against the real database and broker."""

from __future__ import annotations

import base64
import json
import uuid

from aiokafka import AIOKafkaProducer

from shared import outbox, topics
from shared.events import new_event
from tests.conftest import Running
from tests.support import complaints_cli, eventually


async def complaints(running: Running, *args: str) -> tuple[int, bytes, bytes]:
    return await complaints_cli(running.settings, *args)


async def test_a_dead_letter_is_listed_shown_whole_and_replayed_byte_for_byte(running: Running):
    key = f"phone:cli-{uuid.uuid4().hex[:8]}".encode()
    value = b"not json \xff at all"
    headers = [("traceparent", b"garbage\xff"), ("x-kept", b"\x00\x01")]
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topics.SUBMITTED, value, key=key, headers=headers)
    finally:
        await producer.stop()

    async def kept(n: int):
        rows = await running.sql(
            'SELECT id, "offset", replayed_at FROM intake.deadletters WHERE key = $1 '
            'ORDER BY "offset"',
            key,
        )
        return rows if len(rows) >= n else None

    (first,) = await eventually(lambda: kept(1), what="the dead letter")

    code, out, _ = await complaints(running, "deadletters", "list", "--service", "intake", "--json")
    assert code == 0
    listed = {row["id"]: row for row in json.loads(out)}
    assert listed[first["id"]]["reason_code"] == "not_json"
    assert "value" not in listed[first["id"]]  # a listing never shows contents

    code, out, _ = await complaints(running, "deadletters", "show", first["id"])
    assert code == 0
    shown = json.loads(out)
    assert base64.b64decode(shown["value_base64"]) == value
    assert base64.b64decode(shown["key_base64"]) == key
    assert [(h["name"], base64.b64decode(h["value_base64"])) for h in shown["headers"]] == headers

    code, out, _ = await complaints(running, "deadletters", "show", first["id"], "--raw")
    assert (code, out) == (0, value)

    code, _, err = await complaints(running, "deadletters", "replay", first["id"])
    assert code == 0, err
    # the same bytes came back on the topic and were refused again, at a later offset
    again = await eventually(lambda: kept(2), what="the replayed record's dead letter")
    assert again[0]["replayed_at"] is not None and again[1]["offset"] > again[0]["offset"]

    code, _, err = await complaints(running, "deadletters", "show", "no-such-letter")
    assert code == 1 and b"no dead letter" in err


async def test_a_parked_row_is_listed_and_released(running: Running):
    intake = running.services["intake"]
    huge = new_event(type="test.huge", source="test", data={"x": "y" * (3 * 1024 * 1024)})
    async with intake.pool.acquire() as conn, conn.transaction():
        await outbox.enqueue(conn, [outbox.Message(topics.EVENTS, "cli-parked", huge)])
    intake.relay.wake()

    async def parked():
        rows = await running.sql(
            "SELECT id FROM intake.outbox WHERE event_id = $1 AND parked_at IS NOT NULL", huge.id
        )
        return rows or None

    (row,) = await eventually(parked, what="the row parked")
    code, out, _ = await complaints(running, "outbox", "list", "--json")
    assert code == 0
    (listed,) = [r for r in json.loads(out) if r["id"] == row["id"] and r["service"] == "intake"]
    assert listed["type"] == "test.huge" and "MessageSizeTooLarge" in listed["park_reason"]

    code, _, _ = await complaints(
        running, "outbox", "release", str(row["id"]), "--service", "intake"
    )
    assert code == 0
    # the broker still refuses it: parked again, not stuck in a loop, and the rest flows
    await eventually(parked, what="the row parked again")
    await running.sql("DELETE FROM intake.outbox WHERE event_id = $1", huge.id)
