"""Durable timers on the real PostgreSQL: scheduling rules, exactly-once firing across workers
and a SIGKILLed process, and a failing handler retried with back-off without holding others."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from bench.timer_worker import EFFECTS_DDL
from shared import db, timers
from shared.timers import Timer, TimerWorker
from tests.conftest import shared_schema

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Schema:
    dsn: str
    name: str
    pool: db.Pool

    async def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        async with self.pool.acquire() as conn:
            return await conn.fetch(query, *args)

    async def now(self) -> datetime:
        async with self.pool.acquire() as conn:
            value: datetime = await conn.fetchval("SELECT clock_timestamp()")
            return value

    async def schedule(self, keys: list[str], due: list[datetime], kind: str = "tick") -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for key, at in zip(keys, due, strict=True):
                await timers.schedule(conn, key, at, kind, {"n": key})


@pytest.fixture
async def schema(database: str) -> AsyncIterator[Schema]:
    async with shared_schema(database, "timers") as (name, pool):
        async with pool.acquire() as conn:
            await conn.execute(EFFECTS_DDL)
        yield Schema(database, name, pool)


async def _record_effect(conn: db.Conn, timer: Timer, now: datetime) -> None:
    await conn.execute("INSERT INTO timer_effects (key, worker) VALUES ($1, 0)", timer.key)


@contextlib.asynccontextmanager
async def _running(worker: TimerWorker) -> AsyncIterator[TimerWorker]:
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=10)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def _effects(schema: Schema) -> dict[str, int]:
    rows = await schema.sql("SELECT key, count(*) AS n FROM timer_effects GROUP BY key")
    return {r["key"]: r["n"] for r in rows}


async def test_schedule_moves_a_pending_timer_but_rearms_a_fired_one_only_when_asked(
    schema: Schema,
):
    soon = await schema.now() + timedelta(hours=1)
    later = soon + timedelta(hours=1)
    async with schema.pool.acquire() as conn:
        assert await timers.schedule(conn, "case:1:resolve_by", soon, "tick", {"v": 1})
        assert await timers.schedule(conn, "case:1:resolve_by", later, "tick", {"v": 2})
        row = await timers.state(conn, "case:1:resolve_by")
        assert row is not None
        assert (row["due_at"], row["run_at"], row["payload"]) == (later, later, {"v": 2})

        await conn.execute("UPDATE timers SET fired_at = now() WHERE key = 'case:1:resolve_by'")
        assert not await timers.schedule(conn, "case:1:resolve_by", soon, "tick", {"v": 3})
        row = await timers.state(conn, "case:1:resolve_by")
        assert row is not None and row["due_at"] == later and row["fired_at"] is not None

        assert await timers.schedule(conn, "case:1:resolve_by", soon, "tick", {"v": 4}, rearm=True)
        row = await timers.state(conn, "case:1:resolve_by")
        assert row is not None
        assert (row["due_at"], row["fired_at"], row["payload"]) == (soon, None, {"v": 4})


async def test_schedule_many_and_cancel_many_follow_the_single_rules(schema: Schema):
    soon = await schema.now() + timedelta(hours=1)
    later = soon + timedelta(hours=1)
    async with schema.pool.acquire() as conn:
        await timers.schedule_many(
            conn, [("m:a", soon, "tick", {"n": "a"}), ("m:b", soon, "tick", None)]
        )
        await conn.execute("UPDATE timers SET fired_at = now() WHERE key = 'm:b'")
        # moving both: the pending one moves, the fired one stays as it is
        await timers.schedule_many(
            conn, [("m:a", later, "tick", {"n": 1}), ("m:b", later, "tick", {})]
        )
        a, b = await timers.state(conn, "m:a"), await timers.state(conn, "m:b")
        assert a is not None and (a["due_at"], a["payload"]) == (later, {"n": 1})
        assert b is not None and b["due_at"] == soon and b["fired_at"] is not None
        await timers.cancel_many(conn, ["m:a", "m:b", "m:none"])
        a, b = await timers.state(conn, "m:a"), await timers.state(conn, "m:b")
        assert a is not None and a["cancelled_at"] is not None
        assert b is not None and b["cancelled_at"] is None  # fired: not cancellable


async def test_cancel_is_idempotent_and_a_cancelled_timer_is_armed_again_by_schedule(
    schema: Schema,
):
    at = await schema.now() + timedelta(hours=1)
    async with schema.pool.acquire() as conn:
        assert not await timers.cancel(conn, "never-scheduled")
        await timers.schedule(conn, "case:2:ack_by", at, "tick")
        assert await timers.cancel(conn, "case:2:ack_by")
        assert not await timers.cancel(conn, "case:2:ack_by")
        row = await timers.state(conn, "case:2:ack_by")
        assert row is not None and row["cancelled_at"] is not None

        assert await timers.schedule(conn, "case:2:ack_by", at + timedelta(minutes=5), "tick")
        row = await timers.state(conn, "case:2:ack_by")
        assert row is not None and row["cancelled_at"] is None
        assert row["due_at"] == at + timedelta(minutes=5)

        with pytest.raises(ValueError, match="timezone"):
            await timers.schedule(conn, "naive", datetime(2030, 1, 1), "tick")


async def test_schedule_and_cancel_take_effect_with_the_callers_transaction_only(schema: Schema):
    at = await schema.now() + timedelta(hours=1)
    async with schema.pool.acquire() as conn:
        with contextlib.suppress(RuntimeError):
            async with conn.transaction():
                await timers.schedule(conn, "rolled-back", at, "tick")
                raise RuntimeError("the caller's transaction fails")
        assert await timers.state(conn, "rolled-back") is None


async def test_a_due_timer_fires_once_with_its_handlers_writes_and_cancelled_ones_never(
    schema: Schema,
):
    now = await schema.now()
    await schema.schedule(["a", "b", "moved"], [now, now, now])
    async with schema.pool.acquire() as conn:
        await timers.cancel(conn, "b")
        await timers.schedule(conn, "moved", now + timedelta(hours=1), "tick")
    seen: list[tuple[str, datetime]] = []

    async def handler(conn: db.Conn, timer: Timer, at: datetime) -> None:
        seen.append((timer.key, at))
        await _record_effect(conn, timer, at)

    worker = TimerWorker(schema.pool, {"tick": handler}, max_wait_s=0.2)
    async with _running(worker):
        await _until(lambda: _has_effects(schema, 1))
        soon = await schema.now() + timedelta(milliseconds=300)
        await schema.schedule(["c"], [soon])
        worker.wake()
        await _until(lambda: _has_effects(schema, 2))
        await asyncio.sleep(0.5)

    assert await _effects(schema) == {"a": 1, "c": 1}
    assert [k for k, _ in seen] == ["a", "c"]
    rows = {r["key"]: r for r in await schema.sql("SELECT * FROM timers")}
    assert rows["a"]["fired_at"] is not None and rows["c"]["fired_at"] >= soon
    assert rows["b"]["fired_at"] is None and rows["moved"]["fired_at"] is None


async def _has_effects(schema: Schema, n: int) -> bool:
    return sum((await _effects(schema)).values()) >= n


async def test_two_workers_fire_each_of_2000_timers_exactly_once_and_on_time(
    schema: Schema, database: str
):
    start = await schema.now() + timedelta(seconds=1)
    keys = [f"t:{n}" for n in range(2000)]
    await schema.schedule(keys, [start + timedelta(milliseconds=n) for n in range(2000)])
    other = await db.create_pool(database, schema=schema.name, application="test-timers-2")
    try:
        first = TimerWorker(schema.pool, {"tick": _record_effect}, batch_size=50)
        second = TimerWorker(other, {"tick": _record_effect}, batch_size=50)
        async with _running(first), _running(second):
            await _until(lambda: _has_effects(schema, 2000))
            await asyncio.sleep(0.3)
    finally:
        await other.close()

    effects = await _effects(schema)
    assert set(effects) == set(keys)
    assert set(effects.values()) == {1}
    late = await schema.sql(
        "SELECT extract(epoch FROM max(fired_at - due_at)) AS worst, count(*) AS fired "
        "FROM timers WHERE fired_at IS NOT NULL"
    )
    assert late[0]["fired"] == 2000
    assert late[0]["worst"] < 1.0


async def test_a_worker_process_killed_mid_run_loses_no_timer_and_fires_none_twice(
    schema: Schema,
):
    now = await schema.now()
    keys = [f"k:{n}" for n in range(1000)]
    await schema.schedule(keys, [now] * len(keys))

    async def worker_process() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.timer_worker",
            schema.dsn,
            schema.name,
            "--delay-ms",
            "2",
            "--batch",
            "50",
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), timeout=30) == b"ready\n"
        return proc

    doomed = await worker_process()
    await _until(lambda: _has_effects(schema, 200))
    doomed.send_signal(signal.SIGKILL)  # mid-batch: two lanes each hold a transaction open
    await doomed.wait()
    killed_at = await _effects(schema)
    assert len(killed_at) < len(keys)

    survivor = await worker_process()
    try:
        await _until(lambda: _has_effects(schema, len(keys)))
        await asyncio.sleep(0.5)
    finally:
        survivor.send_signal(signal.SIGTERM)
        await asyncio.wait_for(survivor.wait(), timeout=10)

    effects = await _effects(schema)
    assert set(effects) == set(keys)
    assert set(effects.values()) == {1}
    workers = await schema.sql("SELECT DISTINCT worker FROM timer_effects")
    assert {r["worker"] for r in workers} == {doomed.pid, survivor.pid}
    fired = await schema.sql("SELECT count(*) AS n FROM timers WHERE fired_at IS NOT NULL")
    assert fired[0]["n"] == len(keys)


class Poison(Exception):
    """What a bug in a handler looks like."""


async def test_a_failing_timer_is_retried_with_back_off_then_failed_and_the_others_fire_on_time(
    schema: Schema, caplog: pytest.LogCaptureFixture
):
    now = await schema.now()
    good = [f"good:{n}" for n in range(50)]
    await schema.schedule(["poison", *good], [now] * 51)
    attempts: list[float] = []

    async def handler(conn: db.Conn, timer: Timer, at: datetime) -> None:
        await _record_effect(conn, timer, at)  # written first: must be undone on failure
        if timer.key == "poison":
            attempts.append(time.monotonic())
            raise Poison("a bug")

    worker = TimerWorker(
        schema.pool,
        {"tick": handler},
        batch_size=20,
        max_attempts=3,
        retry_base_s=0.3,
        max_wait_s=0.1,
    )
    async with _running(worker):
        await _until(lambda: _failed(schema), timeout=15)
        later = await schema.now() + timedelta(milliseconds=200)
        await schema.schedule(["after"], [later])
        await _until(lambda: _has_effects(schema, 51))

    assert len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert 0.3 <= gaps[0] < 0.3 + 0.5
    assert 0.6 <= gaps[1] < 0.6 + 0.5
    effects = await _effects(schema)
    assert "poison" not in effects
    assert set(effects) == {*good, "after"} and set(effects.values()) == {1}
    row = (await schema.sql("SELECT * FROM timers WHERE key = 'poison'"))[0]
    assert (row["attempts"], row["last_error"], row["fired_at"]) == (3, "Poison", None)
    assert row["failed_at"] is not None
    worst = await schema.sql(
        "SELECT extract(epoch FROM max(fired_at - due_at)) AS s FROM timers WHERE key <> 'poison'"
    )
    assert worst[0]["s"] < 1.0
    assert any("poison" in r.message and r.levelname == "ERROR" for r in caplog.records)


async def _failed(schema: Schema) -> bool:
    rows = await schema.sql("SELECT 1 FROM timers WHERE key = 'poison' AND failed_at IS NOT NULL")
    return bool(rows)


async def test_a_handler_running_too_long_counts_as_a_failed_attempt(schema: Schema):
    await schema.schedule(["slow"], [await schema.now()])

    async def stuck(conn: db.Conn, timer: Timer, at: datetime) -> None:
        await asyncio.sleep(60)

    worker = TimerWorker(
        schema.pool, {"tick": stuck}, handler_timeout_s=0.2, retry_base_s=60, max_wait_s=0.1
    )
    async with _running(worker):
        await _until(
            lambda: _row_matches(schema, "slow", "attempts = 1 AND last_error = 'HandlerTimeout'"),
            timeout=10,
        )


async def test_a_handler_that_says_later_is_tried_again_soon_without_an_attempt(
    schema: Schema,
):
    await schema.schedule(["busy", "free"], [await schema.now()] * 2)
    tries: dict[str, int] = {}

    async def busy_once(conn: db.Conn, timer: Timer, at: datetime) -> None:
        tries[timer.key] = tries.get(timer.key, 0) + 1
        if timer.key == "busy" and tries[timer.key] == 1:
            raise timers.Later(0.1)
        await _record_effect(conn, timer, at)

    worker = TimerWorker(schema.pool, {"tick": busy_once}, retry_base_s=60, max_wait_s=0.1)
    async with _running(worker):
        await _until(lambda: _row_matches(schema, "busy", "fired_at IS NOT NULL"), timeout=10)
    assert await _effects(schema) == {"busy": 1, "free": 1}
    assert await _row_matches(schema, "busy", "attempts = 0 AND last_error IS NULL")


async def _row_matches(schema: Schema, key: str, condition: str) -> bool:
    return bool(await schema.sql(f"SELECT 1 FROM timers WHERE key = $1 AND {condition}", key))


async def test_a_worker_claims_only_the_kinds_it_has_handlers_for(schema: Schema):
    now = await schema.now()
    await schema.schedule(["mine"], [now])
    await schema.schedule(["theirs"], [now], kind="unknown")
    worker = TimerWorker(schema.pool, {"tick": _record_effect}, max_wait_s=0.1)
    async with _running(worker):
        await _until(lambda: _has_effects(schema, 1))
        await asyncio.sleep(0.3)
    assert await _effects(schema) == {"mine": 1}
    assert await _row_matches(schema, "theirs", "fired_at IS NULL AND attempts = 0")


async def test_timers_found_by_key_are_read_through_the_primary_key(schema: Schema) -> None:
    """A cancel reads the timers it names, not every pending one: even a generic plan made
    before the table was ever analysed (a young, fast-growing table) takes the primary key.
    Spelled with the pending index's own predicate, it scanned that whole index."""
    async with schema.pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE timers SET (autovacuum_enabled = false)")
        await conn.execute(
            """INSERT INTO timers (key, kind, due_at, run_at)
               SELECT 'plan:' || g, 'tick', now() + g * interval '1 s', now() + g * interval '1 s'
               FROM generate_series(1, 5000) AS g"""
        )
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for sql, argument in (
            (timers._CANCEL_MANY, "'{plan:1,plan:2}'"),
            (timers._CANCEL_ONE, "'plan:3'"),
        ):
            await conn.execute(f"PREPARE probe AS {sql}")
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE probe({argument})"))
            await conn.execute("DEALLOCATE probe")
            assert "timers_pkey" in plan and "timers_pending" not in plan, plan


