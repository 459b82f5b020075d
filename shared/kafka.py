"""Kafka plumbing shared by the services: topics, the producer, batch consumption, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import ValidationError

from shared import deadletters, jsonsafe, outbox, topics
from shared.db import Conn
from shared.events import LEGACY_TYPE_HEADER, TYPE_HEADER, CloudEvent
from shared.settings import Settings
from shared.telemetry import (
    carrier,
    drops_unsampled_children,
    extract_context,
    failed,
    inject_headers,
    sampled_out_parent,
    traced,
    unsampled_roots,
)

if TYPE_CHECKING:
    from aiokafka.producer.message_accumulator import BatchBuilder

log = logging.getLogger(__name__)
T = TypeVar("T")
# The most a consumer reads of an event: far above any event of the contract, below the
# broker's default message limit.
MAX_EVENT_BYTES = 1024 * 1024
# The largest record a producer sends (aiokafka's default, written out: `BatchPublisher` checks
# each record against it, the producer does not check the batches it is handed).
MAX_REQUEST_BYTES = 1024 * 1024


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
                        topic_configs=dict(topics.CONFIGS.get(name, {})),
                    )
                    for name in missing
                ]
            )
    finally:
        await admin.close()


async def group_has_read(
    settings: Settings, group_id: str, topic: str, *, timeout_s: float = 15.0
) -> bool:
    """Whether consumer group `group_id` has committed an offset on any partition of `topic`
    (asked as its consumers ask, without joining it: the dev broker does not answer the admin
    client's form). Raises when it cannot tell within `timeout_s`: the broker away, or no
    such topic."""
    consumer = AIOKafkaConsumer(
        **settings.kafka_client_options(), group_id=group_id, enable_auto_commit=False
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            await consumer.topics()  # metadata for every topic
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                raise LookupError(f"{topic}: the broker does not know this topic")
            committed = await asyncio.gather(
                *(consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions))
            )
            return any(offset is not None for offset in committed)
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()


_M = 0x5BD1E995
_WORD = 0xFFFFFFFF
_UNPACK_WORDS: dict[int, Callable[[bytes], tuple[int, ...]]] = {}
_KEPT_UNPACKERS = 64  # keys up to 256 bytes


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data` as an unsigned 32-bit value (Java's `Utils.murmur2`, as
    aiokafka's `murmur2` gives it), at about half that one's cost: the 4-byte words are read
    by one `struct` call, not assembled a byte at a time."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    unpack = _UNPACK_WORDS.get(words)
    if unpack is None:
        unpack = struct.Struct(f"<{words}I").unpack_from
        if words <= _KEPT_UNPACKERS:  # the lengths of keys ids make: a few, kept
            _UNPACK_WORDS[words] = unpack
    for k in unpack(data):
        k = (k * _M) & _WORD
        k = ((k ^ (k >> 24)) * _M) & _WORD
        h = ((h * _M) & _WORD) ^ k
    tail = length & 3
    if tail:
        base = length - tail
        if tail == 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _WORD
    h ^= h >> 13
    h = (h * _M) & _WORD
    return h ^ (h >> 15)


class KeyPartitioner:
    """Kafka's default partitioning (murmur2 of the key, as every client computes it), with the
    hash of recent keys remembered: a complaint's events share their key, and the hash in pure
    Python costs more than the rest of a send."""

    def __init__(self, remember: int = 4096) -> None:
        self._hashes: dict[bytes, int] = {}
        self._remember = remember

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return random.choice(available or all_partitions)
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self._remember:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return all_partitions[hashed % len(all_partitions)]


def build_producer(settings: Settings, *, client_id: str) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas (idempotence off: not every broker has it).

    Its batches (those `send` fills, and those `BatchPublisher` fills) hold up to 256 KiB, a
    record larger than that alone; no record is larger than a request (`MAX_REQUEST_BYTES`).
    """
    return AIOKafkaProducer(
        **settings.kafka_client_options(),
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
        max_request_size=MAX_REQUEST_BYTES,
        partitioner=KeyPartitioner(),
    )


class BatchPublisher:
    """The outbox relay's side of a producer (`outbox.Publisher`): record batches the relay
    fills itself, one partition each, handed over whole. One future per batch, where `send`
    costs a coroutine, a partitioning, an append through the accumulator and a future per
    record. Each record is what `send` would put on the wire: the same key, value and headers,
    timestamped now, in the partition `KeyPartitioner` gives its key."""

    def __init__(
        self, producer: AIOKafkaProducer, *, max_request_bytes: int = MAX_REQUEST_BYTES
    ) -> None:
        self._producer = producer
        self._max_request_bytes = max_request_bytes
        self._partitioner = KeyPartitioner()

    async def partitioner(self, topic: str) -> Callable[[bytes | None], int]:
        """The partition of a key on `topic`, as `send` chooses it from the producer's metadata
        (waited for, as `send` does, when the topic is not known yet)."""
        await self._producer.partitions_for(topic)
        cluster = self._producer.client.cluster
        every = list(cluster.partitions_for_topic(topic))
        available = list(cluster.available_partitions_for_topic(topic) or ())
        partitioner = self._partitioner
        return lambda key: partitioner(key, every, available)

    def batch(self) -> BatchBuilder:
        """An empty batch of the producer's size and compression."""
        return self._producer.create_batch()

    def append(
        self,
        batch: BatchBuilder,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]],
    ) -> bool:
        """Add a record to `batch`; False when it is full (an empty batch takes any record).
        A record larger than a request fits no batch: `MessageSizeTooLargeError`, as `send`
        raises it."""
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > self._max_request_bytes:
            raise MessageSizeTooLargeError(
                f"the record is {size} bytes, more than a request's {self._max_request_bytes}"
            )
        return batch.append(timestamp=None, key=key, value=value, headers=headers) is not None

    async def send(self, batch: BatchBuilder, topic: str, partition: int) -> Awaitable[Any]:
        """Hand `batch` over, closed (it goes at once, no lingering for more records); the
        awaitable is its acknowledgement."""
        batch.close()
        ack: Awaitable[Any] = await self._producer.send_batch(batch, topic, partition=partition)
        return ack


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
    }
    if follower:
        options["fetch_min_bytes"] = 1024 * 1024
    options["session_timeout_ms"] = settings.kafka_session_timeout_ms
    options["heartbeat_interval_ms"] = settings.kafka_heartbeat_interval_ms
    options["rebalance_timeout_ms"] = max(settings.kafka_session_timeout_ms, 10_000)
    return options


