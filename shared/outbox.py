"""The transactional outbox: events are written with the state change, a relay publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from shared import topics
from shared.db import Conn
from shared.events import CONTENT_TYPE, TYPE_HEADER, CloudEvent, new_event
from shared.telemetry import extract_context, inject_headers

log = logging.getLogger(__name__)

# Only one relay per schema publishes at a time, so one complaint's events keep their order;
# others stand by (SKIP LOCKED keeps them from waiting on rows already being published). The
# lock is tried once, in the same round trip as the claim: a relay that does not get it claims
# nothing.
_CLAIM_SQL = """
    WITH relay AS MATERIALIZED (
        SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.outbox')) AS held)
    SELECT id, topic, key, value, headers FROM outbox, relay
    WHERE relay.held AND sent_at IS NULL
    ORDER BY id LIMIT $1 FOR UPDATE OF outbox SKIP LOCKED"""


@dataclass(frozen=True)
class Message:
    """One event bound for a topic, keyed for ordering."""

    topic: str
    key: str | None
    event: CloudEvent
    # W3C headers of the trace this event continues; None: the current context's
    trace: dict[str, str] | None = None


def complaint_event(
    type_: str,
    *,
    source: str,
    complaint_id: str,
    data: Any,
    at: datetime,
    trace: dict[str, str] | None = None,
) -> Message:
    """A domain event about one complaint, on `complaints.events.v1` keyed by it."""
    event = new_event(type=type_, source=source, subject=complaint_id, data=data, time=at)
    return Message(topics.EVENTS, topics.complaint_key(complaint_id), event, trace)


async def enqueue(conn: Conn, messages: Sequence[Message]) -> None:
    """Record `messages` in the caller's transaction, each with its trace context."""
    if not messages:
        return
    current = inject_headers()
    # one statement for the lot, in the given order (ids follow it: the relay publishes by id)
    await conn.execute(
        "INSERT INTO outbox (event_id, topic, key, value, headers) "
        "SELECT e, t, k, v, h::jsonb "
        "FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[]) "
        "WITH ORDINALITY AS m(e, t, k, v, h, n) ORDER BY n",
        [m.event.id for m in messages],
        [m.topic for m in messages],
        [m.key.encode() if m.key is not None else None for m in messages],
        [m.event.to_bytes() for m in messages],
        [
            json.dumps(
                {
                    **(current if m.trace is None else m.trace),
                    "content-type": CONTENT_TYPE,
                    TYPE_HEADER: m.event.type,
                }
            )
            for m in messages
        ],
    )


class OutboxRelay:
    """Publishes unsent outbox rows in order, with acks from all replicas, then marks them sent."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        send: Callable[[str, bytes, bytes | None, list[tuple[str, bytes]]], Awaitable[Any]],
        tracer: trace.Tracer,
        poll_interval_s: float = 0.5,
        batch_size: int = 500,
    ) -> None:
        self._pool = pool
        self._send = send
        self._tracer = tracer
        self._poll = poll_interval_s
        self._batch = batch_size
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        """Ask the relay to look now (called after a transaction that wrote outbox rows commits)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Relay until stopped; a failure is logged and retried with back-off, never fatal."""
        backoff = self._poll
        while not self._stopping:
            # cleared before looking, so a wake-up that arrives while draining is kept
            self._wake.clear()
            try:
                published = await self.drain_once()
                backoff = self._poll
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "outbox relay failed, retrying in %.1fs: %s", backoff, type(exc).__name__
                )
                published = 0
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            if published >= self._batch:
                continue
            if not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._poll)

    async def drain_once(self) -> int:
        """Publish one batch of unsent rows; return how many were published."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM_SQL, self._batch)
            if not rows:
                return 0
            await self._publish(rows)
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])",
                [r["id"] for r in rows],
            )
        return len(rows)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        spans = []
        futures = []
        try:
            for row in rows:
                stored: dict[str, str] = row["headers"]
                span = self._tracer.start_span(
                    f"{row['topic']} publish",
                    context=extract_context(stored),
                    kind=SpanKind.PRODUCER,
                    attributes={
                        "messaging.system": "kafka",
                        "messaging.operation": "publish",
                        "messaging.destination.name": row["topic"],
                    },
                )
                spans.append(span)
                with trace.use_span(span, end_on_exit=False):
                    headers = {
                        k: v for k, v in stored.items() if k not in ("traceparent", "tracestate")
                    }
                    headers.update(inject_headers())
                futures.append(
                    await self._send(
                        row["topic"],
                        bytes(row["value"]),
                        bytes(row["key"]) if row["key"] is not None else None,
                        [(k, v.encode()) for k, v in headers.items()],
                    )
                )
            await asyncio.gather(*futures)
        except BaseException as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()
