"""A batch whose set-based apply fails is redone record by record: the good records land once,
the poison one is dead-lettered with `processing_error`, nothing is half-applied."""

from __future__ import annotations

import json

from opentelemetry import trace

from shared import db, kafka
from shared.kafka import Record, Rejected
from tests.conftest import shared_schema


class Poison(Exception):
    """What a bug in `apply` looks like to the consumer: not transient, not a rejection."""


def _record(offset: int, value: bytes) -> Record:
    return Record(topic="t.v1", partition=3, offset=offset, key=b"k", value=value, headers=())


def _parse(record: Record) -> str:
    text = (record.value or b"").decode()
    if text == "unreadable":
        raise Rejected("not_json", "the value is not JSON")
    return text


async def _apply(conn: db.Conn, items: list[tuple[str, dict[str, str]]]) -> None:
    await conn.execute(
        "INSERT INTO applied (value) SELECT unnest($1::text[])", [v for v, _ in items]
    )
    if any(v == "poison" for v, _ in items):
        raise Poison("the apply step failed")  # after writing: the writes must be undone


async def test_a_failing_batch_is_redone_one_by_one_and_only_the_poison_is_deadlettered(
    database: str,
):
    async with shared_schema(database, "fallback") as (_, pool):
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE applied (value text PRIMARY KEY)")
        records = [
            _record(10, b"one"),
            _record(11, b"poison"),
            _record(12, b"unreadable"),
            _record(13, b"two"),
        ]

        await kafka.process_batch_together(
            pool=pool,
            tracer=trace.get_tracer("test"),
            consumer=kafka.Consumer("fallback-test"),
            records=records,
            parse=_parse,
            apply=_apply,
        )

        async with pool.acquire() as conn:
            applied = [r["value"] for r in await conn.fetch("SELECT value FROM applied ORDER BY 1")]
            letters = [
                json.loads(r["value"])["data"]
                for r in await conn.fetch("SELECT value FROM outbox ORDER BY id")
            ]
        assert applied == ["one", "two"]  # each once: the failed set-based attempt rolled back
        assert sorted((d["offset"], d["reason_code"]) for d in letters) == [
            (11, "processing_error"),
            (12, "not_json"),
        ]
        assert all(d["consumer"] == "fallback-test" for d in letters)