def instance_id(settings: Settings, group_id: str) -> str | None:
    """This replica's static membership in `group_id` (KIP-345), when it has a stable name: a
    replica restarted under the same name takes its partitions back at once instead of
    waiting for its dead self to time out. Two live replicas must never share a name."""
    if not settings.kafka_instance_id:
        return None
    return f"{group_id}-{settings.kafka_instance_id}"


async def raw_batch(records: tuple[ConsumerRecord[Any, Any], ...], original: Any) -> Any:
    """FastStream's message for a fetched batch, without decoding anything: its own parser
    decodes every header as UTF-8 (one bad header skipped a whole batch) and its decoder
    parses every value as JSON (one deep document looped the consumer). The records stay as
    bytes until `Record` and each handler read them, one at a time."""
    parser = original.__self__  # FastStream's batch parser: its message class and consumer
    first, last = records[0], records[-1]
    return parser.msg_class(
        raw_message=records,
        body=(),
        message_id=f"{first.offset}-{last.offset}-{first.timestamp}",
        correlation_id=f"{first.topic}-{first.partition}-{first.offset}",
        consumer=parser._consumer,
    )


async def no_body(message: Any, original: Any) -> Any:
    """Nothing to decode: handlers read the raw records."""
    return None


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

    def may_be(self, types: Collection[str] | None, skip: Collection[str] = ()) -> bool:
        """Whether this record may be one of `types` (None: any) and none of `skip`, judged
        by its header only (a record without the header may be anything)."""
        if types is None and not skip:
            return True
        announced = self.event_type()
        if announced is None:
            return True
        return (types is None or announced in types) and announced not in skip


class Rejected(Exception):
    """Input a consumer cannot accept: it goes to the dead-letter topic with this reason, and
    `also` (events that tell the sender, say) goes out with it."""

    def __init__(self, code: str, reason: str, also: Sequence[outbox.Message] = ()) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.also = list(also)


# Errors that say the database, the broker or the network is unwell, not that a record is bad:
# the batch is retried, without limit, and nothing is dead-lettered for them.
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # the connection closed under us, among others
    asyncpg.exceptions.InternalClientError,  # "cannot switch to state …" after a cut
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    KafkaError,
)


