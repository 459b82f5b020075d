"""Durable timers: scheduled by key in the caller's transaction, fired once by any replica.

Guarantees:
- `schedule` and `cancel` take effect with the caller's transaction, or not at all.
- A timer fires at most once, in the same transaction as its handler's writes (state, outbox
  rows) and the mark that it fired: that row is locked (`FOR UPDATE`) from the claim to the
  commit, so no other worker, in this process or another replica, can claim it meanwhile
  (`SKIP LOCKED`). A crash, a lost connection or a failed handler rolls all of it back; the timer
  is still pending and fires later. Durable and exactly once in effect, across restarts.
- Due times are compared with the database's clock, never a replica's.
- A handler that fails for a reason other than the database being away is retried with
  exponential back-off (that timer only); after `max_attempts` the timer is marked failed
  (`failed_at`, the error's type in `last_error`) and an error is logged. It never blocks the
  other timers nor loops hot. A handler that runs past `handler_timeout_s` counts as failed.
- A worker only claims the kinds it has handlers for (a replica that does not know a new kind
  leaves it to one that does).

Scheduling rules (`schedule(conn, key, ...)`):
- a new key is armed;
- a pending or cancelled key is moved to the new due time, kind and payload, its failed
  attempts forgotten (re-arming after a pause is cancel, then schedule);
- a key that fired or failed is left alone (a redelivered event cannot fire it twice) unless
  `rearm=True` (a reopened case), which arms it afresh.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shared.db import Conn, Pool, Write, joined, require_transaction, wake_after_commit
from shared.kafka import is_transient
from shared.workers import Loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timer:
    """One timer as its handler sees it."""

    key: str
    kind: str
    payload: Any
    due_at: datetime
    attempts: int  # failed attempts before this one


# What fires a timer: writes with `conn` (in the firing transaction) at database time `now`.
Handler = Callable[[Conn, Timer, datetime], Awaitable[None]]
# Fires several timers of one kind at once; returns the keys of those it could not act on now
# (as `Later`: run again a moment later, no attempt counted).
BatchHandler = Callable[[Conn, list[Timer], datetime], Awaitable[Collection[str]]]


class Later(Exception):
    """Raised by a handler that cannot act now (what it needs is held by someone else): the
    timer stays pending and runs again after `delay_s`, no attempt counted. A handler never
    waits for a lock while its worker holds the batch's timers."""

    def __init__(self, delay_s: float = 0.2) -> None:
        super().__init__(f"later ({delay_s}s)")
        self.delay_s = delay_s


class HandlerTimeout(Exception):
    """A handler ran longer than the worker allows: counted as a failed attempt."""


_PENDING = "fired_at IS NULL AND cancelled_at IS NULL AND failed_at IS NULL"
# The same test for statements that find timers by key: written so that the planner cannot
# match it to the pending index's predicate. Spelled as `_PENDING`, a generic plan made while
# the table's statistics were young scanned every pending timer for the key (measured: 1.6 ms
# and 2,000 buffers a cancel, 20 µs by the primary key).
_PENDING_BY_KEY = "coalesce(fired_at, cancelled_at, failed_at) IS NULL"

SCHEDULE_SQL = """
    INSERT INTO timers AS t (key, kind, payload, due_at, run_at)
    VALUES ($1, $2, $3::jsonb, $4, $4)
    ON CONFLICT (key) DO UPDATE SET
        kind = excluded.kind, payload = excluded.payload, due_at = excluded.due_at,
        run_at = excluded.run_at, scheduled_at = now(), fired_at = NULL, cancelled_at = NULL,
        failed_at = NULL, attempts = 0, last_error = NULL
    WHERE $5 OR (t.fired_at IS NULL AND t.failed_at IS NULL)
    RETURNING true"""


# The name the timer worker is woken by after a commit that armed a timer.
WORKER = "timers"


async def schedule(
    conn: Conn,
    key: str,
    due_at: datetime,
    kind: str,
    payload: Any = None,
    *,
    rearm: bool = False,
) -> bool:
    """Arm or move timer `key` in the caller's transaction; False when it already fired or
    failed and `rearm` is not set (then nothing changes). The commit wakes the worker."""
    if due_at.tzinfo is None:
        raise ValueError("due_at must be timezone-aware")
    done = await conn.fetchval(
        SCHEDULE_SQL, key, kind, {} if payload is None else payload, due_at, rearm
    )
    wake_after_commit(conn, WORKER)
    return bool(done)


