"""Checking the decision log (`case_events`) against itself and against the published events.

A row is read as the event its `data` describes (`Event.from_data`), so the hash covers what
the services and the outside world read. Its columns must agree with that data (a column
edited alone would show staff one thing and the chain another). The heads published on
`complaints.events.v1` (each decision event's `chain.hash`) are grouped by complaint, so a case
whose rows were all deleted is found too: its published heads name entries that are gone.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from services.resolution.audit import Broken, verify
from services.resolution.case_model import Event
from services.resolution.clocks import rfc3339
from shared import jsonsafe
from shared.db import Conn
from shared.settings import Settings

Heads = dict[str, dict[str, str]]  # complaint id -> event id -> hash its event carried


class Unreadable(Exception):
    """The topic could not be read to its end in time."""


async def case_ids(conn: Conn) -> list[str]:
    """Every complaint with entries in the decision log."""
    rows = await conn.fetch("SELECT DISTINCT complaint_id FROM case_events ORDER BY 1")
    return [r["complaint_id"] for r in rows]


async def entries(conn: Conn, complaint_id: str) -> list[Any]:
    """One case's decision-log rows, in order."""
    return list(
        await conn.fetch(
            """SELECT seq, event_id, type, at, actor, data, prev_hash, hash
               FROM case_events WHERE complaint_id = $1 ORDER BY seq""",
            complaint_id,
        )
    )


def check(rows: Sequence[Mapping[str, Any]], heads: Mapping[str, str]) -> Broken | None:
    """The first broken entry of one case's rows (in order), given its published heads."""
    chain: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        try:
            entry = Event.from_data(row["type"], row["data"], row["event_id"]).audit_entry()
            seq = int(row["data"]["chain"]["seq"])
        except (KeyError, TypeError, ValueError) as exc:
            return Broken(index, row["event_id"], f"entry unreadable: {exc!r}")
        stored = (row["seq"], rfc3339(row["at"]), row["actor"], row["prev_hash"], row["hash"])
        if stored != (seq, entry["at"], entry["actor"], entry["prev_hash"], entry["hash"]):
            return Broken(index, row["event_id"], "columns differ from the entry's data")
        chain.append(entry)
    return verify(chain, heads)


def heads_in(values: Iterable[bytes | None]) -> Heads:
    """The chain heads carried by the decision events among these record values."""
    heads: Heads = defaultdict(dict)
    for value in values:
        try:
            # whatever else a hostile producer put on the topic (a document nested 10,000
            # levels deep, say) is passed over like any other record that is not a decision
            event = jsonsafe.loads(value or b"")
            data = event["data"]
            complaint_id, head = data["complaint_id"], data["chain"]["hash"]
        except (jsonsafe.JsonRejected, TypeError, KeyError):
            continue  # not a decision event
        if isinstance(complaint_id, str) and isinstance(head, str):
            heads[complaint_id][str(event.get("id"))] = head
    return dict(heads)


async def published_heads(settings: Settings, topic: str, *, timeout_s: float = 60.0) -> Heads:
    """The heads on `topic` from its beginning to its end as of now (no consumer group);
    `Unreadable` after `timeout_s`."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(), enable_auto_commit=False, client_id="complaints-audit"
    )
    try:
        await consumer.start()  # (one that cannot reach the broker is stopped all the same)
        await consumer.topics()  # metadata for every topic
        parts = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not parts:
            raise Unreadable(f"the broker has no topic {topic}")
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        return heads_in(await _read_to(consumer, await consumer.end_offsets(parts), timeout_s))
    finally:
        await consumer.stop()


async def _read_to(
    consumer: AIOKafkaConsumer, ends: Mapping[TopicPartition, int], timeout_s: float
) -> list[bytes | None]:
    values: list[bytes | None] = []
    deadline = time.monotonic() + timeout_s
    left = {tp for tp in ends if await consumer.position(tp) < ends[tp]}
    while left:
        if time.monotonic() > deadline:
            raise Unreadable(f"could not read the topic to its end within {timeout_s:g} s")
        batch = await consumer.getmany(*left, timeout_ms=500)
        for tp, records in batch.items():
            values.extend(r.value for r in records if r.offset < ends[tp])
        left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
    return values
