"""The transactional outbox: events are written with the state change, a relay publishes them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import pydantic_core
from aiokafka import errors as kafka_errors
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel

from shared import db, ids, topics
from shared.db import Conn
from shared.events import CONTENT_TYPE, LEGACY_TYPE_HEADER, TYPE_HEADER, CloudEvent
from shared.telemetry import (
    drops_unsampled_children,
    extract_context,
    failed,
    inject_headers,
    sampled_out_parent,
)
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
    db.wake_at_commit(conn, WORKER)
    return _write(messages)


def _write(messages: Sequence[Message]) -> db.Write:
    """The outbox rows of `messages`, one statement for the lot, in the given order (ids
    follow it: the relay publishes by id), each event of `topics.CASE_FEED` followed by its
    copy for the internal cases feed (`topics.CASES`)."""
    current = inject_headers()
    messages = _with_case_feed(messages)
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


def _with_case_feed(messages: Sequence[Message]) -> Sequence[Message]:
    """`messages`, each domain event that changes what intake keeps of a case followed by the
    same event (same id, key and trace) bound for `topics.CASES`."""
    teed: list[Message] = []
    for m in messages:
        teed.append(m)
        if m.topic == topics.EVENTS and m.event.type in topics.CASE_FEED:
            teed.append(Message(topics.CASES, m.key, m.event, m.trace))
    return teed


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


class Publisher(Protocol):
    """What the relay needs of a producer (`kafka.BatchPublisher`): the partition of a key,
    and record batches it fills itself and hands over whole, one partition each."""

    async def partitioner(self, topic: str) -> Callable[[bytes | None], int]:
        """The partition of a key on `topic` (its metadata is fetched first if not known)."""
        ...

    def batch(self) -> Any:
        """An empty batch."""
        ...

    def append(
        self, batch: Any, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> bool:
        """Add a record to `batch`; False when it is full. A record that fits no batch
        raises one of `PERMANENT`."""
        ...

    async def send(self, batch: Any, topic: str, partition: int) -> Awaitable[Any]:
        """Hand `batch` over for `partition`; the awaitable is its acknowledgement."""
        ...


@dataclass(slots=True)
class _Item:
    """A claimed row as it goes on the wire, with its publish span."""

    row: asyncpg.Record
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    span: trace.Span


@dataclass(slots=True)
class _Batch:
    """Rows bound for one partition, in id order, and the producer's batch holding them."""

    topic: str
    partition: int
    batch: Any
    items: list[_Item] = field(default_factory=list)


