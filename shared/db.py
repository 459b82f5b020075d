"""PostgreSQL: one pool per service, scoped to the service's schema, every statement traced."""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from opentelemetry import trace
from opentelemetry.trace import SpanKind

Pool = asyncpg.Pool
# What handlers and repositories take: a plain connection or one borrowed from a pool.
Conn = asyncpg.Connection | PoolConnectionProxy


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


def traced_connection_class(tracer: trace.Tracer, dbname: str) -> type[asyncpg.Connection]:
    """A connection class whose statements become client spans of `tracer` (SQL text only),
    inside a sampled trace (a span of ours, or a record's context made current); a statement
    outside one (a poll, a batch-wide insert) costs no span."""

    def span(query: str) -> Any:
        if not trace.get_current_span().get_span_context().trace_flags.sampled:
            return contextlib.nullcontext()
        name, attributes = _statement(query, dbname)
        return tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes)

    class TracedConnection(asyncpg.Connection):
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

    return TracedConnection


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Codecs every connection of ours uses: json and jsonb as Python values."""
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
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
) -> Pool:
    """A pool whose connections see `schema` first and trace their statements."""
    dbname = dsn.rsplit("/", 1)[-1].split("?", 1)[0] or "postgres"
    kwargs: dict[str, Any] = {}
    if tracer is not None:
        kwargs["connection_class"] = traced_connection_class(tracer, dbname)
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
