"""The case's vocabulary and values: context, commands, refusals, state and events (pure).

Events carry their sequence number (`seq`, the case version after the event), a deterministic
`event_id` (uuid5 of complaint id and seq) and their hash-chain link (`prev_hash`, `hash`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeAlias

from services.resolution.audit import GENESIS, entry_hash
from services.resolution.clocks import (
    Clock,
    ClockKind,
    parse_time,
    rfc3339,
)
from services.resolution.policy import (
    Policy,
    Remedy,
    Role,
    Usage,
    rank,
)
from shared.events import Category, Channel, Money, RoutedData, Severity
from shared.events import Outcome as Outcome
from shared.frozen import changed

# --- vocabulary -------------------------------------------------------------------------------


class Status(StrEnum):
    """Where a case stands (`new` only before it is opened)."""

    NEW = "new"
    ROUTED = "routed"
    ACKNOWLEDGED = "acknowledged"
    AWAITING_STAFF_RESPONSE = "awaiting_staff_response"
    AWAITING_CUSTOMER = "awaiting_customer"
    REMEDY_PROPOSED = "remedy_proposed"
    AWAITING_APPROVAL = "awaiting_approval"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REOPENED = "reopened"


class Kind(StrEnum):
    """Event types resolution writes (the contract's names where the contract has one)."""

    CASE_OPENED = "complaint.case_opened"
    DEADLINES_SET = "complaint.deadlines_set"
    ACKNOWLEDGED = "complaint.acknowledged"
    ASSIGNED = "complaint.assigned"
    INFORMATION_REQUESTED = "complaint.information_requested"
    CUSTOMER_REPLIED = "complaint.customer_replied"
    STAFF_RESPONSE_REQUESTED = "complaint.staff_response_requested"
    STAFF_RESPONDED = "complaint.staff_responded"
    STAFF_RESPONSE_WINDOW_CLOSED = "complaint.staff_response_window_closed"
    REMEDY_PROPOSED = "complaint.remedy_proposed"
    APPROVAL_REQUESTED = "complaint.approval_requested"
    REMEDY_APPROVED = "complaint.remedy_approved"
    REMEDY_DECLINED = "complaint.remedy_declined"
    REMEDY_WITHDRAWN = "complaint.remedy_withdrawn"
    RESOLUTION_PROPOSED = "complaint.resolution_proposed"
    RESOLUTION_DECLINED = "complaint.resolution_declined"
    RESOLUTION_WITHDRAWN = "complaint.resolution_withdrawn"
    RESOLVED = "complaint.resolved"
    REOPENED = "complaint.reopened"
    CLOSED = "complaint.closed"
    NOTE_ADDED = "complaint.note_added"
    SLA_WARNING = "complaint.sla_warning"
    SLA_BREACHED = "complaint.sla_breached"
    ESCALATED = "complaint.escalated"


class ActorKind(StrEnum):
    STAFF = "staff"
    CUSTOMER = "customer"
    SYSTEM = "system"


class PendingKind(StrEnum):
    REMEDY = "remedy"
    NOT_UPHELD = "not_upheld"


# --- context ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who acts: a staff member (with role and team), the customer (via a channel) or system."""

    id: str
    kind: ActorKind = ActorKind.STAFF
    role: Role | None = None
    team: str | None = None
    active: bool = True
    named_in_case: bool = False


SYSTEM = Actor(id="system", kind=ActorKind.SYSTEM)


@dataclass(frozen=True)
class Member:
    """Directory facts about another staff member (the target of `Assign`)."""

    id: str
    role: Role
    team: str
    active: bool = True


@dataclass(frozen=True)
class Sample:
    """Remedies granted in similar complaints (same category, severity, band) in one currency."""

    currency: str
    count: int
    median: Decimal | None


@dataclass(frozen=True)
class Context:
    """Everything a decision may depend on besides the state and the command."""

    actor: Actor
    policy: Policy
    now: datetime
    # roles held by someone active in the team's chain (team members, managers, directors)
    held_roles: frozenset[Role] = frozenset(Role)
    target: Member | None = None
    assignee_role: Role | None = None
    usage: Usage = field(default_factory=Usage.none)
    sample: Sample | None = None
    expected_version: int | None = None


# --- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutedFacts:
    """What opening a case needs from `complaint.routed` and `complaint.received`."""

    complaint_id: str
    team: str
    severity: Severity
    category: Category
    channel: Channel
    customer_id: str
    received_at: datetime
    assignee: str | None = None
    amount_at_stake: Money | None = None
    staff_involved: tuple[str, ...] = ()

    @classmethod
    def from_routed(
        cls, routed: RoutedData, *, customer_id: str, amount_at_stake: Money | None = None
    ) -> RoutedFacts:
        """The facts of a routed event (customer and amount come from `received`)."""
        return cls(
            complaint_id=routed.complaint_id,
            team=routed.team,
            severity=routed.severity,
            category=routed.category,
            channel=routed.channel,
            customer_id=customer_id,
            received_at=routed.received_at,
            assignee=routed.assignee,
            amount_at_stake=amount_at_stake,
            staff_involved=tuple(routed.staff_involved),
        )


@dataclass(frozen=True)
class Open:
    """Open a case on a routed complaint (system)."""

    facts: RoutedFacts


@dataclass(frozen=True)
class Acknowledge:
    """Acknowledge the complaint (stops the acknowledge clock)."""


@dataclass(frozen=True)
class Assign:
    """Give the case to another active member of its team."""

    to: str


@dataclass(frozen=True)
class Claim:
    """Take the case oneself."""


@dataclass(frozen=True)
class RequestInformation:
    """Ask the customer something; the resolve clock pauses."""

    question: str


@dataclass(frozen=True)
class CustomerReplied:
    """The customer's answer (via their channel); the resolve clock resumes."""

    text: str


@dataclass(frozen=True)
class RequestStaffResponse:
    """Ask again every named person without an answer or an open window."""


@dataclass(frozen=True)
class StaffRespond:
    """A named staff member's account."""

    statement: str


@dataclass(frozen=True)
class ProposeRemedy:
    """Propose a remedy: applied at once within authority, else sent for approval."""

    remedy: Remedy
    note: str = ""
    justification: str | None = None


@dataclass(frozen=True)
class Withdraw:
    """The proposer withdraws what awaits approval."""


@dataclass(frozen=True)
class Approve:
    """Approve what awaits approval (a remedy, or a not_upheld to confirm)."""

    note: str = ""


@dataclass(frozen=True)
class Decline:
    """Decline what awaits approval; the case returns to the team."""

    reason: str


@dataclass(frozen=True)
class Resolve:
    """Decide the complaint."""

    outcome: Outcome
    message: str = ""


@dataclass(frozen=True)
class Reopen:
    """Reopen a resolved or closed case within the reopen window (staff or appeal)."""

    reason: str
    by_customer: bool = False


@dataclass(frozen=True)
class Close:
    """Close a resolved case."""


@dataclass(frozen=True)
class Note:
    """Add an internal note."""

    text: str


@dataclass(frozen=True)
class ClockFired:
    """A timer fired (system): `what` of clock (`kind`, `run`); call with now >= its due time."""

    kind: ClockKind
    run: int
    what: str

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ClockFired:
        """The command a `TimerSpec.payload` stands for."""
        return cls(ClockKind(payload["kind"]), int(payload["run"]), str(payload["what"]))


@dataclass(frozen=True)
class Reassigned:
    """Intake moved the case to another holder (or to the team queue: None) because its holder
    left, changed team or went off shift (system)."""

    to: str | None
    reason: str
    from_: str | None = None  # who intake moved it from: a case held by someone else stays


Command: TypeAlias = (
    Open
    | Acknowledge
    | Assign
    | Claim
    | RequestInformation
    | CustomerReplied
    | RequestStaffResponse
    | StaffRespond
    | ProposeRemedy
    | Withdraw
    | Approve
    | Decline
    | Resolve
    | Reopen
    | Close
    | Note
    | ClockFired
    | Reassigned
)


@dataclass(frozen=True)
class Refusal:
    """Why a command is refused: 403 (who), 409 (state), 422 (malformed), 429 (too many:
    `retry_after` whole seconds until the actor may act again)."""

    status: int
    reason: str
    code: str
    required_role: str | None = None
    missing: list[str] = field(default_factory=list)
    state: str = ""
    current_version: int | None = None
    retry_after: int | None = None


# --- state ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hearing:
    """A named staff member's side: requested (with its window clock run), answered, closed."""

    staff_id: str
    run: int | None = None
    requested_at: datetime | None = None
    statement: str | None = None
    answered_at: datetime | None = None
    window_closed_at: datetime | None = None

    @property
    def heard(self) -> bool:
        """Answered, or their window closed."""
        return self.answered_at is not None or self.window_closed_at is not None


@dataclass(frozen=True)
class Pending:
    """A proposal waiting for approval: a remedy, or a `not_upheld` decision to confirm."""

    kind: PendingKind
    proposer: str
    proposer_role: Role
    required_role: Role
    waiting_role: Role
    approval_run: int
    policy_version: int
    proposed_at: datetime
    remedy: Remedy | None = None
    policy_exception: bool = False
    justification: str | None = None
    note: str = ""
    message: str = ""


@dataclass(frozen=True)
class Applied:
    """A remedy applied to the case, and who authorised it."""

    remedy: Remedy
    authorized_by: str
    authorized_role: Role
    proposer: str
    policy_exception: bool
    at: datetime


@dataclass(frozen=True)
class Decision:
    """How the case was resolved and by whom (`confirmed_by` for a confirmed not_upheld)."""

    outcome: Outcome
    message: str
    by: str
    role: Role
    at: datetime
    confirmed_by: str | None = None
    confirmed_role: Role | None = None

    def top_role(self) -> Role:
        """The highest role that took part in the decision."""
        return max(self.role, self.confirmed_role or self.role, key=rank)


@dataclass(frozen=True)
class CaseState:
    """A case, as the fold of its events."""

    complaint_id: str = ""
    status: Status = Status.NEW
    team: str = ""
    assignee: str | None = None
    severity: Severity = Severity.MEDIUM
    category: Category = Category.OTHER
    channel: Channel = Channel.WEB
    customer_id: str = ""
    amount_at_stake: Money | None = None
    received_at: datetime | None = None
    staff: tuple[Hearing, ...] = ()
    acknowledged_at: datetime | None = None
    awaiting_customer_since: datetime | None = None
    pending: Pending | None = None
    applied: Applied | None = None
    previous_remedies: tuple[Applied, ...] = ()
    decision: Decision | None = None
    closed_at: datetime | None = None
    reopened: int = 0
    reopened_to: Role | None = None
    escalated_to: Role | None = None
    clocks: tuple[Clock, ...] = ()
    last_run: tuple[tuple[ClockKind, int], ...] = ()
    policy_version: int = 0
    version: int = 0
    chain_head: str = GENESIS

    def clock(self, kind: ClockKind, run: int | None = None) -> Clock | None:
        """The active clock of `kind` (and `run`), if any."""
        return next(
            (c for c in self.clocks if c.kind is kind and (run is None or c.run == run)), None
        )

    def next_run(self, kind: ClockKind) -> int:
        """The run number the next clock of `kind` gets."""
        return dict(self.last_run).get(kind, 0) + 1

    def named(self, staff_id: str) -> bool:
        """Whether the complaint names this staff member."""
        return any(h.staff_id == staff_id for h in self.staff)

    def unheard(self) -> list[str]:
        """Named staff neither answered nor with their window closed."""
        return [h.staff_id for h in self.staff if not h.heard]


EMPTY = CaseState()


# --- events -----------------------------------------------------------------------------------

_EVENT_NAMESPACE = uuid.UUID("6f1c8a52-3b7e-4d1a-9c55-0e4a2f7b9d10")


@dataclass(frozen=True)
class Event:
    """One decided event: JSON-ready `detail`, its case sequence number, id and chain link."""

    type: Kind
    complaint_id: str
    actor: str
    at: datetime
    detail: Mapping[str, Any]
    seq: int
    event_id: str
    prev_hash: str
    hash: str

    def data(self) -> dict[str, Any]:
        """The CloudEvent `data`: complaint id, actor, time, the detail and the chain link."""
        return {
            **self.body(),
            "chain": {"seq": self.seq, "prev_hash": self.prev_hash, "hash": self.hash},
        }

    def body(self) -> dict[str, Any]:
        """`data` without the chain link (what the hash covers)."""
        return {
            "complaint_id": self.complaint_id,
            "actor": self.actor,
            "at": rfc3339(self.at),
            **self.detail,
        }

    def audit_entry(self) -> dict[str, Any]:
        """The decision-log entry (`audit.verify` input)."""
        return {
            "type": str(self.type),
            "at": rfc3339(self.at),
            "actor": self.actor,
            "data": self.body(),
            "event_id": self.event_id,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }

    @classmethod
    def from_data(cls, type: str, data: Mapping[str, Any], event_id: str) -> Event:
        """The event `data()` (as published or stored) describes."""
        chain = data["chain"]
        skip = {"complaint_id", "actor", "at", "chain"}
        return cls(
            type=Kind(type),
            complaint_id=data["complaint_id"],
            actor=data["actor"],
            at=parse_time(data["at"]),
            detail={k: v for k, v in data.items() if k not in skip},
            seq=chain["seq"],
            event_id=event_id,
            prev_hash=chain["prev_hash"],
            hash=chain["hash"],
        )


Draft: TypeAlias = tuple[Kind, dict[str, Any]]


def seal(state: CaseState, drafts: Sequence[Draft], actor: str, now: datetime) -> list[Event]:
    """The drafts as events: numbered, identified and chained after the state's head."""
    complaint_id = state.complaint_id or str(drafts[0][1]["complaint_id"])
    out: list[Event] = []
    head = state.chain_head
    for offset, (kind, detail) in enumerate(drafts, start=1):
        seq = state.version + offset
        event_id = str(uuid.uuid5(_EVENT_NAMESPACE, f"{complaint_id}:{seq}"))
        detail = {k: v for k, v in detail.items() if k != "complaint_id"}
        draft = Event(
            kind, complaint_id, actor, now.astimezone(UTC), detail, seq, event_id, head, ""
        )
        head = entry_hash(head, draft.audit_entry())
        out.append(changed(draft, hash=head))
    return out
