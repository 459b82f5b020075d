"""PostgreSQL: one pool per service, scoped to the service's schema, every statement traced."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import asyncpg
import pydantic_core
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import trace
from opentelemetry.trace import SpanKind

Pool = asyncpg.Pool
# What handlers and repositories take: a plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy
T = TypeVar("T")
# PostgreSQL broke a lock cycle, or could not serialise: the transaction may simply run again.
RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)


async def retried_transaction(pool: Pool, work: Callable[[Conn], Awaitable[T]]) -> T:
    """`work` in a transaction on a connection of `pool`, run again (four tries in all, a
    short back-off between them) when PostgreSQL broke a lock cycle or could not serialise."""
    for attempt in range(4):
        try:
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)
        except RETRYABLE:
            if attempt == 3:
                raise
            await asyncio.sleep(0.01 * 2**attempt)
    raise AssertionError("unreachable")


def _operation(query: str) -> str:
    words = query.lstrip().split(None, 1)
    return words[0].upper() if words else "SQL"


@functools.lru_cache(maxsize=1024)
def _statement(query: str, dbname: str) -> tuple[str, dict[str, str]]:
    """A statement's span name and attributes (our statements are constants: worked out once)."""
    operation = _operation(query)
    return f"{operation} {dbname}", {
        "db.system": "postgresql",
        "db.name": dbname,
        "db.operation": operation,
        "db.statement": query.strip()[:2000],
    }


class HookedConnection(asyncpg.Connection):
    """A connection that wakes workers once its outermost transaction commits: a transaction
    that wrote work for a worker (outbox rows, notifications, timers) asks for it with
    `wake_after_commit`, and nobody wakes a worker by hand. A rollback wakes nobody."""

    wakers: Mapping[str, Callable[[], None]] = {}  # per pool: set by `create_pool`
    _depth = 0
    _pending: frozenset[str] = frozenset()

    def transaction(self, **options: Any) -> Any:
        return _Transaction(self, super().transaction(**options))

    def wake_after_commit(self, worker: str) -> None:
        if not self._depth:  # no transaction: the statement committed on its own
            waker = self.wakers.get(worker)
            if waker is not None:
                waker()
            return
        self._pending = self._pending | {worker}

    def _entered(self) -> None:
        self._depth += 1

    def _left(self, committed: bool) -> None:
        self._depth -= 1
        if self._depth:
            return
        pending, self._pending = self._pending, frozenset()
        for name in pending if committed else ():
            waker = self.wakers.get(name)
            if waker is not None:
                waker()


class _Transaction:
    """asyncpg's transaction, telling its connection when it is entered and left."""

    def __init__(self, conn: HookedConnection, inner: Any) -> None:
        self._conn = conn
        self._inner = inner

    async def __aenter__(self) -> Any:
        result = await self._inner.__aenter__()
        self._conn._entered()
        return result

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        committed = False
        try:
            result = await self._inner.__aexit__(kind, exc, tb)
            committed = kind is None
            return result
        finally:
            self._conn._left(committed)


def require_transaction(conn: Conn, worker: str) -> None:
    """`RuntimeError` unless `conn` is in a transaction: work for `worker` handed out to run
    later must be in one, whose commit wakes the worker (woken at once, before the write ran,
    it would find nothing)."""
    if not conn.is_in_transaction():
        raise RuntimeError(f"work for the {worker} worker written later needs a transaction")


def wake_at_commit(conn: Conn, worker: str) -> None:
    """Wake `worker` once the transaction `conn` holds commits, for a write the caller runs
    later in it (`require_transaction`)."""
    require_transaction(conn, worker)
    wake_after_commit(conn, worker)


def wake_after_commit(conn: Conn, worker: str) -> None:
    """Wake `worker` (a name the pool's service registered) once this transaction commits; a
    no-op on a connection without hooks (a test's own connection, say)."""
    hook = getattr(conn, "wake_after_commit", None)
    if hook is not None:
        hook(worker)


@dataclass(frozen=True)
class Write:
    """A data-modifying statement and its arguments: run alone, or beside others in one round
    trip (`joined`). Joined, its text may have no WITH of its own, its placeholders must be
    exactly $1 to $len(args), and no `$` may appear in a literal or comment."""

    sql: str
    args: tuple[Any, ...]

    async def run(self, conn: Conn) -> None:
        """Execute it on `conn` (in whatever transaction `conn` is in)."""
        await conn.execute(self.sql, *self.args)


def joined(writes: Sequence[Write], then: Write | None = None) -> Write:
    """`writes` and `then` as one statement, one round trip: each write a CTE (placeholders
    renumbered after the ones before it), then `then` (which may start with WITH of its own),
    or nothing. Every write runs once, to completion, on the statement's one snapshot: none may
    read what another writes, nor write a row another writes. A write alone is itself."""
    parts = (*writes, then) if then is not None else tuple(writes)
    if not parts:
        raise ValueError("nothing to join")
    if len(parts) == 1:
        return parts[0]
    sql = _joined_sql(
        tuple(w.sql for w in parts), tuple(len(w.args) for w in parts), then is not None
    )
    return Write(sql, tuple(a for w in parts for a in w.args))


