"""The typed event router on the real PostgreSQL: routes by type, validates data against the
route's model (a mismatch is refused naming the field), deduplicates by event id, and skips
or refuses types it has no route for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from shared import db
from shared.events import CaseEventData, EventType, FeedbackData, new_event
from shared.kafka import Record, Rejected
from shared.routing import AnyData, Delivery, EventRouter
from tests.conftest import shared_schema

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _record(type_: str, data: object) -> tuple[str, Record]:
    event = new_event(type=type_, source="test", data=data)  # type: ignore[arg-type]
    record = Record("t", 0, 0, None, event.to_bytes(), ())
    return event.id, record


@pytest.fixture
async def pool(database: str) -> AsyncIterator[db.Pool]:
    async with shared_schema(database, "router") as (_, pool):
        yield pool


def _router(seen: list[tuple[str, object]], *, strict: bool = False) -> EventRouter:
    router = EventRouter("test", strict=strict)

    @router.on(EventType.FEEDBACK_RECEIVED, model=FeedbackData)
    async def feedback(conn: db.Conn, data: FeedbackData, delivery: Delivery) -> None:
        seen.append((delivery.event.type, data.score))

    @router.on(EventType.CLOSED, EventType.REOPENED, model=CaseEventData)
    async def closed_or_reopened(conn: db.Conn, data: CaseEventData, delivery: Delivery) -> None:
        seen.append((delivery.event.type, data.complaint_id))

    return router


async def test_each_type_reaches_its_handler_with_typed_data_once(pool: db.Pool) -> None:
    seen: list[tuple[str, object]] = []
    router = _router(seen)
    _, feedback = _record(EventType.FEEDBACK_RECEIVED, {"complaint_id": "c-1", "score": 4})
    _, closed = _record(EventType.CLOSED, {"complaint_id": "c-2"})
    async with pool.acquire() as conn:
        for record in (feedback, closed, feedback):  # the third is a redelivery
            await router(conn, record, now=NOW)
    assert seen == [(EventType.FEEDBACK_RECEIVED, 4), (EventType.CLOSED, "c-2")]
    assert router.types == {EventType.FEEDBACK_RECEIVED, EventType.CLOSED, EventType.REOPENED}


async def test_data_that_does_not_match_the_model_is_refused_naming_the_field(
    pool: db.Pool,
) -> None:
    seen: list[tuple[str, object]] = []
    _, bad = _record(EventType.FEEDBACK_RECEIVED, {"complaint_id": "c-1", "score": 9})
    async with pool.acquire() as conn:
        with pytest.raises(Rejected) as refused:
            await _router(seen)(conn, bad, now=NOW)
        # refused before the inbox: nothing was recorded as handled
        assert await conn.fetchval("SELECT count(*) FROM inbox") == 0
    assert refused.value.code == "schema_violation"
    assert "data.score" in refused.value.reason
    assert seen == []


async def test_a_type_without_a_route_is_skipped_or_refused_on_a_strict_router(
    pool: db.Pool,
) -> None:
    seen: list[tuple[str, object]] = []
    _, other = _record(EventType.ACKNOWLEDGED, {"complaint_id": "c-1"})
    async with pool.acquire() as conn:
        await _router(seen)(conn, other, now=NOW)
        with pytest.raises(Rejected) as refused:
            await _router(seen, strict=True)(conn, other, now=NOW)
    assert seen == []
    assert refused.value.code == "unknown_type"


async def test_otherwise_takes_every_type_without_a_route_of_its_own(pool: db.Pool) -> None:
    seen: list[tuple[str, object]] = []
    router = _router(seen)

    @router.otherwise(model=AnyData)
    async def anything(conn: db.Conn, data: AnyData, delivery: Delivery) -> None:
        seen.append((delivery.event.type, data.root))

    _, other = _record(EventType.ACKNOWLEDGED, {"complaint_id": "c-1"})
    async with pool.acquire() as conn:
        await router(conn, other, now=NOW)
    assert seen == [(EventType.ACKNOWLEDGED, {"complaint_id": "c-1"})]
    assert router.types is None


def test_a_type_routed_twice_is_a_programming_error() -> None:
    router = _router([])
    with pytest.raises(ValueError, match="routed twice"):
        router.on(EventType.CLOSED, model=CaseEventData)(lambda *a: None)  # type: ignore[arg-type,return-value]
