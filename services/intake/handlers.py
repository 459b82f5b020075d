"""Intake's use cases: accept a submission (HTTP or Kafka), one transaction with its outbox rows."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from opentelemetry import trace
from pydantic import ValidationError

from services.intake import repository
from services.intake.domain import Routing, route
from shared import outbox, topics
from shared.db import Conn
from shared.events import (
    CloudEvent,
    EventType,
    ReceivedData,
    RoutedData,
    SubmittedData,
    new_event,
)
from shared.kafka import Record, Rejected
from shared.web import field_errors

SOURCE = "complaints/intake"
MAX_RECORD_BYTES = 256 * 1024


def new_complaint_id() -> str:
    return str(uuid.uuid4())


async def accept(
    conn: Conn, data: SubmittedData, *, source: str, now: datetime
) -> tuple[str, bool]:
    """Store and route a submission; return its complaint id and whether it is new."""
    complaint_id = new_complaint_id()
    routing = route(data, now)
    created = await repository.insert_complaint(
        conn, complaint_id=complaint_id, data=data, routing=routing, source=source, received_at=now
    )
    if not created:
        complaint_id = await repository.find_complaint_id(
            conn, data.channel.value, data.external_id
        )
    trace.get_current_span().set_attribute("complaint.id", complaint_id)
    if created:
        await outbox.enqueue(conn, accepted_events(complaint_id, data, routing, now))
    return complaint_id, created


def accepted_events(
    complaint_id: str, data: SubmittedData, routing: Routing, now: datetime
) -> list[outbox.Message]:
    """`complaint.received` then `complaint.routed`, keyed by the complaint."""
    received = ReceivedData(
        complaint_id=complaint_id,
        received_at=now,
        **data.model_dump(),
    )
    routed = RoutedData(
        complaint_id=complaint_id,
        routed_at=now,
        received_at=now,
        channel=data.channel,
        external_id=data.external_id,
        category=routing.category,
        category_reason=routing.category_reason,
        severity=routing.severity,
        severity_reasons=routing.severity_reasons,
        team=routing.team,
        assignee=routing.assignee,
        language=routing.language,
        staff_involved=data.staff_involved,
        deadlines=routing.deadlines,
    )
    key = topics.complaint_key(complaint_id)
    return [
        outbox.Message(
            topics.EVENTS,
            key,
            new_event(
                type=EventType.RECEIVED,
                source=SOURCE,
                subject=complaint_id,
                data=received,
                time=now,
            ),
        ),
        outbox.Message(
            topics.EVENTS,
            key,
            new_event(
                type=EventType.ROUTED, source=SOURCE, subject=complaint_id, data=routed, time=now
            ),
        ),
    ]


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


def parse_submitted(value: bytes | None) -> tuple[SubmittedData, str]:
    """The submission in a `complaints.submitted.v1` record and its source, or `Rejected`."""
    if value is None or not value.strip():
        raise Rejected("empty", "the record has no value")
    if len(value) > MAX_RECORD_BYTES:
        raise Rejected(
            "oversized", f"the record is {len(value)} bytes; the limit is {MAX_RECORD_BYTES}"
        )
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise Rejected("not_json", "the value is not JSON") from None
    if not isinstance(doc, dict):
        raise Rejected("not_cloudevent", "the value is JSON but not an object")
    try:
        event = CloudEvent.model_validate(doc)
    except ValidationError as exc:
        raise Rejected(
            "not_cloudevent",
            "not a CloudEvents 1.0 envelope: " + _summary(field_errors(exc.errors())),
        ) from None
    if event.type != EventType.SUBMITTED:
        raise Rejected(
            "unknown_type",
            f"type {event.type!r} is not accepted here; expected complaint.submitted",
        )
    return validate_data(event.data, prefix=("data",)), event.source


def validate_data(data: Any, *, prefix: tuple[str, ...] = ()) -> SubmittedData:
    """`complaint.submitted` data, or `Rejected` naming every bad field."""
    try:
        return SubmittedData.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc.errors(), prefix=prefix)
        channel_field = ".".join((*prefix, "channel"))
        code = (
            "unknown_channel"
            if any(e["field"] == channel_field for e in errors)
            else "schema_violation"
        )
        raise Rejected(code, _summary(errors)) from None


async def on_submitted_record(conn: Conn, record: Record, *, now: datetime) -> None:
    """Accept one record from `complaints.submitted.v1` (duplicates change nothing)."""
    data, source = parse_submitted(record.value)
    await accept(conn, data, source=source, now=now)
