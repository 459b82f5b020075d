"""Resolution's use cases: every event of a complaint lands on its case, once."""

from __future__ import annotations

from datetime import datetime

from opentelemetry import trace
from pydantic import ValidationError

from services.resolution import domain, repository
from shared import inbox
from shared.db import Conn
from shared.events import (
    ChannelKeyData,
    CloudEvent,
    EventType,
    ReassignedData,
    ReceivedData,
    RoutedData,
)
from shared.kafka import Record, Rejected, parse_event
from shared.web import field_errors, summarise

CONSUMER = "resolution"


async def on_event_record(conn: Conn, record: Record, *, now: datetime) -> None:
    """Apply one event of `complaints.events.v1` to its case (redeliveries change nothing)."""
    event = parse_event(record)
    if not await inbox.first_time(conn, CONSUMER, event.id):
        return
    await apply_event(conn, event, now=now)


async def apply_event(conn: Conn, event: CloudEvent, *, now: datetime) -> None:
    complaint_id = event.complaint_id()
    if not complaint_id:
        return  # not about one complaint (a dead-letter notice, say): nothing to record
    trace.get_current_span().set_attribute("complaint.id", complaint_id)
    try:
        if event.type == EventType.RECEIVED:
            await repository.add_received(conn, ReceivedData.model_validate(event.data))
        elif event.type == EventType.ROUTED:
            routed = RoutedData.model_validate(event.data)
            await repository.open_case(conn, routed, domain.open_case(routed))
        elif event.type == EventType.REASSIGNED:
            moved = ReassignedData.model_validate(event.data)
            await repository.set_assignee(conn, moved.complaint_id, moved.to_assignee)
    except ValidationError as exc:
        reason = summarise(field_errors(exc.errors()))
        raise Rejected("schema_violation", f"{event.type}: {reason}") from None
    await repository.append_timeline(
        conn, complaint_id, event.id, domain.timeline_entry(event, received=now)
    )


async def on_key_record(conn: Conn, record: Record, *, now: datetime) -> None:
    """Learn a channel key's creation or revocation (hashes only)."""
    event = parse_event(record)
    if event.type not in (EventType.CHANNEL_KEY_CREATED, EventType.CHANNEL_KEY_REVOKED):
        raise Rejected("unknown_type", f"type {event.type!r} does not belong on this topic")
    try:
        key = ChannelKeyData.model_validate(event.data)
    except ValidationError:
        raise Rejected("schema_violation", f"{event.type} data does not match its schema") from None
    await repository.learn_key(conn, key, revoked=event.type == EventType.CHANNEL_KEY_REVOKED)
