"""The case decider: `decide(state, command, context) -> events | Refusal`, `evolve`, `replay`.

Pure: every input (who acts, the policy, roster facts, usage totals, the consistency sample,
`now`) arrives in `Context`; nothing here reads a clock, a database or a broker.

Design choices the wiring relies on:
- A case starts with `decide(EMPTY, Open(facts), ctx)` on a routed complaint; it yields
  `complaint.case_opened` (the routed facts resolution keeps), one
  `complaint.staff_response_requested` per named person (each with its own window clock) and
  `complaint.deadlines_set`. `initial_state(facts)` is the state after `case_opened` alone.
- Clocks change only through `complaint.deadlines_set`, which carries every active clock with
  its computed due and warning times (times are fixed when a clock starts, pauses or resumes;
  `clocks.desired_timers(state)` reads them). Firings only mark a clock's `fired` set.
- Events carry their sequence number (`seq` = the case version after the event), a
  deterministic `event_id` (uuid5 of complaint id and seq: two replicas deciding on the same
  version collide on it, so a unique (complaint_id, seq) makes the write optimistic) and their
  hash-chain link (`prev_hash`, `hash`; see `audit`).
- Stale versions: `Context.expected_version` (from the HTTP/Kafka command; None = do not check)
  different from `state.version` gives 409 `stale_version` with `current_version`.
  Idempotency keys are the wiring's: decide is deterministic for the same inputs.
- Authority: a proposal within the proposer's limit and caps (customer window cap, the
  proposer's own daily cap) applies at once (`remedy_proposed` + `remedy_approved` by the
  proposer); above it an approval is requested from the lowest role that covers it and that
  someone active holds in the team's chain (`Context.held_roles`); an approval timeout climbs
  to the next held role; at the top the approval clock reports `sla_breached`. One approval
  completes a pending item; an approver needs limit and caps covering it (the approval counts
  on the approver's daily cap) and is never the proposer.
- Consistency outliers (sample of at least `min_sample`) need a justification (422) and a
  second approver holding at least the proposer's role; they are marked `policy_exception`.
- `not_upheld` on a case naming staff is a proposal (`resolution_proposed`) confirmed by an
  approver of a higher role than the proposer (a director's by another director).
- Reopen (within `reopen_within` of the decision, from resolved or closed) starts a new run
  of the resolve clock; afterwards only a role above the last decider's may resolve.
- A `ClockFired` that is stale (unknown run, paused clock, already fired, not yet due) yields
  no events; a breach escalates to the next held role above the assignee's (or above agent,
  or above the last escalation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeAlias

from services.resolution.case_evolve import evolve, replay
from services.resolution.case_model import (
    EMPTY,
    SYSTEM,
    Acknowledge,
    Actor,
    ActorKind,
    Applied,
    Approve,
    Assign,
    CaseState,
    Claim,
    ClockFired,
    Close,
    Command,
    Context,
    CustomerReplied,
    Decision,
    Decline,
    Draft,
    Event,
    Hearing,
    Kind,
    Member,
    Note,
    Open,
    Outcome,
    Pending,
    PendingKind,
    ProposeRemedy,
    Reassigned,
    Refusal,
    Reopen,
    RequestInformation,
    RequestStaffResponse,
    Resolve,
    RoutedFacts,
    Sample,
    StaffRespond,
    Status,
    Withdraw,
    seal,
)
from services.resolution.clocks import (
    END_OF,
    Calendar,
    Clock,
    ClockKind,
    calendar_for,
    rfc3339,
    warning_what,
)
from services.resolution.policy import (
    ROLES,
    Remedy,
    Role,
    covers,
    is_outlier,
    rank,
    required_role,
    within_caps,
)
from shared.events import Money

__all__ = [
    "EMPTY",
    "SYSTEM",
    "Acknowledge",
    "Actor",
    "ActorKind",
    "Applied",
    "Approve",
    "Assign",
    "CaseState",
    "Claim",
    "ClockFired",
    "Close",
    "Command",
    "Context",
    "CustomerReplied",
    "Decision",
    "Decline",
    "Event",
    "Hearing",
    "Kind",
    "Member",
    "Note",
    "Open",
    "Outcome",
    "Pending",
    "PendingKind",
    "ProposeRemedy",
    "Reassigned",
    "Refusal",
    "Reopen",
    "RequestInformation",
    "RequestStaffResponse",
    "Resolve",
    "RoutedFacts",
    "Sample",
    "StaffRespond",
    "Status",
    "Withdraw",
    "decide",
    "evolve",
    "initial_state",
    "open_case",
    "reads_held_roles",
    "replay",
]


# --- refusals ---------------------------------------------------------------------------------


def _forbidden(reason: str, code: str, required: Role | None = None) -> Refusal:
    return Refusal(403, reason, code, str(required) if required else None)


def _conflict(state: CaseState, reason: str, code: str, missing: Iterable[str] = ()) -> Refusal:
    return Refusal(
        409,
        reason,
        code,
        missing=list(missing),
        state=str(state.status),
        current_version=state.version,
    )


def _malformed(reason: str, *missing: str) -> Refusal:
    return Refusal(422, reason, "malformed", missing=list(missing))


def _staff_check(state: CaseState, actor: Actor) -> Refusal | None:
    # Team members act on their team's cases, managers and directors on any; the named
    # never judge their own case (they may only give their account).
    if actor.kind is not ActorKind.STAFF or actor.role is None:
        return _forbidden("only staff may do this", "staff_only")
    if not actor.active:
        return _forbidden("the staff member is not active", "inactive")
    if actor.named_in_case or state.named(actor.id):
        return _forbidden("staff named in the complaint may only give their account", "named")
    if not actor.role.every_team and actor.team != state.team:
        return _forbidden("not a member of the case's team", "not_team")
    return None


def _open_check(state: CaseState) -> Refusal | None:
    if state.status in (Status.RESOLVED, Status.CLOSED):
        return _conflict(state, f"the case is {state.status}", "case_decided")
    return None


def _held_at_least(held: frozenset[Role], role: Role, strictly: bool = False) -> Role | None:
    # The lowest role someone active holds at or (strictly) above `role`.
    floor = rank(role) + (1 if strictly else 0)
    return next((r for r in ROLES[floor:] if r in held), None)


# --- clocks -----------------------------------------------------------------------------------


def _calendar(state: CaseState, ctx: Context) -> Calendar:
    return calendar_for(ctx.policy, state.team)


def _deadlines(clocks: Sequence[Clock], reason: str, policy_version: int) -> Draft:
    ack = next((c for c in clocks if c.kind is ClockKind.ACKNOWLEDGE), None)
    res = next((c for c in clocks if c.kind is ClockKind.RESOLVE), None)
    return Kind.DEADLINES_SET, {
        "reason": reason,
        "acknowledge_by": rfc3339(ack.deadline) if ack else None,
        "resolve_by": rfc3339(res.deadline) if res else None,
        "clocks": [c.to_json() for c in clocks],
        "policy_version": policy_version,
    }


def _set_clocks(
    state: CaseState,
    ctx: Context,
    reason: str,
    *,
    drop: Callable[[Clock], bool] = lambda c: False,
    add: Sequence[Clock] = (),
    change: Callable[[Clock], Clock] = lambda c: c,
) -> Draft:
    clocks = [change(c) for c in state.clocks if not drop(c)] + list(add)
    return _deadlines(clocks, reason, ctx.policy.version)


def _approval_clock(state: CaseState, ctx: Context, role: Role) -> Clock:
    return Clock.start(
        ClockKind.APPROVAL,
        state.next_run(ClockKind.APPROVAL),
        ctx.policy.clocks.approval_within,
        ctx.now,
        _calendar(state, ctx),
        subject=str(role),
    )


def _is_approval(clock: Clock) -> bool:
    return clock.kind is ClockKind.APPROVAL


# --- decide -----------------------------------------------------------------------------------

Result: TypeAlias = "list[Draft] | Refusal"


def decide(state: CaseState, command: Command, context: Context) -> list[Event] | Refusal:
    """The events `command` produces on `state` in `context`, or why it is refused."""
    if context.expected_version is not None and context.expected_version != state.version:
        return _conflict(state, f"the case is at version {state.version}", "stale_version")
    if state.status is Status.NEW and not isinstance(command, Open):
        return _conflict(state, "the case is not open", "not_open")
    result = _HANDLERS[type(command)](state, command, context)
    if isinstance(result, Refusal) or not result:
        return result if isinstance(result, Refusal) else []
    return seal(state, result, context.actor.id, context.now)


def reads_held_roles(state: CaseState, command: Command) -> bool:
    """Whether deciding `command` on `state` reads `Context.held_roles` (the roles someone
    active holds in the team's chain), so the handler need not read them otherwise: who
    approves a proposal above authority, who confirms a `not_upheld` on a case naming staff,
    who decides a reopened case, to whom a clock escalates or an approval climbs."""
    if isinstance(command, Resolve):
        return command.outcome is Outcome.NOT_UPHELD and bool(state.staff)
    return isinstance(command, ProposeRemedy | Reopen | ClockFired)


def open_case(facts: RoutedFacts, context: Context) -> list[Event] | Refusal:
    """The events opening a case on a routed complaint (`decide(EMPTY, Open(facts), ...)`)."""
    return decide(EMPTY, Open(facts), context)


def _open(state: CaseState, cmd: Open, ctx: Context) -> Result:
    if state.status is not Status.NEW:
        return _conflict(state, "the case is already open", "already_open")
    if ctx.actor.kind is not ActorKind.SYSTEM:
        return _forbidden("only the system opens cases", "system_only")
    f = cmd.facts
    targets = ctx.policy.clocks.targets(f.severity, f.channel)
    cal = calendar_for(ctx.policy, f.team)
    warn = ctx.policy.clocks.warn_at
    clocks = [
        Clock.start(
            ClockKind.ACKNOWLEDGE, 1, targets.acknowledge_within, f.received_at, cal, warn_at=warn
        ),
        Clock.start(ClockKind.RESOLVE, 1, targets.resolve_within, f.received_at, cal, warn_at=warn),
    ]
    drafts: list[Draft] = [
        (
            Kind.CASE_OPENED,
            {
                "complaint_id": f.complaint_id,
                "team": f.team,
                "assignee": f.assignee,
                "severity": str(f.severity),
                "category": str(f.category),
                "channel": str(f.channel),
                "customer_id": f.customer_id,
                "amount_at_stake": _money(f.amount_at_stake),
                "staff_involved": list(dict.fromkeys(f.staff_involved)),
                "received_at": rfc3339(f.received_at),
                "policy_version": ctx.policy.version,
            },
        )
    ]
    for run, staff_id in enumerate(dict.fromkeys(f.staff_involved), start=1):
        clock = Clock.start(
            ClockKind.STAFF_RESPONSE,
            run,
            ctx.policy.clocks.staff_response_within,
            ctx.now,
            cal,
            subject=staff_id,
        )
        clocks.append(clock)
        drafts.append(_staff_requested(staff_id, clock))
    drafts.append(_deadlines(clocks, "opened", ctx.policy.version))
    return drafts


def _money(value: Money | None) -> dict[str, str] | None:
    return {"amount": value.amount, "currency": value.currency} if value else None


def _staff_requested(staff_id: str, clock: Clock) -> Draft:
    return Kind.STAFF_RESPONSE_REQUESTED, {
        "staff_id": staff_id,
        "run": clock.run,
        "respond_by": rfc3339(clock.deadline),
    }


def _acknowledge(state: CaseState, cmd: Acknowledge, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor) or _open_check(state)
    if refused:
        return refused
    if state.acknowledged_at is not None:
        return _conflict(state, "already acknowledged", "already_acknowledged")
    ack = state.clock(ClockKind.ACKNOWLEDGE)
    due = ack.deadline if ack else None
    return [
        (
            Kind.ACKNOWLEDGED,
            {"acknowledge_by": rfc3339(due), "within_deadline": due is None or ctx.now <= due},
        ),
        _set_clocks(state, ctx, "acknowledged", drop=lambda c: c.kind is ClockKind.ACKNOWLEDGE),
    ]


def _assign(state: CaseState, cmd: Assign, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor) or _closed_check(state)
    if refused:
        return refused
    target = ctx.target
    if target is None or target.id != cmd.to or not target.active:
        return _malformed("the assignee must be an active staff member", "to")
    if not target.role.every_team and target.team != state.team:
        return _malformed("the assignee must be a member of the case's team", "to")
    if state.named(target.id):
        return _malformed("staff named in the complaint cannot hold the case", "to")
    if state.assignee == target.id:
        return _conflict(state, "already assigned to them", "already_assigned")
    return [_assigned(state, target.id, claimed=False)]


def _reassigned(state: CaseState, cmd: Reassigned, ctx: Context) -> Result:
    # intake keeps who holds what in step with the directory; only the system relays it
    if ctx.actor.kind is not ActorKind.SYSTEM:
        return _forbidden("only the system relays intake's reassignments", "system_only")
    if state.assignee != cmd.from_ or state.assignee == cmd.to:
        return []  # the case moved since (a claim, an assignment): intake follows that one
    if state.status in (Status.RESOLVED, Status.CLOSED):
        return []
    return [(Kind.ASSIGNED, {**_assigned(state, cmd.to, claimed=False)[1], "reason": cmd.reason})]


def _claim(state: CaseState, cmd: Claim, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor) or _closed_check(state)
    if refused:
        return refused
    if state.assignee == ctx.actor.id:
        return _conflict(state, "already assigned to them", "already_assigned")
    return [_assigned(state, ctx.actor.id, claimed=True)]


def _assigned(state: CaseState, to: str | None, *, claimed: bool) -> Draft:
    return Kind.ASSIGNED, {"from_assignee": state.assignee, "to_assignee": to, "claimed": claimed}


def _closed_check(state: CaseState) -> Refusal | None:
    if state.status is Status.CLOSED:
        return _conflict(state, "the case is closed", "case_closed")
    return None


def _request_information(state: CaseState, cmd: RequestInformation, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor) or _open_check(state)
    if refused:
        return refused
    if not cmd.question.strip():
        return _malformed("a question is required", "question")
    if state.awaiting_customer_since is not None:
        return _conflict(state, "already awaiting the customer", "awaiting_customer")
    cal = _calendar(state, ctx)
    # Rule 6: the resolve clock pauses while the case waits on the customer.
    return [
        (Kind.INFORMATION_REQUESTED, {"question": cmd.question}),
        _set_clocks(
            state,
            ctx,
            "paused",
            change=lambda c: c.pause(ctx.now, cal) if c.kind is ClockKind.RESOLVE else c,
        ),
    ]


def _customer_replied(state: CaseState, cmd: CustomerReplied, ctx: Context) -> Result:
    if ctx.actor.kind is not ActorKind.CUSTOMER:
        return _forbidden("only the customer's channel replies", "customer_only")
    if state.awaiting_customer_since is None:
        return _conflict(state, "the case is not awaiting the customer", "not_awaiting_customer")
    if not cmd.text.strip():
        return _malformed("a reply text is required", "text")
    cal = _calendar(state, ctx)
    return [
        (
            Kind.CUSTOMER_REPLIED,
            {"text": cmd.text, "awaited_since": rfc3339(state.awaiting_customer_since)},
        ),
        _set_clocks(
            state,
            ctx,
            "resumed",
            change=lambda c: c.resume(ctx.now, cal) if c.kind is ClockKind.RESOLVE else c,
        ),
    ]


def _request_staff_response(state: CaseState, cmd: RequestStaffResponse, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor) or _open_check(state)
    if refused:
        return refused
    # Asks again everyone named who has not answered and has no window open.
    open_windows = {c.subject for c in state.clocks if c.kind is ClockKind.STAFF_RESPONSE}
    ask = [
        h.staff_id for h in state.staff if h.answered_at is None and h.staff_id not in open_windows
    ]
    if not ask:
        return _conflict(state, "no named staff member is left to ask", "nothing_to_request")
    cal = _calendar(state, ctx)
    first = state.next_run(ClockKind.STAFF_RESPONSE)
    clocks = [
        Clock.start(
            ClockKind.STAFF_RESPONSE,
            first + i,
            ctx.policy.clocks.staff_response_within,
            ctx.now,
            cal,
            subject=s,
        )
        for i, s in enumerate(ask)
    ]
    drafts = [_staff_requested(c.subject, c) for c in clocks]
    return [*drafts, _set_clocks(state, ctx, "staff_response_requested", add=clocks)]


def _staff_respond(state: CaseState, cmd: StaffRespond, ctx: Context) -> Result:
    actor = ctx.actor
    if actor.kind is not ActorKind.STAFF or not actor.active:
        return _forbidden("only active staff may give an account", "staff_only")
    hearing = next((h for h in state.staff if h.staff_id == actor.id), None)
    if hearing is None:
        return _forbidden("only staff named in the complaint give an account", "not_named")
    refused = _open_check(state)
    if refused:
        return refused
    if hearing.answered_at is not None:
        return _conflict(state, "already answered", "already_answered")
    if not cmd.statement.strip():
        return _malformed("a statement is required", "statement")
    return [
        (
            Kind.STAFF_RESPONDED,
            {
                "staff_id": actor.id,
                "statement": cmd.statement,
                "requested_at": rfc3339(hearing.requested_at),
                "after_window": hearing.window_closed_at is not None,
            },
        ),
        _set_clocks(
            state,
            ctx,
            "staff_responded",
            drop=lambda c: c.kind is ClockKind.STAFF_RESPONSE and c.subject == actor.id,
        ),
    ]


# --- remedies ---------------------------------------------------------------------------------


def _propose(state: CaseState, cmd: ProposeRemedy, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor) or _open_check(state) or _proposal_check(state)
    if refused:
        return refused
    assert ctx.actor.role is not None
    role, remedy = ctx.actor.role, cmd.remedy
    malformed = _remedy_malformed(remedy)
    if malformed:
        return malformed
    exception = _outlier(ctx, remedy)
    if exception and not (cmd.justification or "").strip():
        return Refusal(
            422,
            "a remedy far outside similar complaints needs a justification",
            "justification_required",
            missing=["justification"],
        )
    blockers = ([] if covers(ctx.policy, role, remedy) else ["limit"]) + within_caps(
        ctx.policy, role, remedy, ctx.usage
    )
    if not blockers and not exception:
        return _applied_at_once(cmd, ctx, role)
    needed = required_role(ctx.policy, remedy, ctx.usage)
    if needed is None:
        return _forbidden("above a director's limit or customer cap", "above_director")
    if exception:
        needed = max(needed, role, key=rank)  # the second pair of eyes is no lower
    waiting = _held_at_least(ctx.held_roles, needed)
    if waiting is None:
        return _forbidden(f"no active {needed} or above in the team's chain", "no_approver", needed)
    return _approval_drafts(state, ctx, cmd, needed, waiting, blockers, exception)


def _proposal_check(state: CaseState) -> Refusal | None:
    if state.pending is not None:
        return _conflict(state, "a proposal is awaiting approval", "pending_approval")
    if state.applied is not None:
        return _conflict(state, "a remedy is already applied", "remedy_applied")
    return None


def _remedy_malformed(remedy: Remedy) -> Refusal | None:
    value = remedy.value()
    if value is not None and value <= 0:
        return _malformed("the amount must be above zero", "remedy.amount")
    if remedy.percent is not None and not 0 < remedy.percent <= 100:
        return _malformed("the percent must be above 0 and at most 100", "remedy.percent")
    return None


def _outlier(ctx: Context, remedy: Remedy) -> bool:
    # Rule 5: only money remedies are compared, and only with a sample in the same currency.
    value, sample = remedy.value(), ctx.sample
    if value is None or sample is None or remedy.amount is None:
        return False
    if sample.currency != remedy.amount.currency:
        return False
    return is_outlier(ctx.policy, value, sample.count, sample.median)


def _proposed(cmd: ProposeRemedy, ctx: Context, **extra: Any) -> Draft:
    return Kind.REMEDY_PROPOSED, {
        "remedy": cmd.remedy.to_json(),
        "note": cmd.note,
        "proposer": ctx.actor.id,
        "proposer_role": str(ctx.actor.role),
        "justification": cmd.justification,
        "policy_version": ctx.policy.version,
        **extra,
    }


def _applied_at_once(cmd: ProposeRemedy, ctx: Context, role: Role) -> list[Draft]:
    return [
        _proposed(
            cmd,
            ctx,
            applies_at_once=True,
            required_role=None,
            waiting_role=None,
            policy_exception=False,
            blocked_by=[],
        ),
        (
            Kind.REMEDY_APPROVED,
            {
                "remedy": cmd.remedy.to_json(),
                "authorized_by": ctx.actor.id,
                "authorized_role": str(role),
                "proposer": ctx.actor.id,
                "note": cmd.note,
                "policy_exception": False,
                "justification": None,
                "policy_version": ctx.policy.version,
            },
        ),
    ]


def _approval_drafts(
    state: CaseState,
    ctx: Context,
    cmd: ProposeRemedy,
    needed: Role,
    waiting: Role,
    blockers: list[str],
    exception: bool,
) -> list[Draft]:
    clock = _approval_clock(state, ctx, waiting)
    return [
        _proposed(
            cmd,
            ctx,
            applies_at_once=False,
            required_role=str(needed),
            waiting_role=str(waiting),
            policy_exception=exception,
            blocked_by=blockers,
        ),
        _approval_requested(PendingKind.REMEDY, needed, waiting, clock, "proposed", None),
        _set_clocks(state, ctx, "approval_requested", drop=_is_approval, add=[clock]),
    ]


def _approval_requested(
    kind: PendingKind,
    needed: Role,
    waiting: Role,
    clock: Clock,
    reason: str,
    previous: Role | None,
) -> Draft:
    return Kind.APPROVAL_REQUESTED, {
        "subject": str(kind),
        "required_role": str(needed),
        "role": str(waiting),
        "run": clock.run,
        "approve_by": rfc3339(clock.deadline),
        "reason": reason,
        "previous_role": str(previous) if previous else None,
    }


def _approve(state: CaseState, cmd: Approve, ctx: Context) -> Result:
    pending = state.pending
    if pending is None:
        return _conflict(state, "nothing awaits approval", "no_pending")
    refused = _staff_check(state, ctx.actor)
    if refused:
        return refused
    if ctx.actor.id == pending.proposer:
        return _forbidden("nobody approves their own proposal", "self_approval")
    if pending.kind is PendingKind.NOT_UPHELD:
        return _confirm_not_upheld(state, pending, cmd, ctx)
    refused = _approver_authority(pending, ctx)
    if refused:
        return refused
    assert pending.remedy is not None
    return [
        (
            Kind.REMEDY_APPROVED,
            {
                "remedy": pending.remedy.to_json(),
                "authorized_by": ctx.actor.id,
                "authorized_role": str(ctx.actor.role),
                "proposer": pending.proposer,
                "note": cmd.note,
                "policy_exception": pending.policy_exception,
                "justification": pending.justification,
                "policy_version": ctx.policy.version,
            },
        ),
        _set_clocks(state, ctx, "approved", drop=_is_approval),
    ]


def _approver_authority(pending: Pending, ctx: Context) -> Refusal | None:
    # Rule 3: nobody approves above their own limit; the approval counts on their daily cap.
    role = ctx.actor.role
    assert role is not None and pending.remedy is not None
    if not covers(ctx.policy, role, pending.remedy):
        return _forbidden(f"above the {role}'s limit", "above_limit", pending.waiting_role)
    caps = within_caps(ctx.policy, role, pending.remedy, ctx.usage)
    if caps:
        return _forbidden(
            f"would exceed the approver's {' and '.join(caps)}",
            "cap_exceeded",
            pending.waiting_role,
        )
    if pending.policy_exception and rank(role) < rank(pending.proposer_role):
        return _forbidden(
            "an exception needs a second approver of at least the proposer's role",
            "exception_needs_peer",
            pending.proposer_role,
        )
    return None


def _confirmer_floor(proposer_role: Role) -> tuple[Role, bool]:
    # A higher role than the proposer's; a director's decision by another director.
    if proposer_role is Role.DIRECTOR:
        return Role.DIRECTOR, False
    return proposer_role, True


def _confirm_not_upheld(state: CaseState, pending: Pending, cmd: Approve, ctx: Context) -> Result:
    role = ctx.actor.role
    assert role is not None
    floor, strictly = _confirmer_floor(pending.proposer_role)
    if rank(role) < rank(floor) + (1 if strictly else 0):
        return _forbidden(
            "a not_upheld decision on named staff needs a higher role to confirm",
            "confirmer_role",
            pending.required_role,
        )
    decision = Decision(
        Outcome.NOT_UPHELD,
        pending.message,
        pending.proposer,
        pending.proposer_role,
        ctx.now,
        ctx.actor.id,
        role,
    )
    return _resolved_drafts(state, ctx, decision, cmd.note)


def _decline(state: CaseState, cmd: Decline, ctx: Context) -> Result:
    pending = state.pending
    if pending is None:
        return _conflict(state, "nothing awaits approval", "no_pending")
    refused = _staff_check(state, ctx.actor)
    if refused:
        return refused
    assert ctx.actor.role is not None
    if ctx.actor.id == pending.proposer:
        return _forbidden("the proposer withdraws rather than declines", "self_decline")
    if rank(ctx.actor.role) < rank(pending.required_role):
        return _forbidden(
            "below the role the proposal waits for", "below_required", pending.required_role
        )
    if not cmd.reason.strip():
        return _malformed("a reason is required", "reason")
    kind = Kind.REMEDY_DECLINED if pending.kind is PendingKind.REMEDY else Kind.RESOLUTION_DECLINED
    return [
        (
            kind,
            {
                "reason": cmd.reason,
                "declined_by": ctx.actor.id,
                "proposer": pending.proposer,
                "remedy": pending.remedy.to_json() if pending.remedy else None,
            },
        ),
        _set_clocks(state, ctx, "declined", drop=_is_approval),
    ]


def _withdraw(state: CaseState, cmd: Withdraw, ctx: Context) -> Result:
    pending = state.pending
    if pending is None:
        return _conflict(state, "nothing awaits approval", "no_pending")
    if ctx.actor.id != pending.proposer or ctx.actor.kind is not ActorKind.STAFF:
        return _forbidden("only the proposer withdraws a proposal", "not_proposer")
    kind = (
        Kind.REMEDY_WITHDRAWN if pending.kind is PendingKind.REMEDY else Kind.RESOLUTION_WITHDRAWN
    )
    return [
        (kind, {"remedy": pending.remedy.to_json() if pending.remedy else None}),
        _set_clocks(state, ctx, "withdrawn", drop=_is_approval),
    ]


# --- resolving --------------------------------------------------------------------------------


def _resolve(state: CaseState, cmd: Resolve, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor) or _open_check(state) or _resolve_check(state, cmd)
    if refused:
        return refused
    role = ctx.actor.role
    assert role is not None
    if state.reopened_to is not None and rank(role) < rank(state.reopened_to):
        return _forbidden(
            "a reopened case is decided by a role above the last decider",
            "reopened_to_higher_role",
            state.reopened_to,
        )
    if cmd.outcome is Outcome.NOT_UPHELD and state.staff:
        return _propose_not_upheld(state, cmd, ctx, role)
    decision = Decision(cmd.outcome, cmd.message, ctx.actor.id, role, ctx.now)
    return _resolved_drafts(state, ctx, decision, "")


def _resolve_check(state: CaseState, cmd: Resolve) -> Refusal | None:
    # Rule 4: nobody decides before each named person answered or their window closed.
    if state.pending is not None:
        return _conflict(state, "a proposal is awaiting approval", "pending_approval")
    unheard = state.unheard()
    if unheard:
        return _conflict(state, "named staff not yet heard", "staff_not_heard", unheard)
    if cmd.outcome is Outcome.NOT_UPHELD:
        if state.applied is not None:
            return _conflict(
                state,
                "a remedy was applied: the complaint is upheld at least in part",
                "remedy_applied",
            )
        if not cmd.message.strip():
            return _malformed("not_upheld needs an explanation for the customer", "message")
    elif state.applied is None and not state.previous_remedies:
        return _conflict(
            state,
            "an upheld complaint needs an applied remedy (apology_only counts)",
            "remedy_required",
            ["remedy"],
        )
    return None


def _propose_not_upheld(state: CaseState, cmd: Resolve, ctx: Context, role: Role) -> Result:
    floor, strictly = _confirmer_floor(role)
    waiting = _held_at_least(ctx.held_roles, floor, strictly=strictly)
    needed = waiting or floor
    if waiting is None:
        return _forbidden(
            "nobody active holds a role above yours to confirm", "no_approver", needed
        )
    clock = _approval_clock(state, ctx, waiting)
    return [
        (
            Kind.RESOLUTION_PROPOSED,
            {
                "outcome": str(cmd.outcome),
                "message": cmd.message,
                "proposer": ctx.actor.id,
                "proposer_role": str(role),
                "required_role": str(needed),
                "waiting_role": str(waiting),
                "policy_version": ctx.policy.version,
            },
        ),
        _approval_requested(PendingKind.NOT_UPHELD, needed, waiting, clock, "proposed", None),
        _set_clocks(state, ctx, "approval_requested", drop=_is_approval, add=[clock]),
    ]


def _resolved_drafts(state: CaseState, ctx: Context, d: Decision, note: str) -> list[Draft]:
    res = state.clock(ClockKind.RESOLVE)
    due = res.deadline if res else None
    applied = state.applied
    return [
        (
            Kind.RESOLVED,
            {
                "outcome": str(d.outcome),
                "message": d.message,
                "decided_by": d.by,
                "decided_role": str(d.role),
                "confirmed_by": d.confirmed_by,
                "confirmed_role": str(d.confirmed_role) if d.confirmed_role else None,
                "note": note,
                "remedy": applied.remedy.to_json() if applied else None,
                "resolve_by": rfc3339(due),
                "within_deadline": due is None or ctx.now <= due,
            },
        ),
        _deadlines([], "resolved", ctx.policy.version),
    ]


def _reopen(state: CaseState, cmd: Reopen, ctx: Context) -> Result:
    if cmd.by_customer:
        refused = (
            None
            if ctx.actor.kind is ActorKind.CUSTOMER
            else _forbidden("a customer appeal comes from the customer", "customer_only")
        )
    else:
        refused = _staff_check(state, ctx.actor)
    if refused:
        return refused
    decision = state.decision
    if decision is None:
        return _conflict(state, "only a resolved case reopens", "not_resolved")
    if ctx.now > decision.at + ctx.policy.clocks.reopen_within:
        return _conflict(state, "the reopen window has closed", "reopen_window_closed")
    if not cmd.reason.strip():
        return _malformed("a reason is required", "reason")
    to_role = _held_at_least(ctx.held_roles, decision.top_role(), strictly=True) or Role.DIRECTOR
    targets = ctx.policy.clocks.targets(state.severity, state.channel)
    clock = Clock.start(
        ClockKind.RESOLVE,
        state.next_run(ClockKind.RESOLVE),
        targets.resolve_within,
        ctx.now,
        _calendar(state, ctx),
        warn_at=ctx.policy.clocks.warn_at,
    )
    return [
        (
            Kind.REOPENED,
            {
                "reason": cmd.reason,
                "by_customer": cmd.by_customer,
                "to_role": str(to_role),
                "run": clock.run,
                "previous_outcome": str(decision.outcome),
            },
        ),
        _set_clocks(state, ctx, "reopened", add=[clock]),
    ]


def _close(state: CaseState, cmd: Close, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor)
    if refused:
        return refused
    if state.status is not Status.RESOLVED:
        return _conflict(state, "only a resolved case closes", "not_resolved")
    return [(Kind.CLOSED, {"outcome": str(state.decision.outcome) if state.decision else None})]


def _note(state: CaseState, cmd: Note, ctx: Context) -> Result:
    refused = _staff_check(state, ctx.actor)
    if refused:
        return refused
    if not cmd.text.strip():
        return _malformed("a note text is required", "text")
    return [(Kind.NOTE_ADDED, {"text": cmd.text})]


# --- clocks firing ----------------------------------------------------------------------------


def _clock_fired(state: CaseState, cmd: ClockFired, ctx: Context) -> Result:
    if ctx.actor.kind is not ActorKind.SYSTEM:
        return _forbidden("only the timer service fires clocks", "system_only")
    clock = state.clock(cmd.kind, cmd.run)
    due = clock.time_of(cmd.what) if clock and clock.running else None
    if clock is None or due is None or cmd.what in clock.fired or ctx.now < due:
        return []  # stale or early: a timer raced a pause, a resume or a decision
    if cmd.what.startswith("warning:"):
        if END_OF[clock.kind] in clock.fired:
            return []  # a late warning after the breach says nothing new
        return [_sla_event(Kind.SLA_WARNING, clock, cmd.what, due)]
    if clock.kind is ClockKind.APPROVAL:
        return _approval_timeout(state, clock, ctx)
    if clock.kind is ClockKind.STAFF_RESPONSE:
        return [
            (
                Kind.STAFF_RESPONSE_WINDOW_CLOSED,
                {"staff_id": clock.subject, "run": clock.run, "due_at": rfc3339(due)},
            ),
            _set_clocks(
                state,
                ctx,
                "response_window_closed",
                drop=lambda c: (c.kind, c.run) == (clock.kind, clock.run),
            ),
        ]
    # a warning whose timer has not fired yet (a lagging or busy replica) goes out first: each
    # warning of a running clock is said once, before its breach, whatever order timers fire in
    missed = [
        _sla_event(Kind.SLA_WARNING, clock, warning_what(fraction), at)
        for fraction, at in sorted(clock.warn_times)
        if warning_what(fraction) not in clock.fired
    ]
    return [
        *missed,
        _sla_event(Kind.SLA_BREACHED, clock, cmd.what, due),
        *_escalation(state, clock, ctx),
    ]


def _sla_event(kind: Kind, clock: Clock, what: str, due: datetime) -> Draft:
    return kind, {
        "clock": str(clock.kind),
        "run": clock.run,
        "what": what,
        "due_at": rfc3339(clock.deadline),
        "fired_for": rfc3339(due),
        "started_at": rfc3339(clock.started_at),
    }


def _escalation(state: CaseState, clock: Clock, ctx: Context) -> list[Draft]:
    # Rule 6: a breach escalates to the next held role above the assignee's (or agent's).
    base = max(ctx.assignee_role or Role.AGENT, state.escalated_to or Role.AGENT, key=rank)
    to_role = _held_at_least(ctx.held_roles, base, strictly=True)
    if to_role is None:
        return []
    return [
        (
            Kind.ESCALATED,
            {
                "clock": str(clock.kind),
                "run": clock.run,
                "from_role": str(base),
                "to_role": str(to_role),
                "reason": "sla_breached",
            },
        )
    ]


def _approval_timeout(state: CaseState, clock: Clock, ctx: Context) -> list[Draft]:
    pending = state.pending
    if pending is None or pending.approval_run != clock.run:
        return []
    to_role = _held_at_least(ctx.held_roles, pending.waiting_role, strictly=True)
    if to_role is None:  # nobody above: the approval clock is breached, the request stays
        return [_sla_event(Kind.SLA_BREACHED, clock, END_OF[clock.kind], clock.deadline or ctx.now)]
    new = _approval_clock(state, ctx, to_role)
    return [
        _approval_requested(
            pending.kind,
            pending.required_role,
            to_role,
            new,
            "approval_timeout",
            pending.waiting_role,
        ),
        _set_clocks(state, ctx, "approval_climbed", drop=_is_approval, add=[new]),
    ]


_HANDLERS: dict[type, Callable[[CaseState, Any, Context], Result]] = {
    Open: _open,
    Acknowledge: _acknowledge,
    Assign: _assign,
    Claim: _claim,
    RequestInformation: _request_information,
    CustomerReplied: _customer_replied,
    RequestStaffResponse: _request_staff_response,
    StaffRespond: _staff_respond,
    ProposeRemedy: _propose,
    Withdraw: _withdraw,
    Approve: _approve,
    Decline: _decline,
    Resolve: _resolve,
    Reopen: _reopen,
    Close: _close,
    Note: _note,
    ClockFired: _clock_fired,
    Reassigned: _reassigned,
}


def initial_state(facts: RoutedFacts, context: Context) -> CaseState:
    """The state of a case opened on `facts` (all opening events applied)."""
    events = open_case(facts, context)
    assert not isinstance(events, Refusal)
    return replay(events)
