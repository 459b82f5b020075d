"""Folding a case's events into its state: `evolve(state, event)` and `replay(events)`.

Pure: each step reads only the event; clocks change only through `complaint.deadlines_set`,
firings only mark a clock's `fired` set; the status is derived from the facts after each event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from services.resolution.case_model import (
    EMPTY,
    Applied,
    CaseState,
    Decision,
    Event,
    Hearing,
    Kind,
    Outcome,
    Pending,
    PendingKind,
    Status,
)
from services.resolution.clocks import (
    Clock,
    ClockKind,
    parse_time,
)
from services.resolution.policy import (
    Remedy,
    Role,
)
from shared.events import Category, Channel, Money, Severity
from shared.frozen import changed

__all__ = ["evolve", "replay"]

# --- evolve -----------------------------------------------------------------------------------


def evolve(state: CaseState, event: Event) -> CaseState:
    """The state after `event` (pure; reads only the event)."""
    apply = _APPLY.get(event.type)
    after = apply(state, event) if apply else state
    # the status reads neither the version nor the chain: one copy, not two
    return changed(after, version=event.seq, chain_head=event.hash, status=_status(after))


def replay(events: Iterable[Event], state: CaseState = EMPTY) -> CaseState:
    """The state a sequence of events folds to."""
    for event in events:
        state = evolve(state, event)
    return state


def _status(s: CaseState) -> Status:
    # The case waits on the most pressing thing; the order states that priority.
    if s.closed_at is not None:
        return Status.CLOSED
    if s.decision is not None:
        return Status.RESOLVED
    if s.pending is not None:
        return Status.AWAITING_APPROVAL
    if s.awaiting_customer_since is not None:
        return Status.AWAITING_CUSTOMER
    if any(h.requested_at is not None and not h.heard for h in s.staff):
        return Status.AWAITING_STAFF_RESPONSE
    if s.applied is not None:
        return Status.REMEDY_PROPOSED
    if s.reopened:
        return Status.REOPENED
    if s.acknowledged_at is not None:
        return Status.ACKNOWLEDGED
    return Status.ROUTED if s.complaint_id else Status.NEW


def _d(event: Event, key: str) -> Any:
    return event.detail.get(key)


def _on_opened(s: CaseState, e: Event) -> CaseState:
    amount = _d(e, "amount_at_stake")
    return changed(
        s,
        complaint_id=e.complaint_id,
        team=_d(e, "team"),
        assignee=_d(e, "assignee"),
        severity=Severity(_d(e, "severity")),
        category=Category(_d(e, "category")),
        channel=Channel(_d(e, "channel")),
        customer_id=_d(e, "customer_id"),
        amount_at_stake=Money.model_validate(amount) if amount else None,
        received_at=parse_time(_d(e, "received_at")),
        staff=tuple(Hearing(staff_id) for staff_id in _d(e, "staff_involved")),
        policy_version=_d(e, "policy_version"),
    )


def _on_deadlines(s: CaseState, e: Event) -> CaseState:
    clocks = tuple(Clock.from_json(c) for c in _d(e, "clocks"))
    runs = dict(s.last_run)
    for c in clocks:
        runs[c.kind] = max(runs.get(c.kind, 0), c.run)
    return changed(s, clocks=clocks, last_run=tuple(sorted(runs.items())))


def _hearing(s: CaseState, staff_id: str, **changes: Any) -> CaseState:
    return changed(
        s, staff=tuple(changed(h, **changes) if h.staff_id == staff_id else h for h in s.staff)
    )


def _on_staff_requested(s: CaseState, e: Event) -> CaseState:
    return _hearing(
        s, _d(e, "staff_id"), run=_d(e, "run"), requested_at=e.at, window_closed_at=None
    )


def _on_staff_responded(s: CaseState, e: Event) -> CaseState:
    return _hearing(s, _d(e, "staff_id"), statement=_d(e, "statement"), answered_at=e.at)


def _on_window_closed(s: CaseState, e: Event) -> CaseState:
    return _hearing(s, _d(e, "staff_id"), window_closed_at=e.at)


def _pending(kind: PendingKind, e: Event, **specific: Any) -> Pending:
    """What a proposal waiting for approval records, a remedy's or a `not_upheld`'s."""
    return Pending(
        kind=kind,
        proposer=_d(e, "proposer"),
        proposer_role=Role(_d(e, "proposer_role")),
        required_role=Role(_d(e, "required_role")),
        waiting_role=Role(_d(e, "waiting_role")),
        approval_run=0,
        policy_version=_d(e, "policy_version"),
        proposed_at=e.at,
        **specific,
    )


def _on_proposed(s: CaseState, e: Event) -> CaseState:
    if _d(e, "applies_at_once"):
        return s
    pending = _pending(
        PendingKind.REMEDY,
        e,
        remedy=Remedy.from_json(_d(e, "remedy")),
        policy_exception=_d(e, "policy_exception"),
        justification=_d(e, "justification"),
        note=_d(e, "note"),
    )
    return changed(s, pending=pending)


def _on_resolution_proposed(s: CaseState, e: Event) -> CaseState:
    return changed(s, pending=_pending(PendingKind.NOT_UPHELD, e, message=_d(e, "message")))


def _on_approval_requested(s: CaseState, e: Event) -> CaseState:
    if s.pending is None:
        return s
    return changed(
        s, pending=changed(s.pending, waiting_role=Role(_d(e, "role")), approval_run=_d(e, "run"))
    )


def _on_approved(s: CaseState, e: Event) -> CaseState:
    applied = Applied(
        remedy=Remedy.from_json(_d(e, "remedy")),
        authorized_by=_d(e, "authorized_by"),
        authorized_role=Role(_d(e, "authorized_role")),
        proposer=_d(e, "proposer"),
        policy_exception=_d(e, "policy_exception"),
        at=e.at,
    )
    return changed(s, applied=applied, pending=None)


def _on_resolved(s: CaseState, e: Event) -> CaseState:
    confirmed_role = _d(e, "confirmed_role")
    decision = Decision(
        outcome=Outcome(_d(e, "outcome")),
        message=_d(e, "message"),
        by=_d(e, "decided_by"),
        role=Role(_d(e, "decided_role")),
        at=e.at,
        confirmed_by=_d(e, "confirmed_by"),
        confirmed_role=Role(confirmed_role) if confirmed_role else None,
    )
    return changed(
        s, decision=decision, pending=None, reopened_to=None, awaiting_customer_since=None
    )


def _on_reopened(s: CaseState, e: Event) -> CaseState:
    previous = s.previous_remedies + ((s.applied,) if s.applied else ())
    return changed(
        s,
        decision=None,
        closed_at=None,
        applied=None,
        previous_remedies=previous,
        reopened=s.reopened + 1,
        reopened_to=Role(_d(e, "to_role")),
        awaiting_customer_since=None,
    )


def _on_fired(s: CaseState, e: Event) -> CaseState:
    kind, run, what = ClockKind(_d(e, "clock")), _d(e, "run"), _d(e, "what")
    return changed(
        s, clocks=tuple(c.fire(what) if c.kind is kind and c.run == run else c for c in s.clocks)
    )


_APPLY: dict[Kind, Callable[[CaseState, Event], CaseState]] = {
    Kind.CASE_OPENED: _on_opened,
    Kind.DEADLINES_SET: _on_deadlines,
    Kind.ACKNOWLEDGED: lambda s, e: changed(s, acknowledged_at=e.at),
    Kind.ASSIGNED: lambda s, e: changed(s, assignee=_d(e, "to_assignee")),
    Kind.INFORMATION_REQUESTED: lambda s, e: changed(s, awaiting_customer_since=e.at),
    Kind.CUSTOMER_REPLIED: lambda s, e: changed(s, awaiting_customer_since=None),
    Kind.STAFF_RESPONSE_REQUESTED: _on_staff_requested,
    Kind.STAFF_RESPONDED: _on_staff_responded,
    Kind.STAFF_RESPONSE_WINDOW_CLOSED: _on_window_closed,
    Kind.REMEDY_PROPOSED: _on_proposed,
    Kind.APPROVAL_REQUESTED: _on_approval_requested,
    Kind.REMEDY_APPROVED: _on_approved,
    Kind.REMEDY_DECLINED: lambda s, e: changed(s, pending=None),
    Kind.REMEDY_WITHDRAWN: lambda s, e: changed(s, pending=None),
    Kind.RESOLUTION_PROPOSED: _on_resolution_proposed,
    Kind.RESOLUTION_DECLINED: lambda s, e: changed(s, pending=None),
    Kind.RESOLUTION_WITHDRAWN: lambda s, e: changed(s, pending=None),
    Kind.RESOLVED: _on_resolved,
    Kind.REOPENED: _on_reopened,
    Kind.CLOSED: lambda s, e: changed(s, closed_at=e.at),
    Kind.SLA_WARNING: _on_fired,
    Kind.SLA_BREACHED: _on_fired,
    Kind.ESCALATED: lambda s, e: changed(s, escalated_to=Role(_d(e, "to_role"))),
}