_PLACEHOLDER = re.compile(r"\$(\d+)")


def _shifted(offset: int, placeholder: re.Match[str]) -> str:
    return f"${int(placeholder[1]) + offset}"


@functools.lru_cache(maxsize=256)
def _joined_sql(sqls: tuple[str, ...], counts: tuple[int, ...], then: bool) -> str:
    """The text `joined` sends (a few shapes, each worked out once and prepared once)."""
    renumbered: list[str] = []
    offset = 0
    for sql, count in zip(sqls, counts, strict=True):
        used = {int(n) for n in _PLACEHOLDER.findall(sql)}
        if used != set(range(1, count + 1)):
            # a stray $k would silently take the next statement's argument
            raise ValueError(f"placeholders {sorted(used)} for {count} arguments in: {sql[:80]}")
        renumbered.append(_PLACEHOLDER.sub(functools.partial(_shifted, offset), sql).strip())
        offset += count
    ctes = renumbered[:-1] if then else renumbered
    head = "WITH " + ", ".join(f"w{n} AS ({sql})" for n, sql in enumerate(ctes))
    if not then:
        return f"{head} SELECT"
    last = renumbered[-1]
    if last[:5].upper() == "WITH ":
        return f"{head}, {last[5:]}" if ctes else last
    return f"{head} {last}" if ctes else last


def traced_connection_class(
    tracer: trace.Tracer | None, dbname: str, wakers: Mapping[str, Callable[[], None]]
) -> type[asyncpg.Connection]:
    """A connection class with commit hooks (`wakers`) whose statements become client spans of
    `tracer` (SQL text only), inside a sampled trace (a span of ours, or a record's context
    made current); a statement outside one (a poll, a batch-wide insert) costs no span."""
    if tracer is None:
        return type("Connection", (HookedConnection,), {"wakers": wakers})

    def span(query: str) -> Any:
        if not trace.get_current_span().get_span_context().trace_flags.sampled:
            return contextlib.nullcontext()
        name, attributes = _statement(query, dbname)
        return tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    class TracedConnection(HookedConnection):
        async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
            with span(query):
                return await super().execute(query, *args, timeout=timeout)

        async def executemany(
            self, command: str, args: Any, *, timeout: float | None = None
        ) -> None:
            with span(command):
                await super().executemany(command, args, timeout=timeout)

        async def fetch(
            self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None
        ) -> list[Any]:
            with span(query):
                rows: list[Any] = await super().fetch(
                    query, *args, timeout=timeout, record_class=record_class
                )
                return rows

        async def fetchrow(
            self, query: str, *args: Any, timeout: float | None = None, record_class: Any = None
        ) -> Any:
            with span(query):
                return await super().fetchrow(
                    query, *args, timeout=timeout, record_class=record_class
                )

        async def fetchval(
            self, query: str, *args: Any, column: int = 0, timeout: float | None = None
        ) -> Any:
            with span(query):
                return await super().fetchval(query, *args, column=column, timeout=timeout)

    TracedConnection.wakers = wakers
    return TracedConnection


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Codecs every connection of ours uses: json and jsonb as Python values, read by
    pydantic-core's parser: a quarter of `json.loads`' time for the small documents the relay
    reads a row, the same values for what our columns hold (it refuses nesting past about 200
    levels, where our input stops at 64, and lone surrogates, which jsonb cannot hold)."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=pydantic_core.from_json, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a pooled connection as it is. asyncpg always rolls back an open transaction
    first; its default reset then also sends `RESET ALL; UNLISTEN *; ...`, a round trip per
    release, to undo session state that our code never creates (no LISTEN, no session
    settings or advisory locks: those are transaction-scoped here)."""


async def create_pool(
    dsn: str,
    *,
    schema: str,
    application: str,
    tracer: trace.Tracer | None = None,
    max_size: int = 8,
    wakers: Mapping[str, Callable[[], None]] | None = None,
) -> Pool:
    """A pool whose connections see `schema` first, trace their statements (with a `tracer`)
    and wake `wakers` by name after commits that ask for them (a mapping the service may
    fill once its workers exist)."""
    dbname = dsn.rsplit("/", 1)[-1].split("?", 1)[0] or "postgres"
    kwargs: dict[str, Any] = {
        "connection_class": traced_connection_class(
            tracer, dbname, {} if wakers is None else wakers
        )
    }
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        init=prepare_connection,
        reset=_keep_session,
        server_settings={"search_path": f"{schema},public", "application_name": application},
        **kwargs,
    )
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def admin_transaction(dsn: str, schema: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own on `schema`, in one transaction: for an operator's command."""
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    await prepare_connection(conn)
    try:
        async with conn.transaction():
            yield conn
    finally:
        await conn.close()