def is_transient(exc: BaseException, conn: Conn | None = None) -> bool:
    """Whether `exc` says the database or broker is away (retry) rather than that the work
    itself is bad; a connection that closed while failing counts as away."""
    if isinstance(exc, TRANSIENT):
        return True
    return conn is not None and conn.is_closed()


class Transient(Exception):
    """The database or broker failed under a batch: roll it back and try it again later."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause


@contextlib.contextmanager
def transient_as_such() -> Iterator[None]:
    """Raise a failure that says the database or broker is away as `Transient` (the batch is
    tried again later, no record blamed); any other failure as it is."""
    try:
        yield
    except Transient:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise Transient(exc) from exc
        raise


@dataclass(frozen=True)
class Consumer:
    """Who consumes (its group), and how it treats records that fail."""

    name: str
    max_tries: int = 3
    preview_bytes: int = deadletters.DEFAULT_PREVIEW
    source: str = "complaints"  # the CloudEvents source of its service's events

    def refusal(self, record: Record, exc: Rejected) -> deadletters.Letter:
        """The dead letter for a record this consumer rejected."""
        return deadletters.Letter(
            record, exc.code, exc.reason, self.name, tuple(exc.also), self.source
        )


Handler = Callable[[Conn, Record], Awaitable[None]]


async def process_batch(
    *,
    pool: asyncpg.Pool,
    tracer: trace.Tracer,
    consumer: Consumer,
    records: Sequence[Record],
    handle: Handler,
) -> None:
    """Handle `records` in one transaction, each in its own trace span.

    Every record is first handled with no savepoint (two round trips each saved): the common
    case. If one is refused or fails, that transaction is rolled back whole and the batch is
    handled again with a savepoint per record, so only the bad one is set aside: a record the
    handler rejects is dead-lettered (through the outbox, in the same transaction); one that
    fails in a way nobody foresaw is tried again, up to `max_tries` times in all, then
    dead-lettered with the error's type: nothing loops forever. A transient failure (the
    database or broker away) raises `Transient`: the caller rolls the whole batch back and
    tries it again later, and no record is blamed for it.
    """
    with transient_as_such():
        async with pool.acquire() as conn:
            if await _all_at_once(conn, tracer, consumer, records, handle):
                return
            async with conn.transaction():
                for record in records:
                    span = _process_span(tracer, record, consumer.name)
                    with _in_span(span):
                        letter = await _handle_one(conn, record, handle, consumer, span)
                        if letter is not None:
                            await deadletters.store(
                                conn, [letter], preview_bytes=consumer.preview_bytes
                            )


async def _all_at_once(
    conn: Conn,
    tracer: trace.Tracer,
    consumer: Consumer,
    records: Sequence[Record],
    handle: Handler,
) -> bool:
    """Handle every record in one transaction without savepoints; False (and nothing kept)
    when one of them was refused or failed."""
    try:
        async with conn.transaction():
            for record in records:
                span = _process_span(tracer, record, consumer.name)
                with _in_span(span):
                    await handle(conn, record)
        return True
    except Exception as exc:
        if is_transient(exc, conn):
            raise Transient(exc) from exc
        return False


async def _handle_one(
    conn: Conn, record: Record, handle: Handler, consumer: Consumer, span: trace.Span
) -> deadletters.Letter | None:
    """Run `handle` on one record in a savepoint; the letter to write if it is refused."""
    for attempt in range(1, consumer.max_tries + 1):
        try:
            async with conn.transaction():
                await handle(conn, record)
            return None
        except Rejected as exc:
            span.set_attribute("complaints.deadletter.reason", exc.code)
            return consumer.refusal(record, exc)
        except Exception as exc:
            if is_transient(exc, conn):
                raise Transient(exc) from exc
            if attempt < consumer.max_tries:
                log.warning(
                    "%s: %s on %s[%d]@%d, try %d of %d",
                    consumer.name,
                    type(exc).__name__,
                    record.topic,
                    record.partition,
                    record.offset,
                    attempt,
                    consumer.max_tries,
                )
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            failed(span, exc)
            return failure_letter(record, exc, consumer)
    raise AssertionError("unreachable")


def failure_letter(record: Record, exc: Exception, consumer: Consumer) -> deadletters.Letter:
    """A bug must not block the partition: keep the record, dead-lettered with the error's type.

    Exception text may quote personal data: the type is logged as an error, the text (with
    the traceback) at debug.
    """
    log.error(
        "%s failed on %s[%d]@%d (%s); dead-lettered",
        consumer.name,
        record.topic,
        record.partition,
        record.offset,
        type(exc).__name__,
    )
    log.debug("consumer failure detail", exc_info=exc)
    return deadletters.Letter(
        record,
        "processing_error",
        f"the consumer failed on this record ({type(exc).__name__})",
        consumer.name,
        source=consumer.source,
    )


def _in_span(span: trace.Span, *, end_on_exit: bool = True) -> Any:
    """`span` made current (and ended on exit); an exception escaping it is not recorded there
    (its text may quote personal data): `telemetry.failed` notes the type where one matters."""
    return trace.use_span(
        span, end_on_exit=end_on_exit, record_exception=False, set_status_on_exception=False
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


def _sampled_out_context(
    record: Record, new_root: Callable[[], str] | None
) -> dict[str, str] | None:
    """The trace context of a record whose trace is not sampled, to carry on unchanged (same
    trace, still unsampled) by a consumer whose tracer `drops_unsampled_children`; for a
    record with no `traceparent`, a new unsampled trace's (`new_root`, when the tracer samples
    no new trace: `telemetry.unsampled_roots`). None when the record needs its span
    (`telemetry.sampled_out_parent`)."""
    headers = carrier(record.headers)
    parent = sampled_out_parent(headers)
    if parent is None and new_root is not None and "traceparent" not in headers:
        parent = new_root()
    return None if parent is None else {"traceparent": parent}


async def process_batch_together(
    *,
    pool: asyncpg.Pool,
    tracer: trace.Tracer,
    consumer: Consumer,
    records: Sequence[Record],
    parse: Callable[[Record], T],
    apply: Callable[[Conn, list[tuple[T, dict[str, str]]]], Awaitable[object]],
) -> None:
    """Parse each record, then apply all good ones at once, in one transaction.

    Each record gets its own span, whose context `apply` receives to continue the record's
    trace. Records `parse` rejects, or fails on, are dead-lettered. If applying the batch fails
    for a reason that is not transient, its transaction rolls back and a second one applies the
    good records one by one (each in a savepoint), dead-lettering only the one that fails: a
    poison record costs its batch speed, never the records behind it. (No savepoint in the
    common case: it would cost two round trips per batch.)
    """
    spans: list[trace.Span] = []
    carry = drops_unsampled_children(tracer)
    new_root = unsampled_roots(tracer)
    try:
        good: list[tuple[Record, T, dict[str, str]]] = []
        good_spans: list[trace.Span] = []
        letters: list[tuple[deadletters.Letter, dict[str, str]]] = []
        for record in records:
            # a record whose span would record nothing gets none: its context goes on as is,
            # or, when it came with none, a new trace's does
            carried = _sampled_out_context(record, new_root) if carry else None
            span: trace.Span = trace.INVALID_SPAN
            if carried is None:
                span = _process_span(tracer, record, consumer.name)
                spans.append(span)
            with _in_span(span, end_on_exit=False) if carried is None else contextlib.nullcontext():
                context = carried if carried is not None else inject_headers()
                try:
                    good.append((record, parse(record), context))
                    good_spans.append(span)
                except Rejected as exc:
                    span.set_attribute("complaints.deadletter.reason", exc.code)
                    letters.append((consumer.refusal(record, exc), context))
                except Exception as exc:
                    # a parser bug must cost this record only, never block the partition
                    failed(span, exc)
                    letters.append((failure_letter(record, exc, consumer), context))
        with transient_as_such():
            await _apply_together(pool, tracer, consumer, good, good_spans, letters, apply)
    finally:
        for span in spans:
            span.end()


async def _apply_together(
    pool: asyncpg.Pool,
    tracer: trace.Tracer,
    consumer: Consumer,
    good: list[tuple[Record, T, dict[str, str]]],
    spans: list[trace.Span],
    letters: list[tuple[deadletters.Letter, dict[str, str]]],
    apply: Callable[[Conn, list[tuple[T, dict[str, str]]]], Awaitable[object]],
) -> None:
    """Apply the parsed records all at once (in a span of the batch: see `_batch_span`); if
    that fails for a reason that is not transient, once more one by one (each in its record's
    span), dead-lettering only the one that fails."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                with _batch_span(tracer, good, spans):
                    await apply(conn, [(value, headers) for _, value, headers in good])
                await _store_letters(conn, letters, consumer)
            return
        except Exception as exc:
            if is_transient(exc, conn):
                raise Transient(exc) from exc
            log.error(
                "%s: batch of %d failed (%s); applying one by one",
                consumer.name,
                len(good),
                type(exc).__name__,
            )
            log.debug("batch failure detail", exc_info=True)
        # the batch's transaction rolled back whole: redo it record by record
        try:
            async with conn.transaction():
                letters += await _one_by_one(conn, good, spans, apply, consumer)
                await _store_letters(conn, letters, consumer)
        except Exception as exc:
            if is_transient(exc, conn):
                raise Transient(exc) from exc
            raise


