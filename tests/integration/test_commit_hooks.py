"""Wake-ups after commit: a worker asked for in a transaction is woken once the outermost
transaction commits, never on a rollback, never before the commit."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import pytest

from shared import db


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
