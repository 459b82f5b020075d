"""Wake-ups after commit: a worker asked for in a transaction is woken once the outermost
transaction commits, never on a rollback, never before the commit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shared import db, outbox, timers
from tests.conftest import shared_schema


async def test_a_worker_is_woken_after_the_outer_commit_only(database: str) -> None:
    woken: list[str] = []
    wakers = {"outbox": lambda: woken.append("outbox"), "timers": lambda: woken.append("timers")}
    pool = await db.create_pool(database, schema="public", application="test-hooks", wakers=wakers)
    try:
        async with pool.acquire() as conn:
            async with conn.transaction():
                db.wake_after_commit(conn, "outbox")
                async with conn.transaction():  # a savepoint commits nothing yet
                    db.wake_after_commit(conn, "timers")
                assert woken == []
            assert sorted(woken) == ["outbox", "timers"]
            woken.clear()

            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    db.wake_after_commit(conn, "outbox")
                    raise RuntimeError("rolled back")
            async with conn.transaction():
                db.wake_after_commit(conn, "nobody")  # a name without a worker: ignored
            assert woken == []  # the rolled-back request did not survive into later work
    finally:
        await pool.close()


async def test_workers_registered_after_the_pool_is_made_are_woken(database: str) -> None:
    # a service makes its pool first and registers its workers (which need the pool) after
    wakers: dict[str, Callable[[], None]] = {}
    woken: list[str] = []
    pool = await db.create_pool(database, schema="public", application="test-hooks", wakers=wakers)
    try:
        wakers["outbox"] = lambda: woken.append("outbox")
        async with pool.acquire() as conn, conn.transaction():
            db.wake_after_commit(conn, "outbox")
        assert woken == ["outbox"]
    finally:
        await pool.close()


async def test_a_connection_without_hooks_ignores_the_request(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        async with conn.transaction():
            db.wake_after_commit(conn, "outbox")  # a plain connection: nothing to wake, no error
    finally:
        await conn.close()


async def test_writes_joined_in_one_statement_land_together_and_wake_their_workers(
    database: str,
) -> None:
    # a decision's outbox rows and clocks go in one statement (`db.joined`); their commit
    # wakes the relay and the timer worker, a rollback neither, and neither write may be
    # taken outside a transaction (nothing would wake its worker after it ran)
    async with shared_schema(database, "joined") as (schema, _):
        woken: list[str] = []
        wakers = {w: functools.partial(woken.append, w) for w in (outbox.WORKER, timers.WORKER)}
        pool = await db.create_pool(database, schema=schema, application="test", wakers=wakers)
        message = outbox.Message(
            "t", "k", outbox.encode("e.t", source="s", subject=None, time="t", data={})
        )
        due = datetime.now(UTC) + timedelta(hours=1)
        try:
            async with pool.acquire() as conn:
                with pytest.raises(RuntimeError):
                    outbox.enqueued(conn, [message])
                with pytest.raises(RuntimeError):
                    timers.changes(conn, cancel=[], arm=[("k1", due, "tick", None)])
                with pytest.raises(RuntimeError, match="rolled back"):
                    async with conn.transaction():
                        await db.joined([outbox.enqueued(conn, [message])]).run(conn)
                        raise RuntimeError("rolled back")
                assert woken == []
                async with conn.transaction():
                    arm = timers.changes(conn, cancel=[], arm=[("k1", due, "tick", None)])
                    await db.joined([outbox.enqueued(conn, [message]), *arm]).run(conn)
                    assert woken == []
                assert sorted(woken) == [outbox.WORKER, timers.WORKER]
                assert await conn.fetchval("SELECT count(*) FROM outbox") == 1
                assert await conn.fetchval("SELECT count(*) FROM timers WHERE key = 'k1'") == 1
        finally:
            await pool.close()
