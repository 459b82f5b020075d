"""What every service is made of: a FastStream broker, a pool, an outbox relay and HTTP routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from aiokafka import AIOKafkaProducer
from fastapi import APIRouter
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.message import KafkaMessage
from opentelemetry.sdk.trace import TracerProvider

from shared import (
    auth,
    db,
    deadletters,
    directory,
    fetch_pacing,
    kafka,
    migrate,
    outbox,
    retention,
    topics,
)
from shared.db import Conn
from shared.events import utcnow
from shared.outbox import OutboxRelay
from shared.routing import EventRouter
from shared.settings import Settings
from shared.telemetry import build_tracer_provider, service_name, tracer
from shared.web import Problem, traced_route_class
from shared.workers import Worker

log = logging.getLogger(__name__)
T = TypeVar("T")


class Service:
    """One service: subclasses register their subscribers and routes in `register`."""

    name: ClassVar[str]
    migrations_package: ClassVar[str]

    def __init__(
        self,
        settings: Settings,
        *,
        secret: bytes,
        tracer_provider: TracerProvider | None = None,
        alone: bool = True,
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.members = directory.Recent(settings.staff_recheck_s)
        self._owns_provider = tracer_provider is None
        self.tracer_provider = tracer_provider or build_tracer_provider(
            service_name(self.name, alone=alone)
        )
        self.tracer = tracer(self.tracer_provider)
        self.group_id = f"complaints-{self.name}"
        self.broker = KafkaBroker(
            settings.kafka_client_options()["bootstrap_servers"],
            client_id=f"complaints-{self.name}",
            request_timeout_ms=30_000,
            security=kafka.faststream_security(settings),
            logger=logging.getLogger(f"complaints.broker.{self.name}"),
            log_level=logging.DEBUG,
            graceful_timeout=15.0,
        )
        self.router = APIRouter(route_class=traced_route_class(self.tracer))
        self._pool: db.Pool | None = None
        # the workers a commit may wake, by name (see `db.wake_after_commit`)
        self.wakers: dict[str, Callable[[], None]] = {}
        self._producer: AIOKafkaProducer | None = None
        self._relay: OutboxRelay | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._workers: list[Worker] = []
        # the consumer groups paced by the records they act on, each with its pacing once its
        # subscriber has started (None until then, or when its fetches are not paced)
        self._judged: dict[str, fetch_pacing.Pacing | None] = {}
        self._cancel_on_stop: list[asyncio.Task[Any]] = []
        self.register()

    def register(self) -> None:
        """Declare subscribers (with `consume`) and routes on `self.router`."""

    def consume(
        self,
        topic: str,
        router: EventRouter,
        *,
        after: Callable[[], None] | None = None,
        group: str | None = None,
        follower: bool = False,
        one_per_transaction: bool = False,
    ) -> None:
        """Consume `topic` in ordered, at-least-once batches, one transaction each; each record
        goes to `router` (see `kafka.process_batch`).

        Records whose type header (`event-type`) names a type the router does not act on, or
        one it ignores, are skipped unread (no transaction, no span); records without the
        header still reach it.
        A `follower` is off every latency path and fetches less often (see
        `kafka.consumer_options`). With `one_per_transaction`, each record gets a transaction
        of its own (for a handler that locks what other transactions lock too: a batch holding
        several such locks could close a cycle).
        """
        consumer = self._consumer(group or self.group_id)
        types, skip = router.types, router.ignored

        async def process(records: list[kafka.Record], now: datetime) -> None:
            records = self._acted_on(consumer.name, records, types, skip)
            if not records:
                return
            if one_per_transaction and len(records) > 1:
                for record in records:
                    await process([record], now)
                return

            async def one(conn: Conn, record: kafka.Record) -> None:
                await router(conn, record, now=now)

            await kafka.process_batch(
                pool=self.pool,
                tracer=self.tracer,
                consumer=consumer,
                records=records,
                handle=one,
            )

        judged = types is not None or bool(skip)
        self._subscribe(topic, consumer, process, after, follower=follower, judged=judged)

    def learn_staff(self, router: EventRouter) -> None:
        """Keep this service's replica of the staff directory with `router` (a follower of
        the staff topic: within a quarter second); after each batch learnt, the members kept
        for token checks are forgotten, so a change counts at once on this replica."""
        self.consume(
            topics.STAFF,
            router,
            group=f"{self.group_id}-staff",
            follower=True,
            after=self.members.clear,
        )

    def consume_together(
        self,
        topic: str | tuple[str, ...],
        parse: Callable[[kafka.Record], T],
        apply: Callable[[Conn, list[tuple[T, dict[str, str]]], datetime], Awaitable[object]],
        *,
        group: str | None = None,
        after: Callable[[], None] | None = None,
        only: Collection[str] | None = None,
        skip: Collection[str] = (),
        follower: bool = False,
    ) -> None:
        """Consume `topic` (or several, one group) in batches applied all at once (see
        `kafka.process_batch_together`);
        after a batch commits, `after` is called (the commit itself wakes the
        workers it gave work, see `db.wake_after_commit`). Records whose type header names a
        type not in `only` (when given) or in `skip` are passed over unread (`apply` must still
        pass over such a record that came without the header). A `follower` is off every
        latency path (see `consume`)."""
        consumer = self._consumer(group or self.group_id)
        judged = only is not None or bool(skip)

        async def process(records: list[kafka.Record], now: datetime) -> None:
            records = self._acted_on(consumer.name, records, only, skip)
            if not records:
                return
            await kafka.process_batch_together(
                pool=self.pool,
                tracer=self.tracer,
                consumer=consumer,
                records=records,
                parse=parse,
                apply=lambda conn, items: apply(conn, items, now),
            )

        self._subscribe(topic, consumer, process, after, follower=follower, judged=judged)

    def _consumer(self, group_id: str) -> kafka.Consumer:
        return kafka.Consumer(
            group_id,
            source=f"complaints/{self.name}",
            max_tries=self.settings.consumer_max_tries,
            preview_bytes=self.settings.deadletter_preview_bytes,
        )

    def _subscribe(
        self,
        topic: str | tuple[str, ...],
        consumer: kafka.Consumer,
        process: Callable[[list[kafka.Record], datetime], Awaitable[None]],
        after: Callable[[], None] | None,
        *,
        follower: bool = False,
        judged: bool = False,
    ) -> None:
        """One at-least-once batch subscriber over raw records (see `kafka.raw_batch`).
        A `judged` subscriber's fetches are paced by the records it acts on (`_acted_on`), not
        by every record its topic carries (see `fetch_pacing.Pacing`).

        The database or broker being away rewinds the batch and retries it with capped,
        jittered back-off, one log line each time, for as long as it takes. A batch that fails
        for any other reason is retried a few times, then handled record by record in
        transactions of their own, so a record that still fails is dead-lettered alone and the
        partition moves on. After a batch commits, `after` is called.
        """
        group_id = consumer.name
        batches = _BatchFailures(self.name, group_id, consumer.max_tries)
        if judged:
            self._judged[group_id] = None

        @self.broker.subscriber(  # type: ignore[untyped-decorator]
            *((topic,) if isinstance(topic, str) else topic),
            group_id=group_id,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            parser=kafka.raw_batch,
            decoder=kafka.no_body,
            group_instance_id=kafka.instance_id(self.settings, group_id),
            **kafka.consumer_options(self.settings, follower=follower),
        )
        async def on_batch() -> None:
            # the message from FastStream's context, not as an argument: a `KafkaMessage`
            # parameter is resolved by a synchronous context lookup that FastStream's
            # dependency injection runs in a worker thread, a thread hand-off per batch
            message: KafkaMessage | None = self.broker.context.get_local("message")
            if message is None:
                raise RuntimeError(f"{group_id}: FastStream gave no message to this batch")
            records = [kafka.Record.of(raw) for raw in message.raw_message]
            try:
                await process(records, utcnow())
            except kafka.Transient as exc:
                await asyncio.sleep(batches.transient(exc))
                await message.nack()
                return
            except Exception as exc:
                if batches.unexpected(records, exc) < batches.max_tries:
                    await asyncio.sleep(kafka.retry_delay(1))
                    await message.nack()
                    return
                try:
                    await self._one_at_a_time(records, process, consumer)
                except kafka.Transient as cause:
                    await asyncio.sleep(batches.transient(cause))
                    await message.nack()
                    return
            batches.succeeded(records)
            if after is not None:
                after()

    async def _one_at_a_time(
        self,
        records: list[kafka.Record],
        process: Callable[[list[kafka.Record], datetime], Awaitable[None]],
        consumer: kafka.Consumer,
    ) -> None:
        """Each record of a batch that keeps failing in a transaction of its own; one that still
        fails, not for a transient reason, is dead-lettered whole with the error's type."""
        for record in records:
            try:
                await process([record], utcnow())
            except kafka.Transient:
                raise
            except Exception as exc:
                if kafka.is_transient(exc):
                    raise kafka.Transient(exc) from exc
                letter = kafka.failure_letter(record, exc, consumer)
                try:
                    async with self.pool.acquire() as conn, conn.transaction():
                        await deadletters.store(
                            conn, [letter], preview_bytes=consumer.preview_bytes
                        )
                except Exception as cause:
                    if not kafka.is_transient(cause):
                        # a letter must be kept before the record is passed: try the batch
                        # again later rather than lose it
                        log.error(
                            "%s: could not keep a dead letter (%s); the batch waits",
                            consumer.name,
                            type(cause).__name__,
                        )
                    raise kafka.Transient(cause) from cause

    def retention_rules(self) -> list[retention.Rule]:
        """What this service deletes once old: published outbox rows and inbox rows; a
        service adds its own."""
        return [
            retention.Rule(
                "outbox", "sent_at", timedelta(hours=self.settings.outbox_retention_hours)
            ),
            retention.Rule(
                "inbox", "handled_at", timedelta(hours=self.settings.inbox_retention_hours)
            ),
            retention.Rule(
                "deadletters", "at", timedelta(hours=self.settings.deadletter_retention_hours)
            ),
            # fired and cancelled timers go with the inbox rows: the events that could arm
            # them again are deduplicated for as long (failed timers stay for an operator)
            retention.Rule(
                "timers", "fired_at", timedelta(hours=self.settings.inbox_retention_hours)
            ),
            retention.Rule(
                "timers", "cancelled_at", timedelta(hours=self.settings.inbox_retention_hours)
            ),
        ]

    async def on_open(self) -> None:
        """Start the service's own background work (called once the pool and relay are up)."""

    @property
    def pool(self) -> db.Pool:
        if self._pool is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._pool

    @property
    def relay(self) -> OutboxRelay:
        if self._relay is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._relay

    @classmethod
    async def migrate(cls, database_url: str) -> list[str]:
        """Apply this service's migrations to its schema; return the versions applied."""
        return await migrate.apply(
            database_url, cls.name, migrate.for_service(cls.migrations_package)
        )

    def spawn(self, coro: Coroutine[Any, Any, Any], *, drain: bool = True) -> None:
        """Run `coro` until the service stops; a crash is logged, not silent. On stop, a
        `drain` task (told to stop by its owner) gets a moment to finish its work; the others
        are cancelled at once."""
        task = asyncio.create_task(coro)
        task.add_done_callback(_report_crash)
        (self._tasks if drain else self._cancel_on_stop).append(task)

    async def staff_member(self, conn: Conn | None, token: str) -> directory.Member:
        """The active member a staff token names, or `auth.InvalidToken` saying why not,
        checked as every entry point must (HTTP, the command topic, the stream): signature,
        expiry and lifetime, then this service's replica of the directory, read again once
        the member was last read `staff_recheck_s` ago (`directory.Recent`). Without `conn`,
        a connection is taken from the pool only when the directory must be read."""
        principal = auth.verify_token(
            self.secret,
            token,
            kind=auth.STAFF,
            max_lifetime_s=self.settings.staff_token_max_lifetime_s,
        )

        async def read(staff_id: str) -> directory.Member | None:
            if conn is not None:
                return await directory.find_member(conn, staff_id)
            async with self.pool.acquire() as own:
                return await directory.find_member(own, staff_id)

        return await directory.admit(principal, self.members, read)

    async def staff_or_401(self, conn: Conn | None, token: str) -> directory.Member:
        """`staff_member` for an HTTP route: a token that is refused answers 401 with why."""
        try:
            return await self.staff_member(conn, token)
        except auth.InvalidToken as refused:
            raise Problem(401, "Unauthorized", f"staff token rejected: {refused}") from None

    def run_worker(self, name: str, worker: Worker) -> None:
        """Run `worker` until the service stops, woken by commits that ask for `name`."""
        self.wakers[name] = worker.wake
        self._workers.append(worker)
        self.spawn(worker.run())

    async def open(self) -> None:
        """Pool, producer and relay: everything but consumption."""
        self._pool = await db.create_pool(
            self.settings.require_database_url(),
            schema=self.name,
            application=f"complaints-{self.name}",
            tracer=self.tracer,
            max_size=self.settings.database_pool_size,
            wakers=self.wakers,
        )
        self._producer = kafka.build_producer(
            self.settings, client_id=f"complaints-{self.name}-relay"
        )
        await self._producer.start()
        self._relay = OutboxRelay(
            pool=self._pool,
            publisher=kafka.BatchPublisher(self._producer),
            tracer=self.tracer,
            poll_interval_s=self.settings.outbox_poll_interval_s,
            lag_alarm_s=self.settings.outbox_lag_alarm_s,
        )
        self.run_worker(outbox.WORKER, self._relay)
        self.run_worker(
            retention.WORKER,
            retention.worker(
                self._pool,
                self.retention_rules(),
                every_s=self.settings.retention_interval_s,
                service=self.name,
            ),
        )
        await self.on_open()

    async def start(self) -> None:
        """Open, then consume."""
        await self.open()
        await self.start_consuming()

    async def start_consuming(self) -> None:
        """Every subscriber joins its group, all at the same time (a join takes seconds on
        some brokers; one after another, they would add up)."""
        await self.broker.connect()
        await asyncio.gather(*(subscriber.start() for subscriber in self.broker.subscribers))
        self.broker.running = True
        for subscriber in self.broker.subscribers:
            consumer = getattr(subscriber, "consumer", None)  # FastStream's Kafka subscriber's
            group_id = str(getattr(subscriber, "group_id", ""))
            judged = group_id in self._judged
            pacing = fetch_pacing.pace(
                consumer, self.settings.kafka_idle_fetch_wait_ms, judged=judged
            )
            if judged:
                self._judged[group_id] = pacing

    def _acted_on(
        self,
        group_id: str,
        records: list[kafka.Record],
        only: Collection[str] | None,
        skip: Collection[str],
    ) -> list[kafka.Record]:
        """The records of a batch that its subscriber acts on, judged by their type header
        (`only`: None for any type; never one in `skip`); a judged subscriber (see `_subscribe`)
        that acts on any is busy."""
        if only is None and not skip:
            return records
        records = [r for r in records if r.may_be(only, skip)]
        pacing = self._judged.get(group_id)
        if records and pacing is not None:
            pacing.acted()
        return records

    async def stop(self) -> None:
        """Stop consuming, let the relay publish what is committed, then release everything."""
        with contextlib.suppress(Exception):
            await self.broker.stop()
        for worker in self._workers:
            worker.stop()
        self._workers.clear()
        for task in self._cancel_on_stop:
            task.cancel()
        await asyncio.gather(*self._cancel_on_stop, return_exceptions=True)
        self._cancel_on_stop.clear()
        for task in self._tasks:
            if task is not None and not task.done():
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), timeout=2.0)
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._owns_provider:
            self.tracer_provider.shutdown()
        else:
            self.tracer_provider.force_flush()

    async def ready(self) -> dict[str, str]:
        """Whether the database and the broker answer (for `/readyz`)."""
        checks: dict[str, str] = {}
        try:
            async with self.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unreachable ({type(exc).__name__})"
        try:
            assert self._producer is not None
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 5)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unreachable ({type(exc).__name__})"
        return checks

    async def health(self) -> dict[str, Any]:
        """Detail that does not decide readiness (every replica shares it): the outbox relay's
        progress, and the dead letters kept."""
        try:
            async with self.pool.acquire() as conn:
                relay = await outbox.health(conn, lag_alarm_s=self.settings.outbox_lag_alarm_s)
                letters = await conn.fetchval(
                    "SELECT count(*) FROM deadletters WHERE replayed_at IS NULL"
                )
        except Exception as exc:
            return {"outbox": {"status": f"unknown ({type(exc).__name__})"}}
        return {"outbox": relay, "deadletters": letters}


