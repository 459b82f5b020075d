"""The outbox relay's batches on the real broker: one partition each, every key's rows in order
in the partition `KeyPartitioner` gives it, each record as `producer.send` would have written
it; a row too large for any batch parked alone; a batch refused whole sent again row by row; a
passing failure in the middle of a pass costs a retry (at worst a duplicate), never an order."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.partitioner import murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from opentelemetry.trace import NoOpTracer

from shared import kafka, outbox
from shared.settings import Settings
from tests.conftest import shared_schema
from tests.support import read_topic

PARTITIONS = 4
# 4 KiB a row: a pass of 500 rows over 4 partitions fills two 256 KiB batches per partition
PAD = 4 * 1024


@contextlib.asynccontextmanager
async def _parts(broker: str, database: str) -> AsyncIterator[tuple[str, asyncpg.Pool, Any]]:
    """A topic of its own, an outbox in a schema of its own, and a started producer."""
    topic = f"relay-batches-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = kafka.build_producer(
        Settings(_env_file=None, kafka_bootstrap=broker), client_id="relay-batches-test"
    )
    await producer.start()
    try:
        async with shared_schema(database, "relay") as (_, pool):
            yield topic, pool, producer
    finally:
        await producer.stop()


def _relay(pool: asyncpg.Pool, publisher: outbox.Publisher) -> outbox.OutboxRelay:
    return outbox.OutboxRelay(pool=pool, publisher=publisher, tracer=NoOpTracer())


async def _enqueue(pool: asyncpg.Pool, topic: str, rows: list[tuple[str, int, int]]) -> None:
    """Outbox rows, in the order given: (key, n, padding bytes) each."""
    messages = [
        outbox.Message(
            topic,
            key,
            outbox.encode(
                "test.relay",
                source="test",
                subject=key,
                time="2025-01-01T00:00:00Z",
                data={"n": n, "pad": "x" * pad},
            ),
        )
        for key, n, pad in rows
    ]
    async with pool.acquire() as conn, conn.transaction():
        await outbox.enqueue(conn, messages)


def _interleaved(keys: int, count: int, pad: int = PAD) -> list[tuple[str, int, int]]:
    return [(f"key-{n % keys}", n, pad) for n in range(count)]


async def _drain(relay: outbox.OutboxRelay) -> None:
    """Pass after pass until a pass finds nothing to send."""
    while await relay.drain_once():
        pass


async def _outbox(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT * FROM outbox ORDER BY id")


def _n(value: bytes) -> int:
    return int(json.loads(value)["data"]["n"])


async def _by_key(broker: str, topic: str) -> dict[str, list[int]]:
    """Each key's `n`s in the order its partition holds them (a key lives in one partition)."""
    records = sorted(await read_topic(broker, topic), key=lambda r: (r.partition, r.offset))
    by_key: dict[str, list[int]] = {}
    for record in records:
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % PARTITIONS
        by_key.setdefault(record.key.decode(), []).append(_n(record.value))
    return by_key


def _expected(rows: list[tuple[str, int, int]]) -> dict[str, list[int]]:
    by_key: dict[str, list[int]] = {}
    for key, n, _ in rows:
        by_key.setdefault(key, []).append(n)
    return by_key


async def test_every_key_keeps_its_order_over_several_partitions_and_batches(
    broker: str, database: str
):
    async with _parts(broker, database) as (topic, pool, producer):
        rows = _interleaved(keys=24, count=600)
        await _enqueue(pool, topic, rows)
        publisher = _Counting(producer)
        started_ms = time.time() * 1000
        await _drain(_relay(pool, publisher))
        ended_ms = time.time() * 1000

        stored = await _outbox(pool)
        assert all(r["sent_at"] is not None and r["parked_at"] is None for r in stored)
        # several batches a partition in the first pass, several partitions
        assert len({p for p, _ in publisher.handed}) == PARTITIONS
        assert len(publisher.handed) > PARTITIONS + 1
        assert await _by_key(broker, topic) == _expected(rows)  # each once, in order

        # each record as `producer.send` writes it: the row's key, value and headers, now
        records = await read_topic(broker, topic)
        by_value = {bytes(r["value"]): r for r in stored}
        for record in records:
            row = by_value[record.value]
            assert record.key == bytes(row["key"])
            assert list(record.headers) == outbox.wire_headers(row["headers"])
            assert record.timestamp_type == 0  # the producer's time
            assert started_ms - 1 <= record.timestamp <= ended_ms + 1
        assert len(records) == len(stored)


async def test_a_row_too_large_for_any_batch_is_parked_alone_and_its_neighbours_go(
    broker: str, database: str
):
    async with _parts(broker, database) as (topic, pool, producer):
        rows = [
            ("k1", 1, 100),
            ("k2", 2, 100),
            ("k1", 3, 100),
            ("k1", 4, 2 * 1024 * 1024),  # more than a request
            ("k2", 5, 100),
            ("k1", 6, 100),
        ]
        await _enqueue(pool, topic, rows)
        await _drain(_relay(pool, kafka.BatchPublisher(producer)))

        stored = await _outbox(pool)
        assert [r["sent_at"] is not None for r in stored] == [True] * 3 + [False] + [True] * 2
        huge = stored[3]
        assert huge["parked_at"] is not None
        assert huge["park_reason"].startswith("MessageSizeTooLargeError: ")
        assert await _by_key(broker, topic) == {"k1": [1, 3, 6], "k2": [2, 5]}


