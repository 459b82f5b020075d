"""Resolution's case use cases: open a case, act on it, fire its clocks.

Each reads: lock the case's row and replay its decided events → gather what the decision
needs (`Context`: who acts, the roles held in the team's chain, usage against the caps, the
consistency sample, `now`) → `decide` → one transaction writes the decision log, the read
model, the remedies applied, the outbox and the clocks' timers. A refusal changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from services.resolution import actions, domain, repository, states
from services.resolution.case import (
    EMPTY,
    SYSTEM,
    Actor,
    ActorKind,
    Approve,
    Assign,
    CaseState,
    ClockFired,
    Command,
    Context,
    Decline,
    Event,
    Kind,
    Member,
    ProposeRemedy,
    Refusal,
    RoutedFacts,
    Sample,
    decide,
    open_case,
    reads_held_roles,
    replay,
)
from services.resolution.clocks import ClockKind, timers_between
from services.resolution.policy import Policy, Usage, consistency_band
from shared import db, directory, outbox, telemetry, timers
from shared.db import Conn
from shared.events import Money, RoutedData

log = logging.getLogger(__name__)

SOURCE = "complaints/resolution"
# The active policy (version None) or a given version of it.
PolicySource = Callable[[Conn, int | None], Awaitable[Policy]]
# The timer kind every case clock (warnings, breaches, approval and response windows) uses.
CLOCK_TIMER = "case_clock"
# A clock timer's payload keeps the trace context it was armed in under this key.
TRACE = "trace"


@dataclass(frozen=True)
class Kept:
    """A decision kept: the case's state after it, and its view when one was asked for (None
    when not, or when there was nothing to decide)."""

    state: CaseState
    view: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """Decided events of one case, to be kept: the state before and after them, the policy
    they were decided under, the timers firing them (never cancelled: the worker marks them
    fired) and the trace their events continue (None: the current context)."""

    events: Sequence[Event]
    before: CaseState
    after: CaseState
    policy: Policy
    firing: Collection[str] = ()
    trace: dict[str, str] | None = None


@dataclass(frozen=True)
class Loaded:
    """A case as a decision sees it: its row (locked) and its state."""

    row: asyncpg.Record
    state: CaseState


async def load(
    conn: Conn, complaint_id: str, *, known: states.States, lock: bool = True
) -> Loaded | None:
    """The case, its row locked until the transaction ends (one decision at a time per case);
    None when no case has this id (or it is not opened yet). Without `lock`, a read: nothing
    is locked. `known`: the states this process keeps (a read goes on from the case's)."""
    base = known.get(complaint_id)
    read = await repository.lock_case_with_events(
        conn, complaint_id, known=base.version if base else 0, lock=lock
    )
    if read is None or read.row["version"] == 0:
        return None
    # a plain read is kept for no decision (and may be of a case the reader may not see)
    return Loaded(read.row, await _current(conn, read, base, known if lock else None))


async def _current(
    conn: Conn, read: repository.CaseRead, base: CaseState | None, known: states.States | None
) -> CaseState:
    """The state of a case as read (onto `base`, the state this process knew before the
    read); kept in `known` (if given) for the next decision on it."""
    state = states.fold(read, base)
    if state is None:  # `base` is not this case's history: read it whole
        whole = await repository.case_events(conn, read.row["complaint_id"])
        state = replay(states.events_of(whole))
    if known is not None:
        known.put(state)
    return state


async def open_many(
    conn: Conn,
    routed: Sequence[tuple[RoutedData, dict[str, str] | None]],
    *,
    policy: Policy,
    now: datetime,
    known: states.States,
) -> None:
    """Open the cases of routed complaints (their clocks, and a request to each named person)
    in a few statements, whatever their number: each `(routed, trace)`'s case is decided
    alone, and its events continue `trace` (None: the current context). A complaint routed
    twice opens once, by its first routing."""
    first: dict[str, tuple[RoutedData, dict[str, str] | None]] = {}
    for data, trace in routed:
        first.setdefault(data.complaint_id, (data, trace))
    await repository.open_cases(conn, [data for data, _ in first.values()])
    rows = await repository.lock_cases(conn, list(first))
    decisions: list[Decision] = []
    for row in rows:
        if row["version"] > 0:
            continue  # opened already (routed twice)
        data, trace = first[row["complaint_id"]]
        stake = row["amount_at_stake"]
        facts = RoutedFacts.from_routed(
            data,
            customer_id=row["customer_id"] or "",
            amount_at_stake=Money.model_validate(stake) if stake else None,
        )
        result = open_case(facts, Context(SYSTEM, policy, now))
        if isinstance(result, Refusal):  # a routed complaint is always openable: a bug if not
            raise RuntimeError(f"opening refused: {result.code}")
        after = replay(result, EMPTY)
        known.put(after)
        decisions.append(Decision(result, EMPTY, after, policy, trace=trace))
        # a batch's decisions are pure work with no wait between them: let the other tasks of
        # the process (HTTP requests, other consumers) run between two, or a batch of 200
        # holds them all up (measured: 580 → 390 complaints/s routed in `complaints up`)
        await asyncio.sleep(0)
    await _commit_many(conn, decisions)


async def try_load_many(
    conn: Conn, complaint_ids: Collection[str], *, known: states.States
) -> tuple[dict[str, Loaded], set[str]]:
    """`load` for several cases in one round trip, never waiting for a lock: the opened cases
    no other transaction holds (their rows locked until this one ends), by id, and the ids of
    those another holds (a case missing from both does not exist or is not opened yet)."""
    bases = known.of(complaint_ids)
    reads = await repository.try_lock_cases_with_events(
        conn, {c: base.version if base else 0 for c, base in bases.items()}
    )
    missing = [c for c in bases if c not in reads]
    held = await repository.existing_cases(conn, missing) if missing else set()
    loaded = {
        complaint_id: Loaded(read.row, await _current(conn, read, bases[complaint_id], known))
        for complaint_id, read in reads.items()
        if read.row["version"] > 0
    }
    return loaded, held


async def act(
    conn: Conn,
    loaded: Loaded,
    command: Command,
    actor: Actor,
    *,
    policy: Policy,
    now: datetime,
    known: states.States,
    expected_version: int | None = None,
    answer: bool = False,
) -> Kept | Refusal:
    """Decide `command` by `actor` on the `load`ed case and keep the outcome: the new state
    (with `answer`, and the case's view after it), or the refusal (nothing changed)."""
    ctx = await context(
        conn, loaded.state, command, actor, policy=policy, now=now, expected=expected_version
    )
    return await _kept(conn, loaded.state, _decision(loaded.state, command, ctx), known, answer)


async def _kept(
    conn: Conn,
    state: CaseState,
    result: Decision | Refusal | None,
    known: states.States,
    answer: bool,
) -> Kept | Refusal:
    """A decision on `state` kept (see `_commit`), or its refusal (nothing changed)."""
    if isinstance(result, Refusal):
        return result
    if result is None:
        return Kept(state)  # nothing to decide (a move to where the case already is)
    return await _commit(conn, result, known=known, answer=answer)


def _decision(
    state: CaseState, command: Command, ctx: Context, trace: dict[str, str] | None = None
) -> Decision | Refusal | None:
    """`command` decided on `state` in `ctx`, not kept yet (its events continuing `trace`);
    None when there is nothing to decide."""
    result = decide(state, command, ctx)
    if isinstance(result, Refusal):
        return result
    if not result:
        return None
    return Decision(result, state, replay(result, state), ctx.policy, trace=trace)


async def staff_action(
    conn: Conn,
    loaded: Loaded,
    action: actions.Action,
    member: directory.Member,
    *,
    policies: PolicySource,
    now: datetime,
    known: states.States,
    answer: bool = False,
) -> Kept | Refusal:
    """A staff member's action, from HTTP or the command topic alike, decided and kept (see
    `act`): against the case version they saw, under the policy version a pending approval
    was proposed under, else the active one."""
    result = await staff_decision(conn, loaded.state, action, member, policies=policies, now=now)
    return await _kept(conn, loaded.state, result, known, answer)


async def staff_decision(
    conn: Conn,
    state: CaseState,
    action: actions.Action,
    member: directory.Member,
    *,
    policies: PolicySource,
    now: datetime,
    seen: dict[Any, Any] | None = None,
    unwritten: Unwritten | None = None,
    trace: dict[str, str] | None = None,
) -> Decision | Refusal | None:
    """`staff_action`'s decision, not kept yet (None: nothing to decide); with `seen` and
    `unwritten`, one of a batch's (see `context`), its events continuing `trace`."""
    command = actions.command(action)
    ctx = await context(
        conn,
        state,
        command,
        staff_actor(member, state),
        policy=await policies(conn, pinned_version(state, command)),
        now=now,
        expected=action.version,
        seen=seen,
        unwritten=unwritten,
    )
    return _decision(state, command, ctx, trace)


async def keep_many(
    conn: Conn, decided: Sequence[Decision], *, known: states.States, views: Collection[str] = ()
) -> dict[str, dict[str, Any]]:
    """Keep the decisions of distinct cases (see `_commit`), and read the views of the cases
    `views` after them (a case decided alone, and the only one asked for, is answered by the
    statement keeping it); the views by id."""
    if len(decided) == 1 and set(views) <= {decided[0].after.complaint_id}:
        kept = await _commit(conn, decided[0], known=known, answer=bool(views))
        return {kept.state.complaint_id: kept.view} if kept.view is not None else {}
    for d in decided:
        known.put(d.after)
    await _commit_many(conn, decided)
    return await repository.load_views(conn, views) if views else {}


async def fire(
    conn: Conn,
    timer: timers.Timer,
    now: datetime,
    *,
    policies: PolicySource,
    known: states.States,
) -> None:
    """A case clock's timer fired: warn, breach and escalate, climb an approval, or close a
    response window (a stale timer decides nothing). A case another transaction holds is never
    waited for (`timers.Later`: see `fire_many`)."""
    if await fire_many(conn, [timer], now, policies=policies, known=known):
        raise timers.Later()


async def fire_many(
    conn: Conn,
    due: Sequence[timers.Timer],
    now: datetime,
    *,
    policies: PolicySource,
    known: states.States,
) -> set[str]:
    """Case clocks' timers fired together, in a few statements: their cases locked and read
    in one, each case's timers decided in turn on its state, every decision's log, read model,
    remedies, outbox and clocks written together. A case another transaction holds is never
    waited for (the worker holds these timers: a decision holding the case may be arming or
    cancelling them, a deadlock); the keys of its timers are returned, to run a moment later."""
    by_case: dict[str, list[timers.Timer]] = {}
    for timer in sorted(due, key=lambda t: (t.due_at, t.key)):
        by_case.setdefault(str(timer.payload["complaint_id"]), []).append(timer)
    loaded, held = await try_load_many(conn, by_case, known=known)
    later = {t.key for c in held for t in by_case[c]}
    decided: list[Decision] = []
    seen: dict[Any, Any] = {}  # the directory as this batch read it
    for complaint_id in sorted(loaded):
        before = state = loaded[complaint_id].state
        new: list[Event] = []
        policy: Policy | None = None
        for timer in by_case[complaint_id]:
            command = ClockFired.from_payload(timer.payload)
            policy = await policies(conn, pinned_version(state, command))
            ctx = await context(conn, state, command, SYSTEM, policy=policy, now=now, seen=seen)
            result = decide(state, command, ctx)
            if isinstance(result, Refusal):
                log.debug("clock %s refused on %s: %s", timer.key, complaint_id, result.code)
                continue
            if result:
                new += result
                state = replay(result, state)
        if new and policy is not None:
            known.put(state)
            firing = {t.key for t in by_case[complaint_id]}
            trace = armed_in(by_case[complaint_id][0])
            decided.append(Decision(new, before, state, policy, firing, trace))
        await asyncio.sleep(0)  # pure work between two cases: let the process's other tasks run
    await _commit_many(conn, decided)
    return later


async def _commit_many(conn: Conn, decided: Sequence[Decision]) -> None:
    """`_commit` for the decisions of distinct cases, each statement once for all."""
    if not decided:
        return
    await repository.record_decisions(
        conn, [(d.events, _read_model(d.events, d.after)) for d in decided]
    )
    await _keep_effects(conn, decided)


async def _keep_effects(conn: Conn, decided: Sequence[Decision]) -> None:
    """What decisions kept in their log and read model lead to, in one statement for all."""
    writes = _effects(conn, decided)
    if writes:
        await db.joined(writes).run(conn)


def _effects(conn: Conn, decided: Sequence[Decision]) -> list[db.Write]:
    """The writes of what decisions lead to, for the caller's transaction: the remedies they
    applied, their events in the outbox, the clocks they want armed or no longer want."""
    applied = _applied(decided)
    writes = [repository.remedies_added(applied)] if applied else []
    messages = [_message(e, d.trace) for d in decided for e in d.events]
    if messages:
        writes.append(outbox.enqueued(conn, messages))
    return writes + _rearmed(conn, decided)


def _applied(decided: Sequence[Decision]) -> list[dict[str, Any]]:
    """The remedies decisions applied, as `remedies_added` writes them."""
    return [
        _remedy_row(e, d.after, d.policy)
        for d in decided
        for e in d.events
        if e.type is Kind.REMEDY_APPROVED
    ]


def _read_model(events: Sequence[Event], after: CaseState) -> dict[str, Any]:
    """The case's read model after `events` (which may record a breach)."""
    return domain.case_view(after, breached=any(e.type is Kind.SLA_BREACHED for e in events))


def pinned_version(state: CaseState, command: Command) -> int | None:
    """The policy version a decision on a pending approval takes: the one the proposal was
    made under (approving, declining, or its approval clock firing); None: the active one."""
    if state.pending is None:
        return None
    if isinstance(command, Approve | Decline) or (
        isinstance(command, ClockFired) and command.kind is ClockKind.APPROVAL
    ):
        return state.pending.policy_version
    return None


def staff_actor(member: directory.Member, state: CaseState) -> Actor:
    """The actor a directory member is on this case."""
    return Actor(
        id=member.staff_id,
        kind=ActorKind.STAFF,
        role=member.role,
        team=member.team,
        active=member.active,
        named_in_case=state.named(member.staff_id),
    )


@dataclass
class Unwritten:
    """Money a batch of decisions applied in its transaction that is not written yet (the batch
    writes it with everything else at its end), per (customer or staff member, currency): the
    caps of the batch's later decisions count it. The batch took the caps' locks of all its
    decisions before deciding any (`repository.try_lock_totals_many`, or `lock_totals_many`
    for an action deciding alone), so none of them takes any. The consistency
    sample is read as committed, as it is for decisions running at once in two transactions."""

    customer: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    staff: dict[tuple[str, str], Decimal] = field(default_factory=dict)

    def add(self, decision: Decision) -> None:
        """Count the money `decision` applied."""
        for row in _applied([decision]):
            if row["amount"] is None:
                continue
            amount, currency = Decimal(str(row["amount"])), row["currency"]
            for spent, who in (
                (self.customer, row["customer_id"]),
                (self.staff, row["authorized_by"]),
            ):
                spent[who, currency] = spent.get((who, currency), Decimal(0)) + amount

    def onto(self, usage: Usage, customer_id: str, staff_id: str) -> Usage:
        """`usage` (as committed) with what this batch applied to the customer and by the member."""
        return Usage(
            customer_window=_plus(usage.customer_window, self.customer, customer_id),
            staff_today=_plus(usage.staff_today, self.staff, staff_id),
        )


def _plus(
    committed: dict[str, Decimal], unwritten: dict[tuple[str, str], Decimal], who: str
) -> dict[str, Decimal]:
    total = dict(committed)
    for (whose, currency), amount in unwritten.items():
        if whose == who:
            total[currency] = total.get(currency, Decimal(0)) + amount
    return total


async def context(
    conn: Conn,
    state: CaseState,
    command: Command,
    actor: Actor,
    *,
    policy: Policy,
    now: datetime,
    expected: int | None = None,
    seen: dict[Any, Any] | None = None,
    unwritten: Unwritten | None = None,
) -> Context:
    """Everything `decide` needs besides the state and the command, read from the database
    (only what this command's rules read); `expected`: the case version the actor saw (None:
    not checked). With `seen`, the roles held in a chain and the assignees' roles are read
    once per batch of decisions sharing it (not the caps and samples, which each changes).
    With `unwritten`, a decision of a batch: the caps' locks are held already, and what the
    batch applied before it counts against them."""
    ctx = Context(actor=actor, policy=policy, now=now, expected_version=expected)
    seen = {} if seen is None else seen
    if isinstance(command, Assign):
        found = await directory.find_member(conn, command.to)
        if found is not None:
            ctx = replace(ctx, target=Member(found.staff_id, found.role, found.team, found.active))
    named = tuple(h.staff_id for h in state.staff)
    held_key = ("held", state.team, named)
    wants_held = reads_held_roles(state, command)
    if isinstance(command, ProposeRemedy | Approve):
        if unwritten is None:
            held = await repository.lock_totals(
                conn,
                customer_id=state.customer_id,
                staff_id=actor.id,
                held_in=(state.team, named) if wants_held and held_key not in seen else None,
            )
            if held is not None:
                seen[held_key] = held
        spent, sample = await _spent(conn, state, command, actor, policy, now, seen)
        if unwritten is not None:
            spent = unwritten.onto(spent, state.customer_id, actor.id)
        ctx = replace(ctx, usage=spent, sample=sample)
    if wants_held:
        if held_key not in seen:
            seen[held_key] = await repository.held_roles(conn, state.team, named)
        ctx = replace(ctx, held_roles=seen[held_key])
    if isinstance(command, ClockFired) and state.assignee:
        member_key = ("member", state.assignee)
        if member_key not in seen:
            seen[member_key] = await directory.find_member(conn, state.assignee)
        assignee = seen[member_key]
        ctx = replace(ctx, assignee_role=assignee.role if assignee else None)
    return ctx


async def usage(conn: Conn, state: CaseState, actor: Actor, policy: Policy, now: datetime) -> Usage:
    """Money applied to this customer in the caps' window, and by the actor today (UTC), as
    committed now (nothing locked: for a reader, not a decision)."""
    spent, _ = await _spent(conn, state, None, actor, policy, now)
    return spent


async def _spent(
    conn: Conn,
    state: CaseState,
    command: Command | None,
    actor: Actor,
    policy: Policy,
    now: datetime,
    seen: dict[Any, Any] | None = None,
) -> tuple[Usage, Sample | None]:
    """`usage`, and for a money proposal the sample of remedies of its type and currency
    granted for similar complaints, in one round trip (a decision holds the totals' locks
    already). With `seen`, a sample is read once per batch of decisions sharing it (all of
    them read at the batch's one `now`, as committed)."""
    similar = None
    if isinstance(command, ProposeRemedy) and command.remedy.amount is not None:
        similar = repository.Similar(
            category=state.category.value,
            severity=state.severity.value,
            band=consistency_band(policy, state.amount_at_stake),
            type_=command.remedy.type.value,
            currency=command.remedy.amount.currency,
            since=now - timedelta(days=policy.consistency.window_days),
        )
    known_sample = seen.get(("sample", similar)) if seen is not None and similar else None
    applied = await repository.money_applied(
        conn,
        customer_id=state.customer_id,
        customer_since=now - timedelta(days=policy.caps.customer_window_days),
        authorized_by=actor.id if actor.kind is ActorKind.STAFF else None,
        staff_since=now.replace(hour=0, minute=0, second=0, microsecond=0),
        similar=similar if known_sample is None else None,
    )
    spent = Usage(customer_window=applied.customer, staff_today=applied.own)
    if known_sample is not None:
        return spent, known_sample
    if similar is None or applied.similar_count is None:
        return spent, None
    sample = Sample(similar.currency, applied.similar_count, applied.similar_median)
    if seen is not None:
        seen["sample", similar] = sample
    return spent, sample


async def _commit(
    conn: Conn, decision: Decision, *, known: states.States, answer: bool = False
) -> Kept:
    """Keep a decision in one statement: log and read model (with `answer`, the view after
    it), remedies, outbox, timers."""
    known.put(decision.after)
    view = await repository.record_decision(
        conn,
        decision.events,
        _read_model(decision.events, decision.after),
        answer=answer,
        also=_effects(conn, [decision]),
    )
    return Kept(decision.after, view)


def _rearmed(conn: Conn, decided: Sequence[Decision]) -> list[db.Write]:
    """The writes that make the armed timers match what each case wants: cancel what it no
    longer wants (not the timers firing now), arm what is new or moved."""
    cancel: list[str] = []
    arm: list[tuple[str, datetime, str, Any]] = []
    for d in decided:
        old, new = timers_between(d.before, d.after)
        cancel += sorted(old.keys() - new.keys() - set(d.firing))
        # a clock's firing continues the trace of the decision that armed it: ops follow a
        # complaint from its submission to its last breach in one trace
        trace = d.trace if d.trace is not None else telemetry.inject_headers()
        arm += [
            (
                key,
                spec.due_at,
                CLOCK_TIMER,
                {**spec.payload, TRACE: trace} if trace else spec.payload,
            )
            for key, spec in sorted(new.items())
            if key not in old or old[key].due_at != spec.due_at
        ]
    return timers.changes(conn, cancel=cancel, arm=arm)


def armed_in(timer: timers.Timer) -> dict[str, str] | None:
    """The trace context a clock's timer was armed in (None: armed before timers kept one, or
    in none): only W3C trace headers, as text."""
    found = timer.payload.get(TRACE)
    if not isinstance(found, dict):
        return None
    trace = {
        k: v for k, v in found.items() if k in ("traceparent", "tracestate") and isinstance(v, str)
    }
    return trace or None


def _remedy_row(event: Event, state: CaseState, policy: Policy) -> dict[str, Any]:
    """An applied remedy as the caps, samples and the exceptions review read it."""
    detail = event.detail
    remedy: dict[str, Any] = detail["remedy"]
    amount = remedy.get("amount") or {}
    return {
        "event_id": event.event_id,
        "complaint_id": event.complaint_id,
        "customer_id": state.customer_id,
        "type": remedy["type"],
        "amount": amount.get("amount"),
        "currency": amount.get("currency"),
        "percent": remedy.get("percent"),
        "category": state.category.value,
        "severity": state.severity.value,
        "band": consistency_band(policy, state.amount_at_stake),
        "proposer": detail["proposer"],
        "authorized_by": detail["authorized_by"],
        "authorized_role": detail["authorized_role"],
        "policy_exception": bool(detail.get("policy_exception")),
        "justification": detail.get("justification"),
        "policy_version": int(detail.get("policy_version") or policy.version),
        "at": event.at,
    }


def _message(event: Event, trace: dict[str, str] | None = None) -> outbox.Message:
    """The decided event as its CloudEvent, under the id the decision log gave it, continuing
    `trace` (None: the current context)."""
    return outbox.complaint_event(
        event.type,
        source=SOURCE,
        complaint_id=event.complaint_id,
        data=event.data(),
        at=event.at,
        event_id=event.event_id,
        trace=trace,
    )