async def test_a_batch_handler_fires_a_batch_at_once_defers_what_it_returns_and_falls_back(
    schema: Schema,
):
    """A kind with a batch handler gets a claimed batch's timers in one call; the keys it
    returns run again a moment later (no attempt counted); if it fails, each timer is fired
    alone by the kind's handler, so only a failing one is held back."""
    now = await schema.now()
    await schema.schedule(["x1", "x2", "x3"], [now, now, now])
    calls: list[list[str]] = []
    deferred_once: set[str] = set()

    async def many(conn: db.Conn, due: list[Timer], at: datetime) -> set[str]:
        calls.append(sorted(t.key for t in due))
        later = {t.key for t in due if t.key == "x2" and "x2" not in deferred_once}
        deferred_once.update(later)
        for timer in due:
            if timer.key not in later:
                await _record_effect(conn, timer, at)
        return later

    worker = TimerWorker(
        schema.pool, {"tick": _record_effect}, batch_handlers={"tick": many}, max_wait_s=0.2
    )
    async with _running(worker):
        await _until(lambda: _has_effects(schema, 3))
        await asyncio.sleep(0.3)
    assert await _effects(schema) == {"x1": 1, "x2": 1, "x3": 1}
    assert calls[0] == ["x1", "x2", "x3"] and ["x2"] in calls[1:]
    x2 = (await schema.sql("SELECT attempts, fired_at FROM timers WHERE key = 'x2'"))[0]
    assert x2["attempts"] == 0 and x2["fired_at"] is not None

    # a batch handler that fails: each timer again alone, the poisoned one held back
    await schema.schedule(["y1", "poison", "y2"], [now, now, now])

    async def broken(conn: db.Conn, due: list[Timer], at: datetime) -> set[str]:
        raise RuntimeError("the batch handler broke")

    async def alone(conn: db.Conn, timer: Timer, at: datetime) -> None:
        if timer.key == "poison":
            raise ValueError("this one fails")
        await _record_effect(conn, timer, at)

    worker = TimerWorker(
        schema.pool, {"tick": alone}, batch_handlers={"tick": broken}, max_wait_s=0.2
    )
    async with _running(worker):
        await _until(lambda: _has_effects(schema, 5))
        await asyncio.sleep(0.3)
    effects = await _effects(schema)
    assert effects["y1"] == effects["y2"] == 1 and "poison" not in effects
    poison = (await schema.sql("SELECT attempts, fired_at FROM timers WHERE key = 'poison'"))[0]
    assert poison["attempts"] == 1 and poison["fired_at"] is None