_ARM_MANY = """INSERT INTO timers AS t (key, kind, payload, due_at, run_at)
    SELECT k, kind, p::jsonb, d, d
    FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[]) AS s(k, kind, p, d)
    ON CONFLICT (key) DO UPDATE SET
        kind = excluded.kind, payload = excluded.payload, due_at = excluded.due_at,
        run_at = excluded.run_at, scheduled_at = now(), cancelled_at = NULL,
        attempts = 0, last_error = NULL
    WHERE t.fired_at IS NULL AND t.failed_at IS NULL"""
_CANCEL_ONE = (
    f"UPDATE timers SET cancelled_at = now() WHERE key = $1 AND {_PENDING_BY_KEY} RETURNING true"
)
_CANCEL_MANY = (
    f"UPDATE timers SET cancelled_at = now() WHERE key = ANY($1::text[]) AND {_PENDING_BY_KEY}"
)


async def schedule_many(conn: Conn, armed: Sequence[tuple[str, datetime, str, Any]]) -> None:
    """`schedule` (without `rearm`) for each `(key, due_at, kind, payload)`, in one statement:
    a timer that already fired or failed stays as it is."""
    await change_many(conn, cancel=(), arm=armed)


async def cancel_many(conn: Conn, keys: Sequence[str]) -> None:
    """`cancel` for each of `keys`, in one statement."""
    await change_many(conn, cancel=keys, arm=())


async def change_many(
    conn: Conn, *, cancel: Sequence[str], arm: Sequence[tuple[str, datetime, str, Any]]
) -> None:
    """`cancel_many(cancel)` and `schedule_many(arm)` in one statement (a key may not be in
    both)."""
    writes = _changes(cancel, arm)
    if writes:
        await joined(writes).run(conn)
    if arm:
        wake_after_commit(conn, WORKER)


def changes(
    conn: Conn, *, cancel: Sequence[str], arm: Sequence[tuple[str, datetime, str, Any]]
) -> list[Write]:
    """`change_many` as writes for the caller to run beside others (`db.joined`) in the
    transaction it holds on `conn`, whose commit wakes the worker if a timer was armed."""
    require_transaction(conn, WORKER)
    writes = _changes(cancel, arm)
    if arm:
        wake_after_commit(conn, WORKER)
    return writes


def _changes(cancel: Sequence[str], arm: Sequence[tuple[str, datetime, str, Any]]) -> list[Write]:
    if any(due.tzinfo is None for _, due, _, _ in arm):
        raise ValueError("due_at must be timezone-aware")
    if cancel and arm and not set(cancel).isdisjoint(key for key, _, _, _ in arm):
        raise ValueError("a timer cannot be cancelled and armed at once")
    writes = [Write(_CANCEL_MANY, (list(cancel),))] if cancel else []
    if arm:
        columns = (
            [key for key, _, _, _ in arm],
            [kind for _, _, kind, _ in arm],
            [json.dumps({} if payload is None else payload) for _, _, _, payload in arm],
            [due for _, due, _, _ in arm],
        )
        writes.append(Write(_ARM_MANY, columns))
    return writes


async def cancel(conn: Conn, key: str) -> bool:
    """Cancel pending timer `key` in the caller's transaction; False when there is none (never
    scheduled, already cancelled, fired or failed). A timer being fired is waited for: False
    then means it fired."""
    done = await conn.fetchval(_CANCEL_ONE, key)
    return bool(done)


async def state(conn: Conn, key: str) -> dict[str, Any] | None:
    """Timer `key`'s row (every column), or None."""
    row = await conn.fetchrow("SELECT * FROM timers WHERE key = $1", key)
    return None if row is None else dict(row)


# Pure decisions.


def retry_delay(attempts: int, *, base_s: float, cap_s: float) -> float:
    """Seconds before a timer that has failed `attempts` times (1 or more) is tried again."""
    return float(min(cap_s, base_s * 2 ** max(0, attempts - 1)))


def gives_up(attempts: int, max_attempts: int) -> bool:
    """Whether a timer that has now failed `attempts` times is marked failed."""
    return attempts >= max_attempts


