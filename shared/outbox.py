"""The transactional outbox: events are written with the state change, a relay publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import pydantic_core
from aiokafka import errors as kafka_errors
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel

from shared import db, ids, topics
from shared.db import Conn
from shared.events import CONTENT_TYPE, LEGACY_TYPE_HEADER, TYPE_HEADER, CloudEvent
from shared.telemetry import extract_context, inject_headers
from shared.workers import Loop

log = logging.getLogger(__name__)

# Only one relay per schema publishes at a time, so one complaint's events keep their order;
# others stand by (SKIP LOCKED keeps them from waiting on rows already being published). The
# lock is tried once, in the same round trip as the claim: a relay that does not get it claims
# nothing.
_CLAIM_SQL = """
    WITH relay AS MATERIALIZED (
        SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.outbox')) AS held)
    SELECT id, topic, key, value, headers FROM outbox, relay
    WHERE relay.held AND sent_at IS NULL AND parked_at IS NULL
    ORDER BY id LIMIT $1 FOR UPDATE OF outbox SKIP LOCKED"""

# What the broker or client says of one message that will never go through, however often it
# is sent: such a row is parked (kept, reported, skipped), so the rows behind it go out.
PERMANENT: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.CorruptRecordException,
    kafka_errors.InvalidMessageError,
    kafka_errors.InvalidTopicError,
    kafka_errors.InvalidTimestampError,
    UnicodeEncodeError,  # a stored header that cannot be sent as UTF-8
)


# The name the relay is woken by after a commit that wrote outbox rows (`db.wake_after_commit`).
WORKER = "outbox"


@dataclass(frozen=True, slots=True)
class Encoded:
    """A new event already written as the contract's structured JSON: what the outbox needs."""

    id: str
    type: str
    value: bytes

    def to_bytes(self) -> bytes:
        return self.value


@dataclass(frozen=True)
class Message:
    """One event bound for a topic, keyed for ordering."""

    topic: str
    key: str | None
    event: CloudEvent | Encoded
    # W3C headers of the trace this event continues; None: the current context's
    trace: dict[str, str] | None = None


def json_time(at: datetime) -> str:
    """`at` as the contract writes times (pydantic's RFC 3339 form, `Z` for UTC)."""
    return str(pydantic_core.to_json(at)[1:-1], "ascii")


def encode(
    type_: str,
    *,
    source: str,
    subject: str | None,
    time: str,
    data: dict[str, Any],
    event_id: str | None = None,
) -> Encoded:
    """A new event, with a fresh id unless it has one already, serialised in one call; `data`
    holds JSON values only.

    The bytes are `new_event(...).to_bytes()`'s: the envelope's fields in `CloudEvent`'s
    order, `subject` left out when None (the unit tests compare the two).
    """
    event_id = event_id or ids.new_uuid()
    envelope: dict[str, Any] = {"specversion": "1.0", "id": event_id, "source": source}
    envelope["type"] = type_
    if subject is not None:
        envelope["subject"] = subject
    envelope["time"] = time
    envelope["datacontenttype"] = "application/json"
    envelope["data"] = data
    return Encoded(event_id, type_, pydantic_core.to_json(envelope))


def contract_data(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """`values` as `model.model_dump(mode="json", exclude_none=True)` writes them: in the
    model's field order, None fields left out (the values must already be JSON values)."""
    return {name: values[name] for name in model.model_fields if values.get(name) is not None}


def complaint_event(
    type_: str,
    *,
    source: str,
    complaint_id: str,
    data: BaseModel | dict[str, Any],
    at: datetime | str,
    trace: dict[str, str] | None = None,
    event_id: str | None = None,
) -> Message:
    """A domain event about one complaint, on `complaints.events.v1` keyed by it; `data` a
    contract model or its JSON values, `at` a time or its `json_time`."""
    if not isinstance(data, dict):  # (a dict is told apart faster than a model)
        data = data.model_dump(mode="json", exclude_none=True)
    time = at if isinstance(at, str) else json_time(at)
    event = encode(
        str(type_), source=source, subject=complaint_id, time=time, data=data, event_id=event_id
    )
    return Message(topics.EVENTS, topics.complaint_key(complaint_id), event, trace)


async def enqueue(conn: Conn, messages: Sequence[Message]) -> None:
    """Record `messages` in the caller's transaction, each with its trace context."""
    if not messages:
        return
    await _write(messages).run(conn)
    db.wake_after_commit(conn, WORKER)  # after the write: at once when not in a transaction


def enqueued(conn: Conn, messages: Sequence[Message]) -> db.Write:
    """`enqueue` as a write for the caller to run beside others (`db.joined`) in the
    transaction it holds on `conn`, whose commit wakes the relay."""
    if not conn.is_in_transaction():
        raise RuntimeError("an outbox write run later needs a transaction to wake the relay")
    db.wake_after_commit(conn, WORKER)
    return _write(messages)


def _write(messages: Sequence[Message]) -> db.Write:
    """The outbox rows of `messages`, one statement for the lot, in the given order (ids
    follow it: the relay publishes by id)."""
    current = inject_headers()
    return db.Write(
        _ENQUEUE_SQL,
        (
            [m.event.id for m in messages],
            [m.topic for m in messages],
            [m.key.encode() if m.key is not None else None for m in messages],
            [m.event.to_bytes() for m in messages],
            [
                _stored_headers(current if m.trace is None else m.trace, m.event.type)
                for m in messages
            ],
        ),
    )


_ENQUEUE_SQL = (
    "INSERT INTO outbox (event_id, topic, key, value, headers) "
    "SELECT e, t, k, v, h::jsonb "
    "FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[]) "
    "WITH ORDINALITY AS m(e, t, k, v, h, n) ORDER BY n"
)


def _stored_headers(trace: dict[str, str], type_: str) -> str:
    """The JSON of a row's headers: its trace context, the content type, the event type."""
    return pydantic_core.to_json(
        {**trace, "content-type": CONTENT_TYPE, TYPE_HEADER: type_}
    ).decode()


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed row: sent, parked with a reason, or neither (try later)."""

    row_id: int
    sent: bool = False
    park_reason: str | None = None


class OutboxRelay:
    """Publishes unsent outbox rows in order, with acks from all replicas, then marks them sent.

    Each row's outcome is its own: a row the broker refuses for good is parked and the rows
    behind it go out; a row that failed for a passing reason stays unsent and is tried again;
    what was acknowledged is marked sent even when another row of the batch failed. Acks the
    database could not record (it went away after the broker answered) are remembered and
    recorded first on the next pass, so only what cannot be proven sent is sent again.
    """

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        send: Callable[[str, bytes, bytes | None, list[tuple[str, bytes]]], Awaitable[Any]],
        tracer: trace.Tracer,
        poll_interval_s: float = 0.5,
        batch_size: int = 500,
        lag_alarm_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._send = send
        self._tracer = tracer
        self._poll = poll_interval_s
        self._batch = batch_size
        self._lag_alarm = lag_alarm_s
        self._acked: set[int] = set()  # acknowledged by the broker, not yet recorded
        self._alarm_logged_at = 0.0
        self._unsampled = drops_unsampled_children(tracer)
        self._loop = Loop("outbox relay", self._step, backoff_s=poll_interval_s)

    def wake(self) -> None:
        """Ask the relay to look now (a commit that wrote outbox rows does, see `enqueue`)."""
        self._loop.wake()

    def stop(self) -> None:
        self._loop.stop()

    async def run(self) -> None:
        """Relay until stopped; a failure is logged (one line) and retried with back-off."""
        await self._loop.run()

    async def _step(self) -> float:
        try:
            published = await self.drain_once()
        finally:
            await self._alarm_if_behind()
        return 0.0 if published >= self._batch else self._poll

    async def _alarm_if_behind(self) -> None:
        """At most every `lag_alarm_s`: an error line when rows are parked or waiting too long."""
        now = time.monotonic()
        if now - self._alarm_logged_at < self._lag_alarm:
            return
        self._alarm_logged_at = now
        with contextlib.suppress(Exception):  # the relay's own failures are reported by run()
            async with self._pool.acquire() as conn:
                state = await health(conn, lag_alarm_s=self._lag_alarm)
            if state["status"] != "ok":
                log.error(
                    "ALARM outbox %s: %d waiting (oldest %.0fs), %d parked",
                    state["status"],
                    state["waiting"],
                    state["oldest_waiting_s"],
                    state["parked"],
                )

    async def drain_once(self) -> int:
        """Publish one batch of unsent rows; return how many were sent."""
        async with self._pool.acquire() as conn, conn.transaction():
            if self._acked:
                await _mark_sent(conn, sorted(self._acked))
            rows = await conn.fetch(_CLAIM_SQL, self._batch)
            outcomes = await self._publish(rows) if rows else []
            sent = [o.row_id for o in outcomes if o.sent]
            self._acked.update(sent)
            await _mark_sent(conn, sent)
            parked = [o for o in outcomes if o.park_reason is not None]
            if parked:
                await conn.executemany(
                    "UPDATE outbox SET parked_at = now(), park_reason = $2 WHERE id = $1",
                    [(o.row_id, o.park_reason) for o in parked],
                )
        self._acked.clear()  # committed: recorded
        for outcome in parked:
            log.error(
                "outbox row %d parked (%s): it will not be sent again until an operator "
                "releases it (complaints outbox list)",
                outcome.row_id,
                outcome.park_reason,
            )
        if len(sent) + len(parked) < len(rows):
            raise RuntimeError(f"{len(rows) - len(sent) - len(parked)} rows not acknowledged")
        return len(sent)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> list[Outcome]:
        """Hand the rows to the producer in order, then wait for each one's acknowledgement.

        A row the broker refuses for good is parked (later rows of its complaint overtake it:
        that is the price of never blocking). A row that fails for a passing reason stops the
        sending, and no later row with its topic and key counts as sent even if acknowledged:
        they go again after it, in order (a duplicate, never a reordering).
        """
        spans = []
        pending: list[tuple[asyncpg.Record, Any]] = []
        outcomes: dict[int, Outcome] = {}
        try:
            for row in rows:
                headers = self._unsampled and sampled_out_headers(row["headers"])
                span: trace.Span = trace.INVALID_SPAN  # sampled out: the context travels as is
                if not headers:
                    span = self._tracer.start_span(
                        f"{row['topic']} publish",
                        context=extract_context(row["headers"]),
                        kind=SpanKind.PRODUCER,
                        attributes=_publish_attributes(row["topic"]),
                    )
                    spans.append(span)
                try:
                    headers = headers or wire_headers(
                        row["headers"], trace.set_span_in_context(span)
                    )
                    future = await self._send(
                        row["topic"],
                        bytes(row["value"]),
                        bytes(row["key"]) if row["key"] is not None else None,
                        headers,
                    )
                except PERMANENT as exc:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    outcomes[row["id"]] = Outcome(row["id"], park_reason=_describe(exc, row))
                    continue
                except Exception as exc:
                    # not this row's fault: stop here; what was handed over is still awaited
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    break
                pending.append((row, future))
            results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
            failed: set[tuple[str, bytes | None]] = set()
            for (row, _), result in zip(pending, results, strict=True):
                stream = (row["topic"], row["key"])
                if isinstance(result, PERMANENT):
                    outcomes[row["id"]] = Outcome(row["id"], park_reason=_describe(result, row))
                elif isinstance(result, BaseException) or stream in failed:
                    failed.add(stream)
                    outcomes[row["id"]] = Outcome(row["id"])
                else:
                    outcomes[row["id"]] = Outcome(row["id"], sent=True)
        except BaseException as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()
        return [outcomes.get(row["id"], Outcome(row["id"])) for row in rows]


@functools.cache
def _publish_attributes(topic: str) -> dict[str, str]:
    """A publish span's attributes (shared, never changed: the SDK copies them)."""
    return {
        "messaging.system": "kafka",
        "messaging.operation": "publish",
        "messaging.destination.name": topic,
    }


def wire_headers(
    stored: dict[str, str], context: otel_context.Context | None = None
) -> list[tuple[str, bytes]]:
    """The Kafka headers for a stored row: its own, the trace `context` (default: the current
    one), and the type header under its current name (rows stored before the rename carry the
    old one)."""
    headers = _own_headers(stored)
    headers.update(inject_headers(context))
    return [(k, v.encode()) for k, v in headers.items()]


def _own_headers(stored: dict[str, str]) -> dict[str, str]:
    headers = {
        k: v
        for k, v in stored.items()
        if k not in ("traceparent", "tracestate", LEGACY_TYPE_HEADER)
    }
    if LEGACY_TYPE_HEADER in stored:
        headers.setdefault(TYPE_HEADER, stored[LEGACY_TYPE_HEADER])
    return headers


# A W3C `traceparent` (version 00) whose sampled flag (bit 0 of the last byte) is clear.
_UNSAMPLED_PARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]")


def drops_unsampled_children(tracer: trace.Tracer) -> bool:
    """Whether `tracer` never records a span whose (remote) parent is not sampled: a
    parent-based sampler as `OTEL_TRACES_SAMPLER=parentbased_*` and `build_tracer_provider`
    configure it (`ParentBased`'s default for unsampled remote parents is always-off)."""
    sampler = getattr(tracer, "sampler", None)
    if not isinstance(sampler, ParentBased):
        return False
    description: str = sampler.get_description()  # type: ignore[no-untyped-call]
    return "remoteParentNotSampled:AlwaysOffSampler" in description


def sampled_out_headers(stored: dict[str, str]) -> list[tuple[str, bytes]] | None:
    """The Kafka headers for a row whose trace is not sampled, for a relay whose tracer
    `drops_unsampled_children`: its publish span would record nothing, so none is started and
    the stored context travels unchanged (same trace, still unsampled). None when the row
    needs its span: no well-formed unsampled `traceparent`, or a `tracestate` to carry."""
    parent = stored.get("traceparent")
    if parent is None or "tracestate" in stored or not _UNSAMPLED_PARENT.fullmatch(parent):
        return None
    headers = _own_headers(stored)
    headers["traceparent"] = parent
    return [(k, v.encode()) for k, v in headers.items()]


def _describe(exc: BaseException, row: asyncpg.Record) -> str:
    return f"{type(exc).__name__}: {len(row['value'])} bytes to {row['topic']}"


async def _mark_sent(conn: Conn, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(
            "UPDATE outbox SET sent_at = coalesce(sent_at, now()) WHERE id = ANY($1::bigint[])",
            list(ids),
        )


async def health(conn: Conn, *, lag_alarm_s: float) -> dict[str, Any]:
    """How the relay keeps up: rows waiting, the oldest one's age, rows parked; `status` is
    `ok`, `lagging` (the oldest waits longer than `lag_alarm_s`) or `parked`."""
    row = await conn.fetchrow(
        """SELECT
             (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE sent_at IS NULL
                                      AND parked_at IS NULL LIMIT 10000) w) AS waiting,
             (SELECT extract(epoch FROM now() - min(created_at)) FROM outbox
                WHERE sent_at IS NULL AND parked_at IS NULL) AS oldest_s,
             (SELECT count(*) FROM outbox WHERE parked_at IS NOT NULL AND sent_at IS NULL)
               AS parked"""
    )
    assert row is not None
    oldest = float(row["oldest_s"] or 0.0)
    status = "parked" if row["parked"] else "lagging" if oldest > lag_alarm_s else "ok"
    return {
        "status": status,
        "waiting": row["waiting"],
        "oldest_waiting_s": round(oldest, 1),
        "parked": row["parked"],
    }


async def parked(conn: Conn, *, limit: int = 100) -> list[dict[str, Any]]:
    """Rows the broker refused for good, oldest first: id, topic, event id and type, size,
    why, and when."""
    rows = await conn.fetch(
        """SELECT id, topic, event_id, coalesce(headers ->> $2, headers ->> $3) AS type,
                  octet_length(value) AS size, park_reason, parked_at
           FROM outbox WHERE parked_at IS NOT NULL AND sent_at IS NULL ORDER BY id LIMIT $1""",
        limit,
        TYPE_HEADER,
        LEGACY_TYPE_HEADER,
    )
    return [dict(r) for r in rows]


async def release(conn: Conn, row_id: int) -> bool:
    """Make a parked row due again (once whatever refused it was fixed); False if none."""
    done = await conn.fetchval(
        "UPDATE outbox SET parked_at = NULL, park_reason = NULL "
        "WHERE id = $1 AND parked_at IS NOT NULL AND sent_at IS NULL RETURNING true",
        row_id,
    )
    return bool(done)
