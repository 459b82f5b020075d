"""Kafka plumbing shared by the services: topics, the producer, batch consumption, dead letters."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared import outbox, topics
from shared.db import Conn
from shared.events import LEGACY_TYPE_HEADER, TYPE_HEADER, EventType, new_event, utcnow
from shared.settings import Settings
from shared.telemetry import extract_context, inject_headers

log = logging.getLogger(__name__)
T = TypeVar("T")


async def ensure_topics(settings: Settings, names: Sequence[str] = topics.ALL) -> None:
    """Create the contract's topics if the broker does not have them yet."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if not missing:
            return
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=settings.kafka_topic_partitions,
                        replication_factor=settings.kafka_replication_factor,
                    )
                    for name in missing
                ]
            )
    finally:
        await admin.close()


def build_producer(settings: Settings, *, client_id: str) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas (idempotence off: not every broker has it)."""
    return AIOKafkaProducer(
        **settings.kafka_client_options(),
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
    )


async def _undecoded(message: Any) -> None:
    """Leave records undecoded: handlers parse the raw values, refusing bad ones with a dead
    letter. FastStream's default decoder parses every JSON-looking body first and raises on
    a deeply nested or (when labelled JSON) malformed one, failing the batch every time."""
    return None


def consumer_options(settings: Settings, *, follower: bool = False) -> dict[str, Any]:
    """Subscriber options for at-least-once, ordered batch consumption. A `follower` is off
    every latency path: it waits for more data per fetch (up to the follower wait), so it asks
    the broker less often and commits offsets less often."""
    wait_ms = (
        settings.kafka_follower_fetch_wait_ms if follower else settings.kafka_fetch_max_wait_ms
    )
    options: dict[str, Any] = {
        "batch": True,
        "max_records": max(settings.kafka_max_batch, 1000)
        if follower
        else settings.kafka_max_batch,
        "batch_timeout_ms": wait_ms,
        "fetch_max_wait_ms": wait_ms,
        "auto_offset_reset": "earliest",
        "max_poll_interval_ms": 300_000,
        "decoder": _undecoded,
    }
    if follower:
        options["fetch_min_bytes"] = 1024 * 1024
    return options


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, as the handlers see it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, raw: ConsumerRecord[Any, Any]) -> Record:
        return cls(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            key=raw.key,
            value=raw.value,
            headers=tuple(raw.headers or ()),
        )

    def event_type(self) -> str | None:
        """The CloudEvents type its type header announces; None when it has none (a record
        from a producer that does not set it: only parsing can tell)."""
        for name, value in self.headers:
            if name in (TYPE_HEADER, LEGACY_TYPE_HEADER) and value is not None:
                return value.decode("utf-8", "replace")
        return None

    def may_be(self, types: Collection[str] | None) -> bool:
        """Whether this record may be one of `types` (None: any), judged by its header only."""
        if types is None:
            return True
        announced = self.event_type()
        return announced is None or announced in types


class Rejected(Exception):
    """Input a consumer cannot accept: it goes to the dead-letter topic with this reason, and
    `also` (events that tell the sender, say) goes out with it."""

    def __init__(self, code: str, reason: str, also: Sequence[outbox.Message] = ()) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.also = list(also)


# Errors that say the database or network is unwell, not that the record is bad: retry the batch.
TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    KafkaError,
)


def deadletter_message(record: Record, *, code: str, reason: str, consumer: str) -> outbox.Message:
    """The dead-letter CloudEvent for `record`: original bytes, coordinates, reason and time."""
    event = new_event(
        type=EventType.DEADLETTERED,
        source=f"complaints/{consumer}",
        data={
            "reason_code": code,
            "reason": reason,
            "consumer": consumer,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key_base64": base64.b64encode(record.key).decode() if record.key else None,
            "value_base64": base64.b64encode(record.value or b"").decode(),
            "headers": {k: base64.b64encode(v or b"").decode() for k, v in record.headers},
            "at": utcnow().isoformat(),
        },
    )
    key = record.key.decode("utf-8", "replace") if record.key is not None else None
    return outbox.Message(topics.DEADLETTER, key, event)


Handler = Callable[[Conn, Record], Awaitable[None]]


async def process_batch(
    *,
    pool: asyncpg.Pool,
    tracer: trace.Tracer,
    consumer: str,
    records: Sequence[Record],
    handle: Handler,
) -> None:
    """Handle `records` in one transaction, each in a savepoint and its own trace span.

    A record the handler rejects, or that fails in a way that is not transient, is dead-lettered
    (through the outbox, in the same transaction) and the batch moves on. A transient failure
    rolls back the whole batch and is raised, so the broker redelivers it.
    """
    async with pool.acquire() as conn, conn.transaction():
        for record in records:
            span = _process_span(tracer, record, consumer)
            with trace.use_span(span, end_on_exit=True):
                try:
                    async with conn.transaction():
                        await handle(conn, record)
                except Rejected as exc:
                    span.set_attribute("complaints.deadletter.reason", exc.code)
                    letter = deadletter_message(
                        record, code=exc.code, reason=exc.reason, consumer=consumer
                    )
                    await outbox.enqueue(conn, [letter, *exc.also])
                except TRANSIENT:
                    raise
                except Exception as exc:
                    span.record_exception(exc)
                    await outbox.enqueue(conn, [_failure_letter(record, exc, consumer)])


def _failure_letter(record: Record, exc: Exception, consumer: str) -> outbox.Message:
    """A bug must not block the partition: keep the record, dead-lettered with the error's type.

    Exception text may quote personal data: the type is logged as an error, the rest at debug.
    """
    log.error(
        "%s failed on %s[%d]@%d (%s); dead-lettered",
        consumer,
        record.topic,
        record.partition,
        record.offset,
        type(exc).__name__,
    )
    log.debug("consumer failure detail", exc_info=exc)
    return deadletter_message(
        record,
        code="processing_error",
        reason=f"the consumer failed on this record ({type(exc).__name__})",
        consumer=consumer,
    )


def _process_span(tracer: trace.Tracer, record: Record, consumer: str) -> trace.Span:
    return tracer.start_span(
        f"{record.topic} process",
        context=extract_context(record.headers),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation": "process",
            "messaging.destination.name": record.topic,
            "messaging.kafka.destination.partition": record.partition,
            "messaging.kafka.message.offset": record.offset,
            "messaging.consumer.group.name": consumer,
        },
    )


async def process_batch_together(
    *,
    pool: asyncpg.Pool,
    tracer: trace.Tracer,
    consumer: str,
    records: Sequence[Record],
    parse: Callable[[Record], T],
    apply: Callable[[Conn, list[tuple[T, dict[str, str]]]], Awaitable[object]],
) -> None:
    """Parse each record, then apply all good ones at once, in one transaction.

    Each record gets its own span, whose context `apply` receives to continue the record's
    trace. Records `parse` rejects are dead-lettered. If applying the batch fails for a reason
    that is not transient, its transaction rolls back and a second one applies the good records
    one by one (each in a savepoint), dead-lettering only the one that fails: a poison record
    costs its batch speed, never the records behind it. (No savepoint in the common case: it
    would cost two round trips per batch.)
    """
    spans: list[trace.Span] = []
    try:
        good: list[tuple[Record, T, dict[str, str]]] = []
        letters: list[outbox.Message] = []
        for record in records:
            span = _process_span(tracer, record, consumer)
            spans.append(span)
            with trace.use_span(span, end_on_exit=False):
                try:
                    good.append((record, parse(record), inject_headers()))
                except Rejected as exc:
                    span.set_attribute("complaints.deadletter.reason", exc.code)
                    letter = deadletter_message(
                        record, code=exc.code, reason=exc.reason, consumer=consumer
                    )
                    letters += [_with_trace(m) for m in (letter, *exc.also)]
                except Exception as exc:
                    # a parser bug must cost this record only, never block the partition
                    span.record_exception(exc)
                    letters.append(_with_trace(_failure_letter(record, exc, consumer)))
        async with pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await apply(conn, [(value, headers) for _, value, headers in good])
                    await outbox.enqueue(conn, letters)
                return
            except TRANSIENT:
                raise
            except Exception as exc:
                log.error(
                    "%s: batch of %d failed (%s); applying one by one",
                    consumer,
                    len(good),
                    type(exc).__name__,
                )
                log.debug("batch failure detail", exc_info=True)
            # the batch's transaction rolled back whole: redo it record by record
            async with conn.transaction():
                letters += await _one_by_one(conn, good, apply, consumer)
                await outbox.enqueue(conn, letters)
    finally:
        for span in spans:
            span.end()


async def _one_by_one(
    conn: Conn,
    good: list[tuple[Record, T, dict[str, str]]],
    apply: Callable[[Conn, list[tuple[T, dict[str, str]]]], Awaitable[object]],
    consumer: str,
) -> list[outbox.Message]:
    letters = []
    for record, value, headers in good:
        try:
            async with conn.transaction():
                await apply(conn, [(value, headers)])
        except TRANSIENT:
            raise
        except Exception as exc:
            letters.append(replace(_failure_letter(record, exc, consumer), trace=headers))
    return letters


def _with_trace(message: outbox.Message) -> outbox.Message:
    return replace(message, trace=inject_headers())


async def retry_pause(attempt: int) -> None:
    """Back off before a failed batch is redelivered, so an outage is not a hot loop."""
    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))


def faststream_security(settings: Settings) -> Any:
    """The FastStream security object equivalent to the aiokafka options of `settings`."""
    from faststream.security import (
        BaseSecurity,
        SASLPlaintext,
        SASLScram256,
        SASLScram512,
    )

    opts = settings.kafka_client_options()
    ssl_context = opts.get("ssl_context")
    mechanism = settings.kafka_sasl_mechanism
    if mechanism is None:
        return BaseSecurity(ssl_context=ssl_context) if ssl_context else None
    kinds = {"PLAIN": SASLPlaintext, "SCRAM-SHA-256": SASLScram256, "SCRAM-SHA-512": SASLScram512}
    return kinds[mechanism](
        username=settings.kafka_sasl_plain_username or "",
        password=opts.get("sasl_plain_password", ""),
        ssl_context=ssl_context,
        use_ssl=settings.kafka_security_protocol == "SASL_SSL",
    )


def parse_event(record: Record) -> Any:
    """The CloudEvent in a record of `complaints.events.v1`, or `Rejected`."""
    from pydantic import ValidationError

    from shared.events import CloudEvent

    if not record.value:
        raise Rejected("empty", "the record has no value")
    try:
        return CloudEvent.model_validate_json(record.value)
    except ValidationError as exc:
        kinds = {e.get("type") for e in exc.errors()}
        code = "not_json" if kinds & {"json_invalid", "json_type"} else "not_cloudevent"
        raise Rejected(
            code, f"not a CloudEvents 1.0 JSON event ({len(exc.errors())} errors)"
        ) from None
