"""Resolution's projections as pure functions: a case's read model, and what the timeline
records of the events other services publish (the decisions are `case`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from services.resolution.case import Applied, CaseState
from services.resolution.clocks import ClockKind
from shared.events import CloudEvent, EventType


class Status(StrEnum):
    """Before the decider opens a case: received, then routed."""

    RECEIVED = "received"
    ROUTED = "routed"


def case_view(state: CaseState, *, breached: bool) -> dict[str, Any]:
    """The case's read model (what the view and the queue show) after a decision: a pure
    projection of the state; `breached` when this decision recorded a breach."""
    running = [c for c in state.clocks if c.deadline is not None and c.running]
    ack = state.clock(ClockKind.ACKNOWLEDGE)
    resolve = state.clock(ClockKind.RESOLVE)
    pending = state.pending
    return {
        "complaint_id": state.complaint_id,
        "status": state.status.value,
        "team": state.team,
        "assignee": state.assignee,
        "acknowledge_by": ack.deadline if ack else None,
        "resolve_by": resolve.deadline if resolve else None,
        "next_due": min((c.deadline for c in running if c.deadline), default=None),
        "remedy": _applied(state.applied) if state.applied else None,
        "pending_approval": None
        if pending is None
        else {
            "kind": pending.kind.value,
            "remedy": pending.remedy.to_json() if pending.remedy else None,
            "proposer": pending.proposer,
            "required_role": pending.required_role.value,
            "waiting_role": pending.waiting_role.value,
            "policy_exception": pending.policy_exception,
            "proposed_at": pending.proposed_at.isoformat(),
        },
        "staff_involved": [
            {
                "staff_id": h.staff_id,
                "responded_at": h.answered_at.isoformat() if h.answered_at else None,
                "window_closed_at": h.window_closed_at.isoformat() if h.window_closed_at else None,
            }
            for h in state.staff
        ],
        "waiting_role": pending.waiting_role.value if pending else None,
        "breached": breached,
        "outcome": state.decision.outcome.value if state.decision else None,
        "version": state.version,
        "chain_head": state.chain_head,
        "policy_version": state.policy_version,
    }


def _applied(applied: Applied) -> dict[str, Any]:
    return {
        **applied.remedy.to_json(),
        "authorized_by": applied.authorized_by,
        "authorized_role": applied.authorized_role.value,
        "proposer": applied.proposer,
        "policy_exception": applied.policy_exception,
        "at": applied.at.isoformat(),
    }


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
