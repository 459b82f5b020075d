"""Notify's use cases: plan messages from events and keep the live stream (delivery: mailer)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime

from opentelemetry import trace
from pydantic import ValidationError

from services.notify import domain, repository
from shared import inbox, outbox
from shared.db import Conn
from shared.events import EventType, NotificationData, ReceivedData, RoutedData
from shared.kafka import Record, Rejected, parse_event
from shared.service import RecordHandler
from shared.telemetry import inject_headers

CONSUMER = "notify"
SOURCE = "complaints/notify"
log = logging.getLogger(__name__)


def event_handler(policy: domain.ReceiptPolicy) -> RecordHandler:
    """The consumer of domain events, with the receipt policy it plans by."""

    async def handle(conn: Conn, record: Record, *, now: datetime) -> None:
        await on_event_record(conn, record, now=now, policy=policy)

    return handle


async def on_event_record(
    conn: Conn, record: Record, *, now: datetime, policy: domain.ReceiptPolicy
) -> None:
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
            received = ReceivedData.model_validate(event.data)
            await plan_receipt(conn, received, now=now, policy=policy)
    except ValidationError:
        raise Rejected("schema_violation", f"{event.type} data does not match its schema") from None


async def plan_receipt(
    conn: Conn, data: ReceivedData, *, now: datetime, policy: domain.ReceiptPolicy
) -> None:
    """Queue the customer's receipt (held for a digest when the address is flooded), or record
    why none can be sent."""
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
    address = domain.address_key(message.recipient)
    window = await repository.lock_window(conn, address)
    decision = domain.route_receipt(window, now=now, policy=policy)
    held_for = None
    if isinstance(decision, domain.HoldReceipt):
        held_for = window.digest_id
        if held_for is None or not await repository.digest_open(conn, held_for):
            held_for = await _open_digest(conn, data, message, due=decision.digest_due)
    await repository.save_window(conn, address, replace(decision.window, digest_id=held_for))
    await repository.plan(
        conn,
        notification_id=notification_id,
        complaint_id=data.complaint_id,
        message=message,
        trace_headers=inject_headers(),
        held_for=held_for,
    )


async def _open_digest(
    conn: Conn, data: ReceivedData, receipt: domain.Message, *, due: datetime
) -> str:
    """Plan a digest for the receipt's address, due when its interval ends; return its id."""
    digest_id = str(uuid.uuid4())
    await repository.plan(
        conn,
        notification_id=digest_id,
        complaint_id=data.complaint_id,
        # its subject and body are written when it is sent, listing the receipts it carries
        message=replace(receipt, kind="digest", subject="", body=""),
        trace_headers=inject_headers(),
        due=due,
    )
    return digest_id


def _event(type_: EventType, data: NotificationData) -> outbox.Message:
    return outbox.complaint_event(
        type_, source=SOURCE, complaint_id=data.complaint_id, data=data, at=data.at
    )