async def test_a_record_is_too_large_exactly_when_producer_send_says_so(broker: str, database: str):
    async with _parts(broker, database) as (topic, _, producer):
        publisher = kafka.BatchPublisher(producer)
        headers = [("content-type", b"application/cloudevents+json")]
        overhead = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"k", b"", headers)
        # the value's length takes 3 bytes instead of 1: the record is a request's size exactly
        largest = b"x" * (kafka.MAX_REQUEST_BYTES - overhead - 2)
        assert DefaultRecordBatchBuilder.estimate_size_in_bytes(b"k", largest, headers) == (
            kafka.MAX_REQUEST_BYTES
        )
        assert publisher.append(publisher.batch(), b"k", largest, headers)  # alone in a batch
        with pytest.raises(MessageSizeTooLargeError):
            await producer.send(topic, largest + b"x", key=b"k", headers=headers)
        with pytest.raises(MessageSizeTooLargeError):
            publisher.append(publisher.batch(), b"k", largest + b"x", headers)


async def test_a_batch_refused_whole_for_good_is_sent_again_row_by_row(broker: str, database: str):
    """The broker refuses a batch for one row in it (too large for the topic, say): only that
    row is parked; the others go, in order."""
    async with _parts(broker, database) as (topic, pool, producer):
        rows = _interleaved(keys=3, count=12, pad=100)
        await _enqueue(pool, topic, rows)
        poison = rows[4][1]
        publisher = _Refusing(producer, poison)
        await _drain(_relay(pool, publisher))

        stored = await _outbox(pool)
        parked = [r for r in stored if r["parked_at"] is not None]
        assert [_n(r["value"]) for r in parked] == [poison]
        assert parked[0]["park_reason"].startswith("RecordListTooLargeError: ")
        assert all(r["sent_at"] is not None for r in stored if r["parked_at"] is None)
        expected = _expected([r for r in rows if r[1] != poison])
        assert await _by_key(broker, topic) == expected
        assert publisher.refused == 2  # its batch, then itself alone


@pytest.mark.parametrize("failure", ["refused", "ack lost", "hand-over"])
async def test_a_passing_failure_in_the_middle_of_a_pass_costs_a_retry_never_an_order(
    broker: str, database: str, failure: str
):
    """The second batch handed over fails for a passing reason: never written ("refused"),
    written but its acknowledgement lost ("ack lost"), or not taken at all ("hand-over").
    What was acknowledged is marked sent; the rest goes on the next pass, after it."""
    async with _parts(broker, database) as (topic, pool, producer):
        rows = _interleaved(keys=24, count=600)
        await _enqueue(pool, topic, rows)
        relay = _relay(pool, _FailingOnce(producer, failure, at=2))
        with pytest.raises(RuntimeError, match="not acknowledged"):
            await relay.drain_once()
        stored = await _outbox(pool)
        sent = sum(r["sent_at"] is not None for r in stored)
        assert 0 < sent < 500  # some went, not all that were claimed
        assert not any(r["parked_at"] for r in stored)

        await _drain(relay)  # the failure has passed
        stored = await _outbox(pool)
        assert all(r["sent_at"] is not None for r in stored)
        by_key = await _by_key(broker, topic)
        expected = _expected(rows)
        if failure != "ack lost":
            assert by_key == expected
        else:  # written twice, the second time after the first, in order: as a reader
            # that drops what it has seen (by event id) reads it, every key is in order
            assert {key: list(dict.fromkeys(ns)) for key, ns in by_key.items()} == expected
            assert sum(map(len, by_key.values())) > len(rows)


class _Counting(kafka.BatchPublisher):
    """The real publisher, noting the partition and record count of each batch handed over."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        super().__init__(producer)
        self.handed: list[tuple[int, int]] = []

    async def send(self, batch: Any, topic: str, partition: int) -> Awaitable[Any]:
        self.handed.append((partition, batch.record_count()))
        return await super().send(batch, topic, partition)


class _Refusing(kafka.BatchPublisher):
    """The real publisher, but the broker refuses any batch holding the row `poison` for good."""

    def __init__(self, producer: AIOKafkaProducer, poison: int) -> None:
        super().__init__(producer)
        self.poison = poison
        self.refused = 0
        self._holds_poison: set[int] = set()

    def append(self, batch: Any, key: bytes | None, value: bytes, headers: Any) -> bool:
        added = super().append(batch, key, value, headers)
        if added and _n(value) == self.poison:
            self._holds_poison.add(id(batch))
        return added

    async def send(self, batch: Any, topic: str, partition: int) -> Awaitable[Any]:
        if id(batch) in self._holds_poison:  # the broker's answer, the batch never written
            self._holds_poison.discard(id(batch))
            self.refused += 1
            return _failed(RecordListTooLargeError())
        return await super().send(batch, topic, partition)


class _FailingOnce(kafka.BatchPublisher):
    """The real publisher, but the `at`-th batch handed over fails as `failure` says, once."""

    def __init__(self, producer: AIOKafkaProducer, failure: str, *, at: int) -> None:
        super().__init__(producer)
        self.failure = failure
        self.at = at
        self.count = 0

    async def send(self, batch: Any, topic: str, partition: int) -> Awaitable[Any]:
        self.count += 1
        if self.count != self.at:
            return await super().send(batch, topic, partition)
        if self.failure == "hand-over":
            raise KafkaTimeoutError()
        if self.failure == "refused":
            return _failed(KafkaTimeoutError())
        ack = await super().send(batch, topic, partition)
        return _lost(ack)


async def _failed(exc: Exception) -> None:
    raise exc


async def _lost(ack: Awaitable[Any]) -> None:
    await ack
    raise KafkaTimeoutError()
