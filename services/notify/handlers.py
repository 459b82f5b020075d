"""Notify's use cases: plan messages from events and keep the live stream (delivery: mailer)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime

from pydantic import BaseModel

from services.notify import domain, repository
from shared import directory, ids, inbox, outbox
from shared.db import Conn
from shared.events import CloudEvent, EventType, NotificationData, ReceivedData, RoutedData
from shared.kafka import Record
from shared.routing import EventRouter, decode
from shared.telemetry import sampled, traced

CONSUMER = "notify"
SOURCE = "complaints/notify"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Incoming:
    """An event off the topic, its data checked where notify acts on it, and its bytes."""

    event: CloudEvent
    raw: bytes
    routed: RoutedData | None = None
    received: ReceivedData | None = None


# The staff directory, learnt from intake (who may follow which team's stream).
staff = EventRouter(CONSUMER, strict=True)
directory.learn_staff(staff)

# The events whose data notify reads (every other event goes to the stream as it is).
MODELS: dict[str, type[BaseModel]] = {
    EventType.ROUTED: RoutedData,
    EventType.RECEIVED: ReceivedData,
}


def parse_record(record: Record) -> Incoming:
    """The event in a record of `complaints.events.v1`, or `Rejected` saying why not."""
    event, data = decode(record, MODELS)
    raw = record.value or b""
    if isinstance(data, RoutedData):
        return Incoming(event, raw, routed=data)
    if isinstance(data, ReceivedData):
        return Incoming(event, raw, received=data)
    return Incoming(event, raw)


def batch_handler(
    policy: domain.ReceiptPolicy,
) -> Callable[[Conn, list[tuple[Incoming, dict[str, str]]], datetime], Awaitable[None]]:
    """The consumer of domain events, with the receipt policy it plans by."""

    async def apply(
        conn: Conn, items: list[tuple[Incoming, dict[str, str]]], now: datetime
    ) -> None:
        await apply_events(conn, items, now=now, policy=policy)

    return apply


async def apply_events(
    conn: Conn,
    items: list[tuple[Incoming, dict[str, str]]],
    *,
    now: datetime,
    policy: domain.ReceiptPolicy,
) -> None:
    """Keep a batch of events for the stream and plan what they call for, in a few statements
    (redeliveries, and repeats within the batch, change nothing)."""
    fresh_ids = await inbox.first_times(conn, CONSUMER, [i.event.id for i, _ in items])
    fresh: list[tuple[Incoming, dict[str, str]]] = []
    for incoming, headers in items:
        if incoming.event.id in fresh_ids:
            fresh_ids.discard(incoming.event.id)  # a repeat later in the batch is not fresh
            fresh.append((incoming, headers))
    # teams first, so the stream rows of this batch are tagged with them
    await repository.remember_teams(
        conn, {i.routed.complaint_id: i.routed.team for i, _ in fresh if i.routed is not None}
    )
    await repository.add_many_to_stream(conn, [(i.event, i.raw) for i, _ in fresh])
    received = [(i.received, headers) for i, headers in fresh if i.received is not None]
    # every address's window locked and stored once per batch; receipts plan in event order
    windows = await repository.lock_windows(
        conn, [domain.address_key(d.customer.email) for d, _ in received if d.customer.email]
    )
    unsampled: list[repository.Planned] = []
    for data, headers in received:
        # in the event's own trace, which the receipt's delivery continues
        with traced(headers):
            planned = await plan_receipt(
                conn, data, now=now, policy=policy, trace=headers, windows=windows
            )
            if planned is not None and sampled():
                await repository.plan_many(conn, [planned])  # its statement shows in its trace
            elif planned is not None:
                unsampled.append(planned)  # no span would be recorded: planned together
    await repository.plan_many(conn, unsampled)
    await repository.save_windows(conn, windows)


async def plan_receipt(
    conn: Conn,
    data: ReceivedData,
    *,
    now: datetime,
    policy: domain.ReceiptPolicy,
    trace: dict[str, str],
    windows: dict[str, domain.Window],
) -> repository.Planned | None:
    """The customer's receipt to queue (held for a digest when the address is flooded, the
    digest planned here when it is new), or None with why none can be sent recorded; `trace` is
    the event's trace context, which delivery continues. `windows` holds the locked window of
    the receipt's address, updated here."""
    message = domain.receipt(data)
    notification_id = ids.new_uuid()
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
        await outbox.enqueue(
            conn, [notification_event(EventType.NOTIFICATION_FAILED, failed, trace)]
        )
        return None
    address = domain.address_key(message.recipient)
    window = windows[address]
    decision = domain.route_receipt(window, now=now, policy=policy)
    held_for = None
    if isinstance(decision, domain.HoldReceipt):
        held_for = window.digest_id
        if held_for is None or not await repository.digest_open(conn, held_for):
            held_for = await _open_digest(conn, data, message, due=decision.digest_due, trace=trace)
    windows[address] = replace(decision.window, digest_id=held_for)
    return repository.Planned(notification_id, data.complaint_id, message, trace, held_for)


async def _open_digest(
    conn: Conn,
    data: ReceivedData,
    receipt: domain.Message,
    *,
    due: datetime,
    trace: dict[str, str],
) -> str:
    """Plan a digest for the receipt's address, due when its interval ends; return its id."""
    digest_id = ids.new_uuid()
    await repository.plan(
        conn,
        notification_id=digest_id,
        complaint_id=data.complaint_id,
        # its subject and body are written when it is sent, listing the receipts it carries
        message=replace(receipt, kind="digest", subject="", body=""),
        trace_headers=trace,
        due=due,
    )
    return digest_id


def notification_event(
    type_: EventType, data: NotificationData, trace: dict[str, str] | None = None
) -> outbox.Message:
    """`notification.sent` / `notification.failed` about `data`'s complaint."""
    return outbox.complaint_event(
        type_, source=SOURCE, complaint_id=data.complaint_id, data=data, at=data.at, trace=trace
    )
