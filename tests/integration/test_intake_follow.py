"""Intake follows what resolution says of its cases in batches: each case's events in their
order, several cases of one member at once, a redelivered event changing nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.intake import handlers, repository
from shared import db, migrate
from shared.events import CloudEvent, EventType, SubmittedData, new_event
from tests.conftest import shared_schema

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


async def _member(conn: db.Conn, staff_id: str) -> None:
    await repository.add_staff(
        conn,
        staff_id=staff_id,
        name=staff_id,
        team="customer-care",
        role="agent",
        languages=["en"],
        capacity=10,
        available=True,
    )


async def test_a_batch_applies_each_cases_events_in_order(pool: db.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await _member(conn, "amy")
        accepted = await handlers.accept_many(
            conn,
            [
                handlers.Submission(
                    SubmittedData.model_validate(
                        {
                            "external_id": f"web-{n}",
                            "channel": "web",
                            "category": "service",
                            "description": "Late.",
                            "customer": {"id": "c-1", "name": "C", "email": "c@example.com"},
                        }
                    ),
                    "web/test",
                    {},
                )
                for n in range(4)
            ],
            now=NOW,
        )
        a, b, c, d = (complaint_id for complaint_id, _ in accepted)
        await _member(conn, "bob")  # after the cases went to amy
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


def _submission(n: int) -> handlers.Submission:
    return handlers.Submission(
        SubmittedData.model_validate(
            {
                "external_id": f"web-lock-{n}",
                "channel": "web",
                "category": "service",
                "description": "Late.",
                "customer": {"id": f"c-{n}", "name": "C", "email": "c@example.com"},
            }
        ),
        "web/test",
        {},
    )


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
        await _member(conn, "amy")
        accepted = await handlers.accept_many(conn, [_submission(1), _submission(2)], now=NOW)
        x, y = (complaint_id for complaint_id, _ in accepted)
        await _member(conn, "cat")
        moved = _event(EventType.ASSIGNED, y, from_assignee="amy", to_assignee="cat")
        await handlers.follow_cases(conn, [moved], NOW)
    batch = [
        _event(EventType.ACKNOWLEDGED, x),  # round 1: no load changes
        _event(EventType.CLOSED, y),  # round 1: cat's load
        _event(EventType.CLOSED, x),  # round 2: amy's load
    ]
    async with pool.acquire() as submissions, pool.acquire() as follower:
        async with submissions.transaction():
            await submissions.execute("SET LOCAL lock_timeout = '3s'")
            await submissions.execute("SELECT FROM staff WHERE staff_id = 'amy' FOR UPDATE")

            async def follow() -> None:
                async with follower.transaction():
                    await handlers.follow_cases(follower, batch, NOW)

            following = asyncio.create_task(follow())
            await _waiting_on_a_lock(submissions, follower.get_server_pid())
            # the rest of the team, as `lock_teams` goes on: cat must be free
            await submissions.execute("SELECT FROM staff WHERE staff_id = 'cat' FOR UPDATE")
        await following
        loads = dict(await follower.fetch("SELECT staff_id, open_load FROM staff"))
    assert loads == {"amy": 0, "cat": 0}