def sleep_for(next_in_s: float | None, *, cap_s: float, floor_s: float, tick_s: float) -> float:
    """How long a worker that found nothing more to claim waits (unless woken): until the next
    pending timer may run (`next_in_s` from now; None: there is none), at most `cap_s` and at
    least `tick_s` (timers due that close together fire together). A timer already due but not
    claimable is held by another worker or a writer: look again after `floor_s`, not at once."""
    if next_in_s is None:
        return cap_s
    if next_in_s <= 0:
        return floor_s
    return min(cap_s, max(tick_s, next_in_s))


# The worker.

_CLAIM_SQL = f"""
    SELECT key, kind, payload, due_at, attempts, statement_timestamp() AS now FROM timers
    WHERE {_PENDING} AND run_at <= statement_timestamp() AND kind = ANY($1::text[])
    ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED"""

# the earliest by the pending index's order, one row read (a min() over the same rows was
# planned as a scan of every pending timer while the table's statistics were young)
_NEXT_SQL = f"""
    SELECT extract(epoch FROM run_at - clock_timestamp()) FROM timers
    WHERE {_PENDING} AND kind = ANY($1::text[])
    ORDER BY run_at LIMIT 1"""

# clock_timestamp: when it fired, not when the transaction began (lateness is measured by it)
_FIRED_SQL = "UPDATE timers SET fired_at = clock_timestamp() WHERE key = ANY($1::text[])"


def _by_kind(rows: list[asyncpg.Record]) -> dict[str, list[asyncpg.Record]]:
    grouped: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        grouped.setdefault(row["kind"], []).append(row)
    return grouped


def _timer(row: asyncpg.Record) -> Timer:
    return Timer(row["key"], row["kind"], row["payload"], row["due_at"], row["attempts"])


