"""The mailer: claims due messages under a renewed lease, sends several at once over a few
kept-alive SMTP connections, and records their outcomes a batch per transaction."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.notify import domain, repository
from services.notify.handlers import notification_event
from services.notify.smtp import LeaseLost, SmtpPool, describe
from shared import outbox
from shared.db import Conn
from shared.events import EventType, NotificationData, utcnow
from shared.telemetry import extract_context, inject_headers
from shared.workers import Loop

log = logging.getLogger(__name__)


@dataclass
class _Job:
    """A message this mailer holds a lease on."""

    row: asyncpg.Record
    renewal_asked: float  # monotonic time the last successful claim or renewal was asked for
    refs: list[str] = field(default_factory=list)  # a digest's complaints
    lost: bool = False  # a renewal found the lease gone
    started: bool = False  # handed to SMTP
    trace: dict[str, str] = field(default_factory=dict)  # its delivery span, for its events

    @property
    def id(self) -> str:
        return str(self.row["notification_id"])


_NOT_SENT = "not sent: lease lost"


@dataclass(frozen=True)
class _Outcome:
    job: _Job
    error: str | None  # None: the server accepted it


# The name the mailer is woken by after a commit that planned a message.
MAILER = repository.WORKER


class Mailer:
    """Delivers planned messages; several mailers (replicas) may share the database."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        smtp: SmtpPool,
        sender_address: str,
        tracer: trace.Tracer,
        lease_s: float = 10.0,
        max_in_flight: int = 32,
        poll_interval_s: float = 1.0,
        max_attempts: int = domain.MAX_ATTEMPTS,
        retry_delay_s: Callable[[int], float] = domain.retry_delay_s,
        record_delay_s: float = 0.01,
    ) -> None:
        self._pool = pool
        self._smtp = smtp
        self._from = sender_address
        self._tracer = tracer
        self._lease = lease_s
        self._max_in_flight = max_in_flight
        self._poll = poll_interval_s
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay_s
        self._record_delay = record_delay_s
        self.owner = uuid.uuid4()
        self._jobs: dict[str, _Job] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._outcomes: list[_Outcome] = []
        self._have_outcomes = asyncio.Event()
        self._loop = Loop("mailer", self._step, backoff_s=poll_interval_s)

    def wake(self) -> None:
        """Look for due messages now (a commit that planned some does, see `repository.plan`)."""
        self._loop.wake()

    def stop(self) -> None:
        self._loop.stop()

    async def run(self) -> None:
        """Claim and deliver until stopped; a failure is logged and tried again, never fatal."""
        helpers = [
            asyncio.create_task(self._record_loop()),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        try:
            await self._loop.run()
        finally:
            await self._shut_down(helpers)

    async def _step(self) -> float:
        """Claim what there is room for; look again at once if that filled the room (more may
        be due), else when woken (a commit, or room freed) or after the poll interval."""
        room = self._max_in_flight - len(self._jobs)
        if room <= 0:
            return self._poll
        claimed = await self.claim(room)
        return 0.0 if claimed == room else self._poll

    async def claim(self, limit: int) -> int:
        """Lease up to `limit` due messages and start delivering them; return how many."""
        asked = time.monotonic()
        async with self._pool.acquire() as conn:
            rows = await repository.claim_due(
                conn, limit=limit, lease_s=self._lease, owner=self.owner, holding=list(self._jobs)
            )
            # read after the claim committed: from then on no receipt joins these digests
            digests = [r["notification_id"] for r in rows if r["kind"] == "digest"]
            refs = await repository.digest_refs(conn, digests) if digests else {}
        for row in rows:
            job = _Job(row, asked, refs.get(row["notification_id"], []))
            self._jobs[job.id] = job
            task = asyncio.create_task(self._deliver(job))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
        return len(rows)

    def _may_send(self, job: _Job) -> bool:
        ok = not job.lost and domain.may_send(
            renewal_asked_s=job.renewal_asked, now_s=time.monotonic(), lease_s=self._lease
        )
        job.started = ok
        return ok

    async def _deliver(self, job: _Job) -> None:
        row = job.row
        with self._tracer.start_as_current_span(
            "notification deliver",
            context=extract_context(row["trace_headers"]),
            kind=SpanKind.CLIENT,
            attributes={
                "complaint.id": row["complaint_id"],
                "notification.kind": row["kind"],
                "notification.medium": row["medium"],
            },
        ) as span:
            job.trace = inject_headers()
            error: str | None = None
            if row["kind"] == "digest" and not job.refs:
                pass  # every receipt it held is settled: nothing to confirm
            else:
                try:
                    message = self._compose(job)
                    await self._smtp.send(message, still_ours=lambda: self._may_send(job))
                except LeaseLost:
                    error = _NOT_SENT
                except Exception as exc:  # whatever it is, the message is retried later
                    error = describe(exc)
                if error is not None:
                    span.set_status(Status(StatusCode.ERROR, error))
        self._outcomes.append(_Outcome(job, error))
        self._have_outcomes.set()

    def _compose(self, job: _Job) -> domain.Mail:
        row = job.row
        subject, body = row["subject"], row["body"]
        if row["kind"] == "digest":
            built = domain.digest(row["recipient"], row["language"], job.refs)
            subject, body = built.subject, built.body
        # Message-ID is stable per notification, so a receiver can drop the rare resend after
        # a crash
        headers = [("Message-ID", f"<{row['notification_id']}@complaints>")]
        if row["kind"] == "digest":
            headers.append(("X-Digest-Id", row["notification_id"]))
        else:
            headers.append(("X-Complaint-Id", row["complaint_id"]))
        return domain.render(
            sender=self._from,
            recipient=row["recipient"],
            subject=subject,
            body=body,
            date=formatdate(localtime=False),
            headers=headers,
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(domain.heartbeat_every_s(self._lease))
            jobs = [j for j in self._jobs.values() if not j.lost]
            if not jobs:
                continue
            asked = time.monotonic()
            try:
                async with self._pool.acquire() as conn:
                    kept = await repository.renew(
                        conn, [j.id for j in jobs], lease_s=self._lease, owner=self.owner
                    )
            except Exception as exc:
                log.warning("mailer lease renewal failed: %s", type(exc).__name__)
                continue
            for job in jobs:
                if job.id in kept:
                    job.renewal_asked = asked
                else:
                    job.lost = True

    async def _record_loop(self) -> None:
        while True:
            await self._have_outcomes.wait()
            # outcomes that arrive meanwhile share the transaction (and free their slots together)
            await asyncio.sleep(self._record_delay)
            self._have_outcomes.clear()
            try:
                await self._flush()
            except Exception as exc:
                log.warning("mailer could not record outcomes: %s", type(exc).__name__)
                await asyncio.sleep(self._poll)
                self._have_outcomes.set()

    async def _flush(self) -> None:
        """Record the outcomes so far in one transaction; they stay held until it commits."""
        batch = list(self._outcomes)
        if not batch:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await self._record(conn, batch)
        del self._outcomes[: len(batch)]
        for outcome in batch:
            self._jobs.pop(outcome.job.id, None)
        self._loop.wake()  # room for more

    async def _record(self, conn: Conn, batch: list[_Outcome]) -> None:
        jobs = {o.job.id: o.job for o in batch}
        sent = [o.job.id for o in batch if o.error is None]
        unsent = [o.job.id for o in batch if o.error == _NOT_SENT]
        failed = [o for o in batch if o.error not in (None, _NOT_SENT)]
        events: list[outbox.Message] = []
        if sent:
            rows = await repository.mark_sent(conn, sent, owner=self.owner)
            digests = [r["notification_id"] for r in rows if r["kind"] == "digest"]
            if digests:
                rows += await repository.settle_held(
                    conn, digests, [None] * len(digests), status="sent"
                )
            events += _events(EventType.NOTIFICATION_SENT, rows, jobs)
        if failed:
            rows = await repository.mark_failed(
                conn,
                [o.job.id for o in failed],
                [o.error or "" for o in failed],
                [o.job.row["attempts"] >= self._max_attempts for o in failed],
                [self._retry_delay(o.job.row["attempts"]) for o in failed],
                owner=self.owner,
            )
            errors = {o.job.id: o.error for o in failed}
            digests = [r["notification_id"] for r in rows if r["kind"] == "digest"]
            if digests:
                rows += await repository.settle_held(
                    conn, digests, [errors[d] for d in digests], status="failed"
                )
            events += _events(EventType.NOTIFICATION_FAILED, rows, jobs, errors)
        if unsent:
            await repository.release(conn, unsent, owner=self.owner)
        await outbox.enqueue(conn, events)

    async def _shut_down(self, helpers: list[asyncio.Task[None]]) -> None:
        """Let deliveries under way finish for a moment, record what is known, and give back
        the leases of messages never handed to SMTP (the others' leases run out)."""
        if self._deliveries:
            await asyncio.wait(set(self._deliveries), timeout=1.0)
        for task in [*self._deliveries, *helpers]:
            task.cancel()
        await asyncio.gather(*self._deliveries, *helpers, return_exceptions=True)
        try:
            await self._flush()
            unstarted = [j.id for j in self._jobs.values() if not j.started]
            if unstarted:
                async with self._pool.acquire() as conn:
                    await repository.release(conn, unstarted, owner=self.owner)
        except Exception as exc:
            log.warning("mailer could not settle on stop: %s", type(exc).__name__)
        await self._smtp.close()


def _events(
    type_: EventType,
    rows: Iterable[asyncpg.Record],
    jobs: dict[str, _Job],
    errors: dict[str, str | None] | None = None,
) -> list[outbox.Message]:
    """One event per complaint told (or not): a digest's own row has none, the receipts it
    carried each have theirs, continuing the trace of the delivery that settled them."""
    events = []
    at = utcnow()
    for row in rows:
        if row["kind"] == "digest":
            continue
        via = row["digest_id"] or row["notification_id"]
        data = NotificationData(
            complaint_id=row["complaint_id"],
            notification_id=row["notification_id"],
            kind=row["kind"],
            medium=row["medium"],
            language=row["language"],
            at=at,
            reason=(errors or {}).get(via),
            digest_id=row["digest_id"],
        )
        job = jobs.get(via)
        trace_headers: dict[str, Any] | None = job.trace if job and job.trace else None
        events.append(notification_event(type_, data, trace_headers))
    return events
