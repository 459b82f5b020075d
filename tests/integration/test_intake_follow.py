"""Intake follows what resolution says of its cases in batches: each case's events in their
order, several cases of one member at once, a redelivered event changing nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.intake import admin as intake_admin
from services.intake import handlers
from shared import db, migrate, outbox, topics
from shared.events import CloudEvent, EventType, SubmittedData, new_event
from tests.conftest import shared_schema
from tests.support import add_agent

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[db.Pool]:
    migrations = migrate.for_service("services.intake.migrations")
    async with shared_schema(database, "intakefollow", migrations) as (_name, pool):
        yield pool


def _event(type_: str, complaint_id: str, **data: Any) -> tuple[handlers.CaseEvent, dict[str, str]]:
    event = new_event(
        type=type_,
        source="complaints/resolution",
        data={"complaint_id": complaint_id, "actor": "amy", **data},
    )
    return (event, handlers.FOLLOWED[type_].model_validate(event.data)), {}


def _other(type_: str, complaint_id: str) -> tuple[handlers.CaseEvent, dict[str, str]]:
    event: CloudEvent = new_event(
        type=type_, source="complaints/resolution", data={"complaint_id": complaint_id}
    )
    return (event, None), {}


def _submission(external_id: str, customer_id: str) -> handlers.Submission:
    return handlers.Submission(
        SubmittedData.model_validate(
            {
                "external_id": external_id,
                "channel": "web",
                "category": "service",
                "description": "Late.",
                "customer": {"id": customer_id, "name": "C", "email": "c@example.com"},
            }
        ),
        "web/test",
        {},
    )


async def test_a_batch_applies_each_cases_events_in_order(pool: db.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await add_agent(conn, "amy")
        accepted = await handlers.accept_many(
            conn, [_submission(f"web-{n}", "c-1") for n in range(4)], now=NOW
        )
        a, b, c, d = (complaint_id for complaint_id, _ in accepted)
        await add_agent(conn, "bob")  # after the cases went to amy
        weights = {
            r["complaint_id"]: r["weight"]
            for r in await conn.fetch("SELECT complaint_id, weight, staff_id FROM assignments")
        }
        load = await conn.fetchval("SELECT open_load FROM staff WHERE staff_id = 'amy'")
        assert load == sum(weights.values())

        resolved_b = _event(
            EventType.RESOLVED,
            b,
            outcome="upheld",
            remedy={"type": "refund", "amount": {"amount": "90.00", "currency": "EUR"}},
        )
        at = (NOW + timedelta(hours=1)).isoformat()
        reopened_a = _event(EventType.REOPENED, a, at=at)
        batch = [
            # d: closed, given to bob, reopened: in this order bob takes its load, amy none
            _event(EventType.CLOSED, d),
            _event(EventType.ASSIGNED, d, from_assignee="amy", to_assignee="bob"),
            _event(EventType.REOPENED, d, at=(NOW + timedelta(hours=2)).isoformat()),
            _event(EventType.CLOSED, a),
            resolved_b,  # a second case of amy's closing in the same round
            _other(EventType.REMEDY_PROPOSED, c),  # not followed: passed over
            _event(EventType.ACKNOWLEDGED, c),
            reopened_a,  # a's second event: after its close
            _event(EventType.FEEDBACK_RECEIVED, c, score=4),
            reopened_a,  # a repeat within the batch changes nothing
            _event(EventType.CLOSED, a),  # a's third: closed again
        ]
        await handlers.follow_cases(conn, batch, NOW)
        await handlers.follow_cases(conn, [reopened_a], NOW)  # redelivered: nothing

        loads = dict(await conn.fetch("SELECT staff_id, open_load FROM staff"))
        assert loads == {"amy": weights[c], "bob": weights[d]}
        rows = {
            r["complaint_id"]: r
            for r in await conn.fetch(
                "SELECT c.complaint_id, open, acknowledged, outcome, remedy_amount::text,"
                " remedy_currency, satisfaction, reopens, last_reopened_at"
                " FROM complaints c JOIN assignments USING (complaint_id)"
            )
        }
        assert [rows[x]["open"] for x in (a, b, c, d)] == [False, False, True, True]
        assert [rows[x]["acknowledged"] for x in (a, b, c, d)] == [False, False, True, False]
        assert (rows[b]["outcome"], rows[b]["remedy_amount"], rows[b]["remedy_currency"]) == (
            "upheld",
            "90.00",
            "EUR",
        )
        assert rows[c]["satisfaction"] == 4 and rows[a]["satisfaction"] is None
        assert (rows[a]["reopens"], rows[a]["last_reopened_at"]) == (1, NOW + timedelta(hours=1))
        assert rows[b]["reopens"] == 0
        assert (rows[d]["reopens"], rows[d]["last_reopened_at"]) == (1, NOW + timedelta(hours=2))


async def _waiting_on_a_lock(conn: db.Conn, pid: int) -> None:
    for _ in range(200):
        waiting = await conn.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the follower never waited for the member the submissions hold")


async def test_the_follower_locks_members_in_the_order_submissions_do(pool: db.Pool) -> None:
    # a batch of submissions locks a team's members in id order (amy, then cat); a follower
    # batch whose first round frees cat's load and second amy's must not take cat first
    # and then wait for amy while the submissions wait for cat (a deadlock)
    async with pool.acquire() as conn, conn.transaction():
        await add_agent(conn, "amy")
        submissions = [_submission(f"web-lock-{n}", f"c-{n}") for n in (1, 2)]
        accepted = await handlers.accept_many(conn, submissions, now=NOW)
        x, y = (complaint_id for complaint_id, _ in accepted)
        await add_agent(conn, "cat")
        moved = _event(EventType.ASSIGNED, y, from_assignee="amy", to_assignee="cat")
        await handlers.follow_cases(conn, [moved], NOW)
        # amy's row after cat's in the table: locks taken in the table's order would be wrong
        await conn.execute("UPDATE staff SET name = name WHERE staff_id = 'amy'")
    batch = [
        _event(EventType.ACKNOWLEDGED, x),  # round 1: no load changes
        _event(EventType.CLOSED, y),  # round 1: cat's load
        _event(EventType.CLOSED, x),  # round 2: amy's load
    ]
    async with pool.acquire() as follower:

        async def follow() -> None:
            async with follower.transaction():
                await handlers.follow_cases(follower, batch, NOW)

        await _beside_a_team_lock(pool, follower, follow)
        loads = dict(await follower.fetch("SELECT staff_id, open_load FROM staff"))
    assert loads == {"amy": 0, "cat": 0}


async def _beside_a_team_lock(
    pool: db.Pool, other: db.Conn, work: Callable[[], Awaitable[object]]
) -> None:
    """Run `work` (on `other`) while a batch of submissions locks the team amy and cat are in,
    as `lock_teams` does (amy, then cat), caught between the two: `work` must wait for amy
    holding neither, or the batch waits for cat while `work` waits for amy (a deadlock)."""
    async with pool.acquire() as submissions, submissions.transaction():
        await submissions.execute("SET LOCAL lock_timeout = '3s'")
        await submissions.execute("SELECT FROM staff WHERE staff_id = 'amy' FOR UPDATE")
        working = asyncio.create_task(work())
        await _waiting_on_a_lock(submissions, other.get_server_pid())
        await submissions.execute("SELECT FROM staff WHERE staff_id = 'cat' FOR UPDATE")
    await working


async def test_a_member_made_unavailable_locks_the_team_before_their_own_row(
    pool: db.Pool,
) -> None:
    # making cat unavailable moves cat's unacknowledged case to amy; it locked cat's row
    # first and the team (amy, cat) only when reassigning: a batch of submissions holding amy
    # and waiting for cat deadlocked with it
    async with pool.acquire() as conn, conn.transaction():
        await add_agent(conn, "cat")
        await handlers.accept_many(conn, [_submission("web-lock-3", "c-3")], now=NOW)
        await add_agent(conn, "amy")
    async with pool.acquire() as admin_conn:

        async def unavailable() -> list[str]:
            async with admin_conn.transaction():
                return await intake_admin.change_staff(admin_conn, "cat", available=False)

        await _beside_a_team_lock(pool, admin_conn, unavailable)
        holders = await admin_conn.fetch("SELECT staff_id FROM assignments")
    assert [r["staff_id"] for r in holders] == ["amy"]


async def test_the_outbox_copies_case_changes_to_the_internal_feed(pool: db.Pool) -> None:
    """Each event of the case feed's types is written twice, the copy for `topics.CASES`
    right after it with the same id, key, bytes and trace; other events once."""

    def message(type_: str, trace: dict[str, str] | None = None) -> outbox.Message:
        data = {"complaint_id": "c-1", "actor": "amy", "at": "2026-12-02T10:00:00Z"}
        return outbox.complaint_event(
            type_, source="complaints/test", complaint_id="c-1", data=data, at=NOW, trace=trace
        )

    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    messages = [
        message(EventType.RECEIVED),
        message(EventType.RESOLVED, trace),
        message(EventType.SLA_WARNING),
        message(EventType.CLOSED),
    ]
    async with pool.acquire() as conn:
        await outbox.enqueue(conn, messages)
        rows = await conn.fetch(
            "SELECT event_id, topic, key, value, headers FROM outbox "
            "WHERE event_id = ANY($1::text[]) ORDER BY id",
            [m.event.id for m in messages],
        )
    received, resolved, warning, closed = (m.event.id for m in messages)
    assert [(r["event_id"], r["topic"]) for r in rows] == [
        (received, topics.EVENTS),
        (resolved, topics.EVENTS),
        (resolved, topics.CASES),
        (warning, topics.EVENTS),
        (closed, topics.EVENTS),
        (closed, topics.CASES),
    ]
    for original, copy in ((rows[1], rows[2]), (rows[4], rows[5])):
        assert [original[k] for k in ("key", "value", "headers")] == [
            copy[k] for k in ("key", "value", "headers")
        ]
    assert rows[2]["headers"]["traceparent"] == trace["traceparent"]