class TimerWorker:
    """Fires due timers of the kinds in `handlers`; run one per replica, any number at once.

    Each of `lanes` loops claims up to `batch_size` due timers (earliest first) and fires them
    all in one transaction. If a handler fails, the batch's writes are rolled back to just after
    the claim (the locks stay) and its timers are fired again one per savepoint, so only the
    failing timer is held back, and its handler runs once per attempt. A kind with a batch
    handler has the batch's timers of that kind fired by one call (its per-timer handler is
    what fires them one by one after a failure).
    """

    def __init__(
        self,
        pool: Pool,
        handlers: Mapping[str, Handler],
        *,
        batch_handlers: Mapping[str, BatchHandler] | None = None,
        batch_size: int = 100,
        lanes: int = 2,
        max_wait_s: float = 1.0,
        busy_wait_s: float = 0.02,
        tick_s: float = 0.01,
        max_attempts: int = 5,
        retry_base_s: float = 5.0,
        retry_cap_s: float = 600.0,
        handler_timeout_s: float = 30.0,
    ) -> None:
        if not handlers:
            raise ValueError("a timer worker needs at least one handler")
        self._pool = pool
        self._handlers = dict(handlers)
        self._batch_handlers = dict(batch_handlers or {})
        if not self._batch_handlers.keys() <= self._handlers.keys():
            raise ValueError("a batch handler needs a handler of its kind (for one-by-one)")
        self._kinds = sorted(self._handlers)
        self._batch = batch_size
        self._max_wait = max_wait_s
        self._busy_wait = busy_wait_s
        self._tick = tick_s
        self._max_attempts = max_attempts
        self._retry_base = retry_base_s
        self._retry_cap = retry_cap_s
        self._timeout = handler_timeout_s
        self._lanes = [
            Loop("timer worker", self._lane_step, backoff_s=busy_wait_s) for _ in range(lanes)
        ]

    def wake(self) -> None:
        """Look for due timers now (a commit that scheduled one does, see `schedule`)."""
        for lane in self._lanes:
            lane.wake()

    def stop(self) -> None:
        for lane in self._lanes:
            lane.stop()

    async def run(self) -> None:
        """Fire timers until stopped, in `lanes` claiming loops; a failure of the database is
        logged (one line) and retried with back-off."""
        await asyncio.gather(*(lane.run() for lane in self._lanes))

    async def _lane_step(self) -> float:
        claimed = await self.fire_once()
        return 0.0 if claimed >= self._batch else await self._next_wait()

    async def _next_wait(self) -> float:
        async with self._pool.acquire() as conn:
            next_in = await conn.fetchval(_NEXT_SQL, self._kinds)
        return sleep_for(
            None if next_in is None else float(next_in),
            cap_s=self._max_wait,
            floor_s=self._busy_wait,
            tick_s=self._tick,
        )

    async def fire_once(self) -> int:
        """Claim and fire one batch of due timers; return how many were claimed."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM_SQL, self._kinds, self._batch)
            if not rows:
                return 0
            failure: tuple[str, Exception] | None = None  # the handler that failed, and how
            later: set[str] = set()
            try:
                # a savepoint: a failure undoes the handlers' writes but keeps the claim's locks
                async with conn.transaction():
                    for kind, of_kind in _by_kind(rows).items():
                        many = self._batch_handlers.get(kind)
                        if many is not None:  # a failure: each again alone, by `_handle`
                            later |= await self._handle_many(many, conn, of_kind)
                            continue
                        for row in of_kind:
                            try:
                                await self._handle(conn, _timer(row), row["now"])
                            except Exception as exc:
                                failure = (row["key"], exc)
                                raise
                fired = [r["key"] for r in rows if r["key"] not in later]
                for row in rows:
                    if row["key"] in later:
                        await self._record_failure(conn, _timer(row), Later())
            except Exception as exc:
                if is_transient(exc, conn):
                    raise
                fired = await self._one_by_one(conn, rows, failure)
            if fired:
                await conn.execute(_FIRED_SQL, fired)
            return len(rows)

    async def _one_by_one(
        self, conn: Conn, rows: list[asyncpg.Record], failure: tuple[str, Exception] | None
    ) -> list[str]:
        """Fire claimed timers each in a savepoint of its own; a handler failure is recorded
        (attempts, error type, back-off or failed), the failure already seen without running
        that handler again. Returns the keys fired."""
        fired = []
        for row in rows:
            timer = _timer(row)
            if failure is not None and timer.key == failure[0]:
                await self._record_failure(conn, timer, failure[1])
                continue
            try:
                async with conn.transaction():
                    await self._handle(conn, timer, row["now"])
            except Exception as exc:
                if is_transient(exc, conn):
                    raise
                await self._record_failure(conn, timer, exc)
                continue
            fired.append(timer.key)
        return fired

    async def _record_failure(self, conn: Conn, timer: Timer, exc: Exception) -> None:
        if isinstance(exc, Later):  # not a failure: the same attempt, a moment later
            await conn.execute(
                "UPDATE timers SET run_at = statement_timestamp() + make_interval(secs => $2) "
                "WHERE key = $1",
                timer.key,
                exc.delay_s,
            )
            return
        attempts = timer.attempts + 1
        error = type(exc).__name__
        if gives_up(attempts, self._max_attempts):
            await conn.execute(
                "UPDATE timers SET attempts = $2, last_error = $3, failed_at = now() "
                "WHERE key = $1",
                timer.key,
                attempts,
                error,
            )
            log.error(
                "timer %s (%s) failed %d times (%s): given up; it will not fire",
                timer.key,
                timer.kind,
                attempts,
                error,
            )
            return
        delay = retry_delay(attempts, base_s=self._retry_base, cap_s=self._retry_cap)
        await conn.execute(
            "UPDATE timers SET attempts = $2, last_error = $3, "
            "run_at = statement_timestamp() + make_interval(secs => $4) WHERE key = $1",
            timer.key,
            attempts,
            error,
            delay,
        )
        log.warning(
            "timer %s (%s) failed (%s, attempt %d); retrying in %.1fs",
            timer.key,
            timer.kind,
            error,
            attempts,
            delay,
        )

    async def _handle_many(
        self, many: BatchHandler, conn: Conn, rows: list[asyncpg.Record]
    ) -> set[str]:
        """Run a batch handler on `rows`, within the time allowed; the keys it defers."""
        async with asyncio.timeout(self._timeout):
            return set(await many(conn, [_timer(r) for r in rows], rows[0]["now"]))

    async def _handle(self, conn: Conn, timer: Timer, now: datetime) -> None:
        """Run the handler for `timer`, within the time allowed."""
        try:
            async with asyncio.timeout(self._timeout) as limit:
                await self._handlers[timer.kind](conn, timer, now)
        except TimeoutError:
            if limit.expired():
                raise HandlerTimeout(timer.kind) from None
            raise