class _BatchFailures:
    """What a subscriber remembers of failed batches: how long to back off while the database
    or broker is away, and how often the batch at a position failed for other reasons."""

    def __init__(self, service: str, group: str, max_tries: int) -> None:
        self.service = service
        self.group = group
        self.max_tries = max_tries
        self._transient = 0
        self._unexpected: dict[tuple[str, int, int], int] = {}

    def transient(self, exc: kafka.Transient) -> float:
        """Count a transient failure; the back-off before the batch is tried again."""
        self._transient += 1
        delay = kafka.retry_delay(self._transient)
        log.warning(
            "%s/%s: %s (%s); retrying the batch in %.1fs",
            self.service,
            self.group,
            "database or broker unavailable",
            type(exc.cause).__name__,
            delay,
        )
        return delay

    def unexpected(self, records: list[kafka.Record], exc: Exception) -> int:
        """Count an unexpected failure of the batch starting at `records[0]`; how many so far.
        The traceback is logged the first time only."""
        first = records[0]
        key = (first.topic, first.partition, first.offset)
        count = self._unexpected.get(key, 0) + 1
        if len(self._unexpected) > 1000:
            self._unexpected.clear()
        self._unexpected[key] = count
        log.error(
            "%s/%s: batch at %s[%d]@%d failed (%s), try %d of %d",
            self.service,
            self.group,
            *key,
            type(exc).__name__,
            count,
            self.max_tries,
        )
        if count == 1:  # the traceback may quote data: debug only
            log.debug("batch failure detail", exc_info=exc)
        return count

    def succeeded(self, records: list[kafka.Record]) -> None:
        self._transient = 0
        if self._unexpected and records:
            first = records[0]
            self._unexpected.pop((first.topic, first.partition, first.offset), None)


def _report_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("background task %s crashed (%s)", task.get_name(), type(exc).__name__)
        log.debug("background task failure detail", exc_info=exc)