class OutboxRelay:
    """Publishes unsent outbox rows in order, with acks from all replicas, then marks them sent.

    Each row's outcome is its own: a row the broker refuses for good is parked and the rows
    behind it go out; a row that failed for a passing reason stays unsent and is tried again;
    what was acknowledged is marked sent even when another row of the pass failed. Acks the
    database could not record (it went away after the broker answered) are remembered and
    recorded first on the next pass, so only what cannot be proven sent is sent again.
    """

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        publisher: Publisher,
        tracer: trace.Tracer,
        poll_interval_s: float = 0.5,
        batch_size: int = 500,
        lag_alarm_s: float = 30.0,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._tracer = tracer
        self._poll = poll_interval_s
        self._batch = batch_size
        self._lag_alarm = lag_alarm_s
        self._acked: set[int] = set()  # acknowledged by the broker, not yet recorded
        self._alarm_logged_at = 0.0
        self._unsampled = drops_unsampled_children(tracer)
        self._small_topics: set[str] = set()  # topics whose limit is below a batch (warned of)
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
        """Hand the rows over in batches, one partition each, and wait for their acks.

        A partition's batches hold its rows in id order and go one after another, each once
        the one before was acknowledged: one complaint's rows (one key, one partition) keep
        their order. A row the broker refuses for good is parked (later rows of its complaint
        overtake it: that is the price of never blocking): a row too large for any batch
        before it goes; the row at fault in a batch refused whole, found by sending that
        batch's rows one by one. A passing failure ends its partition's pass (one handing a
        batch over ends every partition's): no later row with its topic and key is sent; they
        go again after it, in order (a duplicate, never a reordering).
        """
        spans: list[trace.Span] = []
        outcomes: dict[int, Outcome] = {}
        try:
            queues = await self._fill(rows, spans, outcomes)
            stopped = asyncio.Event()
            deliveries = [
                asyncio.ensure_future(self._deliver(q, outcomes, stopped)) for q in queues
            ]
            try:
                await asyncio.gather(*deliveries)
            except BaseException:
                for delivery in deliveries:  # no partition hands more over for a pass given up
                    delivery.cancel()
                await asyncio.gather(*deliveries, return_exceptions=True)
                raise
            for queue in queues:
                for batch in queue:
                    for item in batch.items:
                        if item.row["id"] not in outcomes:  # its partition stopped before it
                            item.span.set_status(Status(StatusCode.ERROR, "not sent"))
        except BaseException as exc:
            for span in spans:
                failed(span, exc)
            raise
        finally:
            for span in spans:
                span.end()
        return [outcomes.get(row["id"], Outcome(row["id"])) for row in rows]

    async def _fill(
        self, rows: Sequence[asyncpg.Record], spans: list[trace.Span], outcomes: dict[int, Outcome]
    ) -> list[list[_Batch]]:
        """The rows in batches, by topic and partition, each in id order; a row that fits no
        batch is parked. A failure for a passing reason stops the filling (the rows already
        in batches still go)."""
        partitioners: dict[str, Callable[[bytes | None], int]] = {}
        queues: dict[tuple[str, int], list[_Batch]] = {}
        publisher = self._publisher
        for row in rows:
            topic = row["topic"]
            headers = self._unsampled and sampled_out_headers(row["headers"])
            span: trace.Span = trace.INVALID_SPAN  # sampled out: the context travels as is
            if not headers:
                span = self._tracer.start_span(
                    f"{topic} publish",
                    context=extract_context(row["headers"]),
                    kind=SpanKind.PRODUCER,
                    attributes=_publish_attributes(topic),
                )
                spans.append(span)
            try:
                headers = headers or wire_headers(row["headers"], trace.set_span_in_context(span))
                key = bytes(row["key"]) if row["key"] is not None else None
                value = bytes(row["value"])
                partition_of = partitioners.get(topic)
                if partition_of is None:
                    partition_of = partitioners[topic] = await publisher.partitioner(topic)
                partition = partition_of(key)
                queue = queues.setdefault((topic, partition), [])
                alone = topic in self._small_topics  # (see `_batch_refused`)
                if alone or not queue or not publisher.append(queue[-1].batch, key, value, headers):
                    fresh = _Batch(topic, partition, publisher.batch())
                    if not publisher.append(fresh.batch, key, value, headers):
                        raise kafka_errors.MessageSizeTooLargeError("larger than an empty batch")
                    queue.append(fresh)  # never an empty batch handed over
            except PERMANENT as exc:
                outcomes[row["id"]] = _parked(row, span, exc)
                continue
            except Exception as exc:
                # not this row's fault: stop here; the rows before it still go
                failed(span, exc)
                break
            queue[-1].items.append(_Item(row, key, value, headers, span))
        return list(queues.values())

    async def _deliver(
        self, queue: list[_Batch], outcomes: dict[int, Outcome], stopped: asyncio.Event
    ) -> None:
        """Send one partition's batches in order, each once the one before was acknowledged;
        a batch refused whole for good is sent again row by row. A passing failure ends the
        partition's pass; a failure to hand a batch over (`stopped`) ends every partition's."""
        for batch in queue:
            if stopped.is_set():
                return
            failure = await self._send(batch, stopped)
            if isinstance(failure, PERMANENT) and len(batch.items) > 1:
                if not await self._one_by_one(batch, outcomes, stopped):
                    return
                if not any(outcomes[i.row["id"]].park_reason for i in batch.items):
                    self._batch_refused(batch, failure)
            elif not _settle(batch.items, failure, outcomes):
                return

    def _batch_refused(self, batch: _Batch, failure: BaseException) -> None:
        """A batch refused whole whose rows each went alone: the topic's message limit is below
        the producer's batch size. From now on its rows go in batches of one (a round trip a
        row, where a refused batch and then a round trip a row would be paid every pass)."""
        if batch.topic in self._small_topics:
            return
        self._small_topics.add(batch.topic)
        log.warning(
            "%s refused a batch of %d rows (%s) but took each alone: its message size limit "
            "is below the producer's batch size; the relay sends its rows one by one",
            batch.topic,
            len(batch.items),
            type(failure).__name__,
        )

    async def _one_by_one(
        self, batch: _Batch, outcomes: dict[int, Outcome], stopped: asyncio.Event
    ) -> bool:
        """Each row of a batch refused whole for good in a batch of its own, in order, so
        only the row at fault is parked; False when a passing failure stopped it."""
        for item in batch.items:
            if stopped.is_set():
                return False
            alone = _Batch(batch.topic, batch.partition, self._publisher.batch(), [item])
            self._publisher.append(alone.batch, item.key, item.value, item.headers)
            if not _settle(alone.items, await self._send(alone, stopped), outcomes):
                return False
        return True

    async def _send(self, batch: _Batch, stopped: asyncio.Event) -> BaseException | None:
        """Hand `batch` over and wait for its acknowledgement: None, or why it failed. A
        failure to hand it over sets `stopped`: nothing more is handed over in this pass."""
        try:
            ack = await self._publisher.send(batch.batch, batch.topic, batch.partition)
        except PERMANENT as exc:
            return exc
        except Exception as exc:
            stopped.set()
            return exc
        try:
            await ack
        except Exception as exc:
            return exc
        return None


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


def sampled_out_headers(stored: dict[str, str]) -> list[tuple[str, bytes]] | None:
    """The Kafka headers for a row whose trace is not sampled, for a relay whose tracer
    `drops_unsampled_children`: its publish span would record nothing, so none is started and
    the stored context travels unchanged (same trace, still unsampled). None when the row
    needs its span: no well-formed unsampled `traceparent`, or a `tracestate` to carry."""
    parent = sampled_out_parent(stored)
    if parent is None:
        return None
    if LEGACY_TYPE_HEADER not in stored:  # (all but rows stored before the rename) as stored
        return [(k, v.encode()) for k, v in stored.items()]
    headers = _own_headers(stored)
    headers["traceparent"] = parent
    return [(k, v.encode()) for k, v in headers.items()]


def _settle(
    items: list[_Item], failure: BaseException | None, outcomes: dict[int, Outcome]
) -> bool:
    """Record the outcome of rows sent together: sent when `failure` is None, parked when it is
    one of `PERMANENT`, else none (tried again later); whether their partition may go on."""
    for item in items:
        row_id = item.row["id"]
        if failure is None:
            outcomes[row_id] = Outcome(row_id, sent=True)
        elif isinstance(failure, PERMANENT):
            outcomes[row_id] = _parked(item.row, item.span, failure)
        else:
            failed(item.span, failure)
    return failure is None or isinstance(failure, PERMANENT)


def _parked(row: asyncpg.Record, span: trace.Span, exc: BaseException) -> Outcome:
    failed(span, exc)
    return Outcome(row["id"], park_reason=_describe(exc, row))


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
