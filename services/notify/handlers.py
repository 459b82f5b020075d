"""Notify's use cases: plan messages from events, deliver them, and keep the live stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import uuid
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from services.notify import domain, repository
from shared import inbox, outbox
from shared.db import Conn
from shared.events import EventType, NotificationData, ReceivedData, RoutedData, utcnow
from shared.kafka import Record, Rejected, parse_event
from shared.settings import Settings
from shared.telemetry import extract_context, inject_headers

CONSUMER = "notify"
SOURCE = "complaints/notify"
log = logging.getLogger(__name__)


async def on_event_record(conn: Conn, record: Record, *, now: datetime) -> None:
    """Keep the event for the stream and plan what it calls for (redeliveries change nothing)."""
    event = parse_event(record)
    if not await inbox.first_time(conn, CONSUMER, event.id):
        return
    complaint_id = event.complaint_id()
    try:
        if event.type == EventType.ROUTED:
            routed = RoutedData.model_validate(event.data)
            await repository.remember_team(conn, routed.complaint_id, routed.team)
        await repository.add_to_stream(conn, event, complaint_id)
        if event.type == EventType.RECEIVED:
            await plan_receipt(conn, ReceivedData.model_validate(event.data), now=now)
    except ValidationError:
        raise Rejected("schema_violation", f"{event.type} data does not match its schema") from None


async def plan_receipt(conn: Conn, data: ReceivedData, *, now: datetime) -> None:
    """Queue the customer's receipt, or record why none can be sent."""
    trace.get_current_span().set_attribute("complaint.id", data.complaint_id)
    message = domain.receipt(data)
    notification_id = str(uuid.uuid4())
    if message is None:
        failed = NotificationData(
            complaint_id=data.complaint_id,
            notification_id=notification_id,
            kind="receipt",
            medium="email",
            language=data.customer.language(),
            at=now,
            reason="no e-mail address: the channel gave the customer their receipt",
        )
        await outbox.enqueue(conn, [_event(EventType.NOTIFICATION_FAILED, failed)])
        return
    await repository.plan(
        conn,
        notification_id=notification_id,
        complaint_id=data.complaint_id,
        message=message,
        trace_headers=inject_headers(),
    )


def _event(type_: EventType, data: NotificationData) -> outbox.Message:
    return outbox.complaint_event(
        type_, source=SOURCE, complaint_id=data.complaint_id, data=data, at=data.at
    )


def smtp_sender(settings: Settings) -> Callable[[EmailMessage], None]:
    """A blocking function that hands one message to the configured SMTP server."""

    def send(message: EmailMessage) -> None:
        with smtplib.SMTP(
            settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_s
        ) as smtp:
            smtp.send_message(message)

    return send


class Mailer:
    """Delivers planned messages: lease, send, then mark sent with its event in one transaction."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        send: Callable[[EmailMessage], None],
        sender_address: str,
        tracer: trace.Tracer,
        wake_relay: Callable[[], None],
        poll_interval_s: float = 1.0,
        lease_s: float = 60.0,
    ) -> None:
        self._pool = pool
        self._send = send
        self._from = sender_address
        self._tracer = tracer
        self._wake_relay = wake_relay
        self._poll = poll_interval_s
        self._lease = lease_s
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before looking, so a wake-up during delivery is kept
            try:
                delivered = await self.deliver_due()
            except Exception as exc:
                log.warning("mailer pass failed: %s", type(exc).__name__)
                delivered = 0
                await asyncio.sleep(self._poll)
            if delivered:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll)

    async def deliver_due(self, limit: int = 20) -> int:
        """Deliver what is due now; return how many were attempted."""
        async with self._pool.acquire() as conn:
            rows = await repository.claim_due(conn, limit=limit, lease_s=self._lease)
        for row in rows:
            await self._deliver(row)
        if rows:
            self._wake_relay()
        return len(rows)

    async def _deliver(self, row: asyncpg.Record) -> None:
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
            message = EmailMessage()
            message["From"] = self._from
            message["To"] = row["recipient"]
            message["Subject"] = row["subject"]
            message["Date"] = formatdate(localtime=False)
            # Stable per notification, so a receiver can drop the rare resend after a crash.
            message["Message-ID"] = f"<{row['notification_id']}@complaints>"
            message["X-Complaint-Id"] = row["complaint_id"]
            message.set_content(row["body"])
            error: str | None = None
            try:
                await asyncio.to_thread(self._send, message)
            except (OSError, smtplib.SMTPException) as exc:
                error = type(exc).__name__
                span.set_status(Status(StatusCode.ERROR, error))
            await self._record(row, error)

    async def _record(self, row: asyncpg.Record, error: str | None) -> None:
        data = NotificationData(
            complaint_id=row["complaint_id"],
            notification_id=row["notification_id"],
            kind=row["kind"],
            medium=row["medium"],
            language=row["language"],
            at=utcnow(),
            reason=error,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            if error is None:
                await repository.mark_sent(conn, row["notification_id"])
                await outbox.enqueue(conn, [_event(EventType.NOTIFICATION_SENT, data)])
                return
            final = row["attempts"] >= domain.MAX_ATTEMPTS
            await repository.mark_failed(
                conn,
                row["notification_id"],
                error,
                final=final,
                retry_in_s=domain.retry_delay_s(row["attempts"]),
            )
            if final:
                await outbox.enqueue(conn, [_event(EventType.NOTIFICATION_FAILED, data)])
