"""Resolution takes a batch of events at once (services/resolution/handlers.py): what each
event does must be what it did alone, in the batch's order, once. On the real PostgreSQL, with
records as the consumer hands them over."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from complaints.samples import submission
from services.resolution import handlers
from services.resolution.policy import Policy, default_policy
from services.resolution.states import States
from shared import db, migrate, topics
from shared.events import (
    Category,
    Channel,
    Deadlines,
    EventType,
    ReassignedData,
    ReceivedData,
    RoutedData,
    Severity,
    SubmittedData,
    new_event,
)
from shared.kafka import Record
from tests.conftest import shared_schema

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[db.Pool]:
    migrations = migrate.for_service("services.resolution.migrations")
    async with shared_schema(database, "resbatch", migrations) as (_name, pool):
        yield pool


async def _policy(_conn: db.Conn, _version: int | None = None) -> Policy:
    return default_policy()


def _record(type_: str, data: Any, *, offset: int, header: bool = True) -> Record:
    event = new_event(type=type_, source="test", data=data, subject=data.complaint_id)
    headers = (("event-type", type_.encode()),) if header else ()
    key = data.complaint_id.encode()
    return Record(topics.EVENTS, 0, offset, key, event.to_bytes(), headers)


def _received(complaint_id: str, customer: str) -> ReceivedData:
    data = SubmittedData.model_validate(submission("phone"))
    data.customer.id = customer
    return ReceivedData(complaint_id=complaint_id, received_at=NOW, **data.model_dump())


def _routed(complaint_id: str, team: str) -> RoutedData:
    return RoutedData(
        complaint_id=complaint_id,
        routed_at=NOW,
        received_at=NOW,
        channel=Channel.PHONE,
        external_id=f"ext-{complaint_id}",
        category=Category.SERVICE,
        category_reason="test",
        severity=Severity.MEDIUM,
        severity_reasons=[],
        team=team,
        assignee="agent-1",
        language="nl",
        deadlines=Deadlines(
            acknowledge_by=NOW + timedelta(hours=4), resolve_by=NOW + timedelta(days=2)
        ),
    )


async def _apply(pool: db.Pool, records: list[Record]) -> None:
    apply = handlers.batch_handler(_policy, States())
    async with pool.acquire() as conn, conn.transaction():
        await apply(conn, [(handlers.parse_record(r), {}) for r in records], NOW)


async def _counts(pool: db.Pool) -> dict[str, int]:
    async with pool.acquire() as conn:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("case_events", "outbox", "timeline", "timers", "inbox")
        }


async def test_a_batch_does_what_each_event_did_alone_in_order_and_once(pool: db.Pool) -> None:
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    opened = new_event(type="complaint.case_opened", source="resolution", data={}, subject=a)
    records = [
        # a routing before its receipt in one batch: the case still gets the customer
        _record(EventType.ROUTED, _routed(a, "customer-care"), offset=1),
        _record(EventType.RECEIVED, _received(a, "cust-a"), offset=2),
        # routed twice: the first routing opens the case, the second changes nothing
        _record(EventType.ROUTED, _routed(a, "billing"), offset=3),
        _record(EventType.RECEIVED, _received(b, "cust-b"), offset=4),
        _record(EventType.ROUTED, _routed(b, "customer-care"), offset=5),
        # decided alone, after the case it moves was opened by the records before it
        _record(
            EventType.REASSIGNED,
            ReassignedData(
                complaint_id=b,
                team="customer-care",
                from_assignee="agent-1",
                to_assignee="agent-2",
                reason="claimed",
                at=NOW,
            ),
            offset=6,
        ),
        # resolution's own decision, arriving without its type header: passed over once read
        Record(topics.EVENTS, 0, 7, a.encode(), opened.to_bytes(), ()),
    ]
    await _apply(pool, records)
    async with pool.acquire() as conn:
        cases = {
            r["complaint_id"]: r
            for r in await conn.fetch(
                "SELECT complaint_id, team, assignee, customer_id, version FROM cases"
            )
        }
        own_noted = await conn.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", opened.id)
    assert cases[a]["team"] == "customer-care" and cases[a]["customer_id"] == "cust-a"
    assert cases[a]["version"] > 0
    assert cases[b]["assignee"] == "agent-2" and cases[b]["customer_id"] == "cust-b"
    assert own_noted == 0
    before = await _counts(pool)
    await _apply(pool, records)  # redelivered: nothing changes
    assert await _counts(pool) == before
