"""Resolution's rules as pure functions: opening a case and what its timeline records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared import sla
from shared.events import CloudEvent, Deadlines, EventType, RoutedData


class Status(StrEnum):
    RECEIVED = "received"
    ROUTED = "routed"


@dataclass(frozen=True)
class OpenedCase:
    status: Status
    deadlines: Deadlines


def open_case(routed: RoutedData) -> OpenedCase:
    """A routed complaint opens a case whose clocks run from when it was received."""
    return OpenedCase(
        status=Status.ROUTED, deadlines=sla.deadlines(routed.severity, routed.received_at)
    )


# What each event shows on the timeline: staff-facing facts, never the customer's words.
_DETAIL_KEYS: dict[str, tuple[str, ...]] = {
    EventType.RECEIVED: ("channel", "external_id", "category"),
    EventType.ROUTED: (
        "team",
        "assignee",
        "severity",
        "severity_score",
        "category",
        "deadlines",
        "flags",
        "review_by",
    ),
    EventType.REASSIGNED: ("team", "from_assignee", "to_assignee", "reason"),
    EventType.UNASSIGNED: ("team", "reason"),
    EventType.NOTIFICATION_SENT: ("kind", "medium", "language"),
    EventType.NOTIFICATION_FAILED: ("kind", "medium", "reason"),
}


@dataclass(frozen=True)
class TimelineEntry:
    type: str
    at: datetime
    actor: str
    detail: dict[str, Any]


def timeline_entry(event: CloudEvent, *, received: datetime) -> TimelineEntry:
    """The timeline line an event adds (`received` stands in for events without a time)."""
    data = event.data if isinstance(event.data, dict) else {}
    keys = _DETAIL_KEYS.get(event.type, ())
    return TimelineEntry(
        type=event.type,
        at=event.time or received,
        actor=str(data.get("actor", "system")),
        detail={k: data[k] for k in keys if k in data},
    )
