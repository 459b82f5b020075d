"""Intake's use cases: accept a submission (HTTP or Kafka), follow cases, reassign work.

Each runs inside the caller's transaction and writes its events to the outbox there.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Any

from opentelemetry import trace
from pydantic import ValidationError

from services.intake import domain, repository
from shared import inbox, outbox, topics
from shared.db import Conn
from shared.events import (
    CloudEvent,
    EventType,
    ReassignedData,
    ReceivedData,
    RoutedData,
    SubmittedData,
    new_event,
)
from shared.kafka import Record, Rejected, parse_event
from shared.web import field_errors

SOURCE = "complaints/intake"
MAX_RECORD_BYTES = 256 * 1024
REVIEWER_ROLE = "senior_agent"


def new_complaint_id() -> str:
    return str(uuid.uuid4())


def _message(type_: EventType, complaint_id: str, data: Any, at: datetime) -> outbox.Message:
    return outbox.Message(
        topics.EVENTS,
        topics.complaint_key(complaint_id),
        new_event(type=type_, source=SOURCE, subject=complaint_id, data=data, time=at),
    )


async def accept(
    conn: Conn, data: SubmittedData, *, source: str, now: datetime
) -> tuple[str, bool]:
    """Store, route and assign a submission; return its complaint id and whether it is new."""
    history = await repository.history(conn, data.customer.id, now)
    decision = domain.decide(
        data, history=history, routing_rules=await repository.routing_rules(conn), received_at=now
    )
    complaint_id = new_complaint_id()
    created = await repository.insert_complaint(
        conn,
        complaint_id=complaint_id,
        data=data,
        decision=decision,
        source=source,
        received_at=now,
    )
    if not created:
        complaint_id = await repository.find_complaint_id(
            conn, data.channel.value, data.external_id
        )
        trace.get_current_span().set_attribute("complaint.id", complaint_id)
        return complaint_id, False
    trace.get_current_span().set_attribute("complaint.id", complaint_id)
    staff = await repository.lock_team(conn, decision.team)
    assignment = domain.choose_assignee(
        staff, language=decision.language, weight=decision.weight, excluded=data.staff_involved
    )
    await repository.assign(
        conn,
        complaint_id=complaint_id,
        team=decision.team,
        staff_id=assignment.staff_id,
        weight=decision.weight,
        now=now,
    )
    messages = [
        _message(
            EventType.RECEIVED,
            complaint_id,
            ReceivedData(complaint_id=complaint_id, received_at=now, **data.model_dump()),
            now,
        ),
        _message(
            EventType.ROUTED,
            complaint_id,
            routed_data(complaint_id, data, decision, assignment, history, now),
            now,
        ),
    ]
    if assignment.staff_id is None:
        messages.append(
            _message(
                EventType.UNASSIGNED,
                complaint_id,
                ReassignedData(
                    complaint_id=complaint_id, at=now, team=decision.team, reason=assignment.reason
                ),
                now,
            )
        )
    await outbox.enqueue(conn, messages)
    return complaint_id, True


def routed_data(
    complaint_id: str,
    data: SubmittedData,
    decision: domain.Decision,
    assignment: domain.Assignment,
    history: domain.History,
    now: datetime,
) -> RoutedData:
    """`complaint.routed`: team, assignee, severity with reasons, flags and the history."""
    return RoutedData(
        complaint_id=complaint_id,
        routed_at=now,
        received_at=now,
        channel=data.channel,
        external_id=data.external_id,
        category=decision.category,
        category_reason=decision.category_reason,
        severity=decision.severity,
        severity_score=decision.severity_score,
        severity_reasons=decision.severity_reasons,
        team=decision.team,
        team_reason=decision.team_reason,
        assignee=assignment.staff_id,
        assignment_reason=assignment.reason,
        language=decision.language,
        staff_involved=data.staff_involved,
        deadlines=decision.deadlines,
        flags=[asdict(f) for f in decision.flags],
        review_by=REVIEWER_ROLE if decision.flags else None,
        customer_history=asdict(history),
    )


async def reassign_from(conn: Conn, staff_id: str, *, reason: str, now: datetime) -> list[str]:
    """Move a person's open, unacknowledged cases to others; return the complaint ids moved."""
    moved = []
    messages = []
    for case in await repository.open_unacknowledged(conn, staff_id):
        submission = SubmittedData.model_validate(case["submission"])
        staff = await repository.lock_team(conn, case["team"])
        choice = domain.choose_assignee(
            staff,
            language=case["language"],
            weight=case["weight"],
            excluded=[*submission.staff_involved, staff_id],
        )
        await repository.assign(
            conn,
            complaint_id=case["complaint_id"],
            team=case["team"],
            staff_id=choice.staff_id,
            weight=case["weight"],
            now=now,
        )
        messages.append(
            _message(
                EventType.REASSIGNED,
                case["complaint_id"],
                ReassignedData(
                    complaint_id=case["complaint_id"],
                    at=now,
                    team=case["team"],
                    from_assignee=staff_id,
                    to_assignee=choice.staff_id,
                    reason=f"{reason}; {choice.reason}",
                ),
                now,
            )
        )
        moved.append(case["complaint_id"])
    await outbox.enqueue(conn, messages)
    return moved


# ---------------------------------------------------------------------- Kafka records


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
        unknown = any(e["field"] == channel_field for e in errors)
        raise Rejected(
            "unknown_channel" if unknown else "schema_violation", _summary(errors)
        ) from None


async def on_submitted_record(conn: Conn, record: Record, *, now: datetime) -> None:
    """Accept one record from `complaints.submitted.v1` (duplicates change nothing)."""
    data, source = parse_submitted(record.value)
    await accept(conn, data, source=source, now=now)


CONSUMER = "intake"

# What later events say about a case, as intake tracks it for load and customer history.
_CASE_CHANGES: dict[str, dict[str, Any]] = {
    EventType.ACKNOWLEDGED: {"acknowledged": True},
    EventType.RESOLVED: {"open": False},
    EventType.CLOSED: {"open": False},
    EventType.REOPENED: {"open": True},
}


async def on_event_record(conn: Conn, record: Record, *, now: datetime) -> None:
    """Follow cases on `complaints.events.v1`: open or not, acknowledged, outcome, satisfaction."""
    event = parse_event(record)
    if event.type not in _CASE_CHANGES and event.type != EventType.FEEDBACK_RECEIVED:
        return
    if not await inbox.first_time(conn, CONSUMER, event.id):
        return
    data = event.data if isinstance(event.data, dict) else {}
    complaint_id = event.subject or data.get("complaint_id")
    if not complaint_id:
        raise Rejected("schema_violation", f"{event.type} names no complaint")
    changes = dict(_CASE_CHANGES.get(event.type, {}))
    if event.type == EventType.RESOLVED and isinstance(data.get("outcome"), str):
        changes["outcome"] = data["outcome"]
    if event.type == EventType.FEEDBACK_RECEIVED and isinstance(data.get("score"), int):
        changes["satisfaction"] = data["score"]
    await repository.case_update(conn, complaint_id, **changes)
