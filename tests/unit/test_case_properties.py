"""Properties of the decider under random commands by random staff and random clock firings."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.resolution.audit import verify
from services.resolution.case import (
    SYSTEM,
    Acknowledge,
    Actor,
    ActorKind,
    Approve,
    Assign,
    CaseState,
    Claim,
    ClockFired,
    Close,
    Command,
    Context,
    CustomerReplied,
    Decline,
    Event,
    Kind,
    Member,
    Note,
    Outcome,
    ProposeRemedy,
    Refusal,
    Reopen,
    RequestInformation,
    RequestStaffResponse,
    Resolve,
    RoutedFacts,
    Sample,
    StaffRespond,
    Withdraw,
    decide,
    evolve,
    open_case,
    reads_held_roles,
    replay,
)
from services.resolution.clocks import desired_timers, timers_between
from services.resolution.policy import (
    Remedy,
    RemedyType,
    Role,
    Usage,
    covers,
    default_policy,
    within_caps,
)
from services.resolution.repository import CaseRead
from services.resolution.states import fold
from shared.events import Category, Channel, Money, Severity

POLICY = default_policy()
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
TEAM = "billing"
NAMED = ("s9", "s10")
STAFF = [
    Actor("a1", role=Role.AGENT, team=TEAM),
    Actor("a2", role=Role.AGENT, team=TEAM),
    Actor("sa1", role=Role.SENIOR_AGENT, team=TEAM),
    Actor("sv1", role=Role.SUPERVISOR, team=TEAM),
    Actor("m1", role=Role.MANAGER, team="management"),
    Actor("m2", role=Role.MANAGER, team="management"),
    Actor("d1", role=Role.DIRECTOR, team="board"),
    Actor("d2", role=Role.DIRECTOR, team="board"),
    Actor("x1", role=Role.SUPERVISOR, team="other"),
    Actor("gone", role=Role.MANAGER, team=TEAM, active=False),
    Actor("s9", role=Role.AGENT, team=TEAM),
    Actor("s10", role=Role.DIRECTOR, team="board"),
]
CUSTOMER = Actor("customer:web", kind=ActorKind.CUSTOMER)
AMOUNTS = ["5", "49", "51", "100", "150", "600", "3000", "12000"]


def remedies() -> st.SearchStrategy[Remedy]:
    money = st.builds(
        lambda kind, amount, currency: Remedy(kind, Money(amount=amount, currency=currency)),
        st.sampled_from(
            [
                RemedyType.REFUND,
                RemedyType.GOODWILL_CREDIT,
                RemedyType.REPLACEMENT,
                RemedyType.CANCEL_ORDER,
            ]
        ),
        st.sampled_from(AMOUNTS),
        st.sampled_from(["EUR", "EUR", "USD", "JPY"]),
    )
    other = st.sampled_from(
        [Remedy(RemedyType.DISCOUNT_NEXT_PURCHASE, percent=Decimal(p)) for p in ("5", "12", "30")]
        + [Remedy(RemedyType.RESERVE_AND_NOTIFY), Remedy(RemedyType.APOLOGY_ONLY)]
    )
    return st.one_of(money, money, other)


def staff_commands() -> st.SearchStrategy[Command]:
    return st.one_of(
        st.just(Acknowledge()),
        st.just(Assign("a2")),
        st.just(Claim()),
        st.just(RequestInformation("which order?")),
        st.just(RequestStaffResponse()),
        st.just(StaffRespond("my account")),
        st.builds(ProposeRemedy, remedies(), st.just("note"), st.sampled_from([None, "because"])),
        st.just(Withdraw()),
        st.just(Approve("ok")),
        st.just(Decline("no")),
        st.builds(Resolve, st.sampled_from(list(Outcome)), st.sampled_from(["", "explained"])),
        st.just(Reopen("again")),
        st.just(Close()),
        st.just(Note("n")),
    )


usages = st.builds(
    lambda c, s: Usage(customer_window={"EUR": Decimal(c)}, staff_today={"EUR": Decimal(s)}),
    st.sampled_from(["0", "50", "90", "250"]),
    st.sampled_from(["0", "280", "990"]),
)
samples = st.one_of(
    st.none(),
    st.builds(
        lambda n, m: Sample("EUR", n, Decimal(m)),
        st.integers(0, 40),
        st.sampled_from(["10", "40", "200"]),
    ),
)
held = st.sets(st.sampled_from(list(Role))).map(frozenset)
STAFF_COMMANDS = staff_commands()
JUNIORS = st.sampled_from(STAFF[:4])
PROPOSALS = st.builds(ProposeRemedy, remedies(), st.just("note"), st.sampled_from([None, "why"]))
STAFF_ACTORS = st.sampled_from(STAFF)
FIRING_LATENESS = st.sampled_from([timedelta(0), timedelta(minutes=-5), timedelta(days=1)])
ROLL = st.integers(0, 9)
INDEX = st.integers(0, 99)
DECISIONS = st.sampled_from([Approve("ok"), Approve("ok"), Decline("no"), Withdraw()])
RESOLUTIONS = st.builds(Resolve, st.sampled_from(list(Outcome)), st.sampled_from(["", "explained"]))
LENGTH = st.integers(1, 30)
ASSIGNEE_ROLE = st.sampled_from(list(Role))
CUSTOMER_COMMANDS = st.sampled_from([CustomerReplied("here"), Reopen("appeal", by_customer=True)])
STEPS = st.sampled_from([timedelta(0), timedelta(minutes=7), timedelta(hours=5), timedelta(days=2)])


def check_authorised(event: Event, context: Context) -> None:
    """No remedy is applied above the authority of whoever authorised it."""
    data = event.data()
    remedy = Remedy.from_json(data["remedy"])
    role = Role(data["authorized_role"])
    assert data["authorized_by"] == context.actor.id and role is context.actor.role
    assert covers(POLICY, role, remedy)
    assert within_caps(POLICY, role, remedy, context.usage) == []
    if data["policy_exception"]:
        assert data["authorized_by"] != data["proposer"]


def pick(data: st.DataObject, state: CaseState, now: datetime) -> tuple[Command, Context]:
    """A random command, its actor and context; clock firings come from the armed timers."""
    timers = desired_timers(state)
    roll = data.draw(ROLL)
    base = dict(
        policy=POLICY,
        usage=data.draw(usages),
        sample=data.draw(samples),
        held_roles=data.draw(held),
        assignee_role=data.draw(ASSIGNEE_ROLE),
    )
    if roll == 0 and timers:
        timer = timers[data.draw(INDEX) % len(timers)]
        late = data.draw(FIRING_LATENESS)
        command: Command = ClockFired(timer.kind, timer.run, timer.what)
        return command, Context(actor=SYSTEM, now=max(now, timer.due_at + late), **base)
    if roll == 1:
        command = data.draw(CUSTOMER_COMMANDS)
        return command, Context(actor=CUSTOMER, now=now, **base)
    actor = data.draw(STAFF_ACTORS)
    command = data.draw(STAFF_COMMANDS)
    if roll in (2, 3, 4) and state.pending is not None:
        command = data.draw(DECISIONS)  # bias towards deciding what waits
    elif roll in (2, 3) and state.decision is None:
        command = data.draw(RESOLUTIONS)
    elif roll == 5:
        actor, command = data.draw(JUNIORS), data.draw(PROPOSALS)  # most proposals go up
    target = Member("a2", Role.AGENT, TEAM) if isinstance(command, Assign) else None
    return command, Context(actor=actor, now=now, target=target, **base)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(), named=st.sets(st.sampled_from(NAMED)), severity=st.sampled_from(list(Severity))
)
def test_random_histories_keep_the_rules(
    data: st.DataObject, named: set[str], severity: Severity
) -> None:
    facts = RoutedFacts(
        "c1",
        TEAM,
        severity,
        Category.STAFF_CONDUCT,
        Channel.WEB,
        "cust1",
        T0,
        assignee="a1",
        staff_involved=tuple(sorted(named)),
    )
    events = open_case(facts, Context(SYSTEM, POLICY, T0))
    assert not isinstance(events, Refusal)
    state = replay(events)
    history = list(events)
    now = T0
    for _ in range(data.draw(LENGTH)):
        now += data.draw(STEPS)
        command, context = pick(data, state, now)
        now = context.now
        result = decide(state, command, context)
        if not reads_held_roles(state, command):  # the handler may leave them unread
            for held in (frozenset(), frozenset(Role)):
                assert decide(state, command, replace(context, held_roles=held)) == result
        if isinstance(result, Refusal):
            assert result.status in (403, 409, 422)
            continue
        before = state
        for event in result:
            if event.type is Kind.REMEDY_APPROVED:
                check_authorised(event, context)
            if event.type is Kind.RESOLVED:
                assert state.unheard() == []  # nobody decides before both sides are heard
            state = evolve(state, event)
        check_timer_changes(before, state)
        history.extend(result)
        assert state.version == len(history)
    assert replay(history) == state
    entries = [e.audit_entry() for e in history]
    assert verify(entries, {e.event_id: e.hash for e in history}) is None
    for event in history:
        stored = json.loads(json.dumps(event.data()))
        assert Event.from_data(str(event.type), stored, event.event_id) == event
    assert replay(Event.from_data(str(e.type), e.data(), e.event_id) for e in history) == state
    check_folds_from_known_states(history, state)


def check_timer_changes(before: CaseState, after: CaseState) -> None:
    """The timers a decision arms and cancels, worked out from the clocks it changed only,
    are those of every timer the case wants before and after it."""
    old, new = timers_between(before, after)
    every_old = {t.key: t for t in desired_timers(before)}
    every_new = {t.key: t for t in desired_timers(after)}
    assert old.keys() - new.keys() == every_old.keys() - every_new.keys()
    assert {k: t for k, t in new.items() if old.get(k) != t} == {
        k: t for k, t in every_new.items() if every_old.get(k) != t
    }


def check_folds_from_known_states(history: list[Event], state: CaseState) -> None:
    """A state known at any version, folded with the events read after it, is the state the
    whole history replays to; a state of another history at that version is never used."""
    decided = [(str(e.type), json.loads(json.dumps(e.data())), e.event_id) for e in history]
    row = {"complaint_id": state.complaint_id, "chain_head": state.chain_head}
    for known in range(1, len(history) + 1):
        base = replay(history[:known])
        read = CaseRead(row, decided[known:], known)  # type: ignore[arg-type]
        assert fold(read, base) == state
        assert fold(read, None) is None  # nothing known here: the case is read whole
        other = replace(base, chain_head="f" * 64)  # the same version of another history
        assert fold(read, other) is None
    assert fold(CaseRead(row, decided, 0), None) == state  # type: ignore[arg-type]