def _batch_span(
    tracer: trace.Tracer, good: list[tuple[Record, Any, dict[str, str]]], spans: list[trace.Span]
) -> Any:
    """The span a batch's work runs in, so its statements are traced: a child of its first
    sampled record's span, linked to every other record's (a batch serves several traces)."""
    sampled = [s for s in spans if s.get_span_context().trace_flags.sampled]
    if not sampled:
        return contextlib.nullcontext()  # nothing of it would be recorded
    parent = sampled[0]
    span = tracer.start_span(
        f"{good[0][0].topic} apply",
        context=trace.set_span_in_context(parent),
        links=[
            trace.Link(s.get_span_context())
            for s in spans
            if s is not parent and s.get_span_context().is_valid
        ],
        attributes={"messaging.batch.message_count": len(spans)},
    )
    return _in_span(span)


async def _store_letters(
    conn: Conn, letters: list[tuple[deadletters.Letter, dict[str, str]]], consumer: Consumer
) -> None:
    for letter, headers in letters:
        await deadletters.store(conn, [letter], preview_bytes=consumer.preview_bytes, trace=headers)


async def _one_by_one(
    conn: Conn,
    good: list[tuple[Record, T, dict[str, str]]],
    spans: list[trace.Span],
    apply: Callable[[Conn, list[tuple[T, dict[str, str]]]], Awaitable[object]],
    consumer: Consumer,
) -> list[tuple[deadletters.Letter, dict[str, str]]]:
    letters = []
    for (record, value, headers), span in zip(good, spans, strict=True):

        async def handle(conn: Conn, _: Record) -> None:
            # awaited within this iteration: the loop's variables are still this record's; a
            # record carried without a span (its trace not sampled) runs in the context it came
            # with, so what it writes continues its trace
            current = (
                _in_span(span, end_on_exit=False)  # noqa: B023
                if span.get_span_context().is_valid  # noqa: B023
                else traced(headers)  # noqa: B023
            )
            with current:
                await apply(conn, [(value, headers)])  # noqa: B023

        # tried as often as a record handled alone
        letter = await _handle_one(conn, record, handle, consumer, span)
        if letter is not None:
            letters.append((letter, headers))
    return letters


def retry_delay(attempt: int) -> float:
    """Seconds to wait before retrying a batch after its `attempt`-th transient failure:
    doubling from 0.2 s, capped at 5 s, with jitter so replicas do not retry in step."""
    ceiling: float = min(0.2 * 2.0 ** max(attempt - 1, 0), 5.0)
    return ceiling / 2 + random.random() * ceiling / 2


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


def parse_event(record: Record) -> CloudEvent:
    """The CloudEvent in a record of `complaints.events.v1`, or `Rejected` saying why not."""
    if not record.value:
        raise Rejected("empty", "the record has no value")
    try:
        doc = jsonsafe.loads(record.value, max_bytes=MAX_EVENT_BYTES)
    except jsonsafe.JsonRejected as exc:
        raise Rejected(exc.code, f"the value is {exc.message}") from None
    if not isinstance(doc, dict):
        raise Rejected("not_cloudevent", "the value is JSON but not an object")
    try:
        return CloudEvent.model_validate(doc)
    except ValidationError as exc:
        raise Rejected(
            "not_cloudevent", f"not a CloudEvents 1.0 JSON event ({len(exc.errors())} errors)"
        ) from None
