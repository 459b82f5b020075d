"""The case decider, rule by rule, as table tests of `decide` (and `evolve` through `replay`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

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
    Status,
    Withdraw,
    decide,
    initial_state,
    open_case,
    reads_held_roles,
    replay,
)
from services.resolution.clocks import ClockKind, desired_timers
from services.resolution.policy import (
    MONEY_REMEDIES,
    Policy,
    Remedy,
    RemedyType,
    Role,
    Usage,
    default_policy,
    next_role,
)
from shared.events import Category, Channel, EventType, Money, Severity

POLICY = default_policy()
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
TEAM = "billing"
CURRENCIES = ("EUR", "USD", "GBP", "TRY")


def staff(staff_id: str, role: Role = Role.AGENT, team: str = TEAM, **kw: Any) -> Actor:
    return Actor(staff_id, role=role, team=team, **kw)


AGENT = staff("a1")
AGENT2 = staff("a2")
SENIOR = staff("sa1", Role.SENIOR_AGENT)
SUPERVISOR = staff("sv1", Role.SUPERVISOR)
MANAGER = staff("m1", Role.MANAGER, team="management")
DIRECTOR = staff("d1", Role.DIRECTOR, team="board")
CUSTOMER = Actor("customer:web", kind=ActorKind.CUSTOMER)
BY_ROLE = {
    Role.AGENT: AGENT,
    Role.SENIOR_AGENT: SENIOR,
    Role.SUPERVISOR: SUPERVISOR,
    Role.MANAGER: MANAGER,
    Role.DIRECTOR: DIRECTOR,
}


def ctx(actor: Actor, at: timedelta = timedelta(hours=1), **kw: Any) -> Context:
    kw.setdefault("policy", POLICY)
    return Context(actor=actor, now=T0 + at, **kw)


def opened(named: tuple[str, ...] = (), policy: Policy = POLICY, **kw: Any) -> CaseState:
    facts = RoutedFacts(
        "c1",
        TEAM,
        Severity.HIGH,
        Category.PRODUCT,
        Channel.WEB,
        "cust1",
        T0,
        assignee="a1",
        staff_involved=named,
        **kw,
    )
    return initial_state(facts, Context(SYSTEM, policy, T0))


def step(state: CaseState, command: Command, context: Context) -> tuple[CaseState, list[Event]]:
    events = decide(state, command, context)
    assert not isinstance(events, Refusal), events
    return replay(events, state), events


def refused(state: CaseState, command: Command, context: Context) -> Refusal:
    result = decide(state, command, context)
    assert isinstance(result, Refusal), [e.type for e in result]
    return result


def types(events: list[Event]) -> list[str]:
    return [str(e.type) for e in events]


def money(amount: str | Decimal, currency: str = "EUR") -> Money:
    return Money(amount=str(amount), currency=currency)


def refund(amount: str | Decimal, currency: str = "EUR") -> Remedy:
    return Remedy(RemedyType.REFUND, money(amount, currency))


def policy_with(**changes: Any) -> Policy:
    doc: dict[str, Any] = json.loads(POLICY.to_json())
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
    return Policy.model_validate(doc)


# --- opening ---------------------------------------------------------------------------------


def test_opening_yields_case_deadlines_and_staff_requests() -> None:
    facts = RoutedFacts(
        "c1",
        TEAM,
        Severity.CRITICAL,
        Category.STAFF_CONDUCT,
        Channel.PHONE,
        "cust1",
        T0,
        staff_involved=("s9", "s10", "s9"),
    )
    events = open_case(facts, Context(SYSTEM, POLICY, T0 + timedelta(minutes=1)))
    assert not isinstance(events, Refusal)
    assert types(events) == [
        "complaint.case_opened",
        "complaint.staff_response_requested",
        "complaint.staff_response_requested",
        "complaint.deadlines_set",
    ]
    deadlines = events[-1].data()
    assert deadlines["acknowledge_by"] == "2026-11-02T10:00:00Z"
    assert deadlines["resolve_by"] == "2026-11-03T09:00:00Z"
    assert events[1].data()["respond_by"] == "2026-11-04T09:01:00Z"
    state = replay(events)
    assert state.status is Status.AWAITING_STAFF_RESPONSE and state.version == 4
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert refused(state, Acknowledge(), ctx(SYSTEM)).code == "staff_only"


def test_event_data_is_json_ready_and_round_trips() -> None:
    state = opened(("s9",))
    _, events = step(state, ProposeRemedy(refund("80.00"), note="sorry"), ctx(AGENT))
    for event in events:
        data = json.loads(json.dumps(event.data()))
        assert data["complaint_id"] == "c1" and data["actor"] == "a1"
        assert data["at"] == "2026-11-02T10:00:00Z"
        assert Event.from_data(str(event.type), data, event.event_id) == event
    assert events[0].data()["remedy"] == {
        "type": "refund",
        "amount": {"amount": "80.00", "currency": "EUR"},
    }


def test_contract_event_names_are_kept() -> None:
    for name in (
        "ACKNOWLEDGED",
        "STAFF_RESPONSE_REQUESTED",
        "STAFF_RESPONDED",
        "REMEDY_PROPOSED",
        "APPROVAL_REQUESTED",
        "REMEDY_APPROVED",
        "REMEDY_DECLINED",
        "RESOLVED",
        "REOPENED",
        "CLOSED",
        "SLA_WARNING",
        "SLA_BREACHED",
        "ESCALATED",
    ):
        assert Kind[name].value == EventType[name].value


# --- the authority matrix --------------------------------------------------------------------

AUTHORITY_CASES = [
    (role, kind, currency, where)
    for role in Role
    for kind in sorted(MONEY_REMEDIES)
    for currency in CURRENCIES
    for where in ("below", "at", "above")
]


@pytest.mark.parametrize(("role", "kind", "currency", "where"), AUTHORITY_CASES)
def test_authority_matrix_money(role: Role, kind: RemedyType, currency: str, where: str) -> None:
    limit = getattr(POLICY.limits[role], kind.value)[currency]
    amount = limit + {"below": -1, "at": 0, "above": 1}[where]
    remedy = Remedy(kind, money(amount, currency))
    result = decide(opened(), ProposeRemedy(remedy, justification=None), ctx(BY_ROLE[role]))
    if where != "above":
        assert not isinstance(result, Refusal)
        assert types(result) == ["complaint.remedy_proposed", "complaint.remedy_approved"]
        assert result[1].data()["authorized_by"] == BY_ROLE[role].id
    elif role is Role.DIRECTOR:
        assert isinstance(result, Refusal) and result.status == 403
        assert result.code == "above_director" and result.required_role is None
    else:
        assert not isinstance(result, Refusal)
        assert types(result) == [
            "complaint.remedy_proposed",
            "complaint.approval_requested",
            "complaint.deadlines_set",
        ]
        assert result[1].data()["role"] == str(next_role(role))


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("where", ["below", "at", "above"])
def test_authority_matrix_discount(role: Role, where: str) -> None:
    limit = POLICY.limits[role].discount_next_purchase
    percent = limit + {"below": -1, "at": 0, "above": 1}[where]
    remedy = Remedy(RemedyType.DISCOUNT_NEXT_PURCHASE, percent=percent)
    result = decide(opened(), ProposeRemedy(remedy), ctx(BY_ROLE[role]))
    if where == "above" and role is Role.DIRECTOR:
        assert isinstance(result, Refusal) and result.status == 422  # above 100 %
    elif where == "above":
        assert not isinstance(result, Refusal)
        assert result[1].type is Kind.APPROVAL_REQUESTED
        assert result[1].data()["role"] == str(next_role(role))
    else:
        assert not isinstance(result, Refusal) and result[1].type is Kind.REMEDY_APPROVED


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("kind", [RemedyType.RESERVE_AND_NOTIFY, RemedyType.APOLOGY_ONLY])
def test_authority_matrix_yes_no_remedies(role: Role, kind: RemedyType) -> None:
    result = decide(opened(), ProposeRemedy(Remedy(kind)), ctx(BY_ROLE[role]))
    assert not isinstance(result, Refusal)
    allowed = kind is RemedyType.APOLOGY_ONLY or POLICY.limits[role].reserve_and_notify
    assert result[1].type is (Kind.REMEDY_APPROVED if allowed else Kind.APPROVAL_REQUESTED)


@pytest.mark.parametrize("role", list(Role))
def test_an_unlisted_currency_needs_a_director(role: Role) -> None:
    result = decide(opened(), ProposeRemedy(refund("5", "JPY")), ctx(BY_ROLE[role]))
    assert not isinstance(result, Refusal)
    if role is Role.DIRECTOR:
        assert result[1].type is Kind.REMEDY_APPROVED
    else:
        assert result[1].data()["role"] == "director"


# --- cumulative caps -------------------------------------------------------------------------

CAPPED = policy_with(limits__agent__refund__EUR="75", caps__per_customer__agent__EUR="100")


def test_two_refunds_against_the_customers_cap() -> None:
    first = decide(opened(policy=CAPPED), ProposeRemedy(refund("60")), ctx(AGENT, policy=CAPPED))
    assert not isinstance(first, Refusal) and first[1].type is Kind.REMEDY_APPROVED
    used = Usage(customer_window={"EUR": Decimal("60")}, staff_today={"EUR": Decimal("60")})
    other_case = opened(policy=CAPPED)
    second = decide(other_case, ProposeRemedy(refund("60")), ctx(AGENT, policy=CAPPED, usage=used))
    assert not isinstance(second, Refusal)
    assert types(second)[1] == "complaint.approval_requested"
    assert second[0].data()["blocked_by"] == ["customer_cap"]
    assert second[1].data()["role"] == "senior_agent"


def test_the_proposers_own_daily_cap() -> None:
    used = Usage(customer_window={}, staff_today={"EUR": Decimal("280")})
    result = decide(opened(), ProposeRemedy(refund("40")), ctx(AGENT, usage=used))
    assert not isinstance(result, Refusal)
    assert result[0].data()["blocked_by"] == ["daily_cap"]
    # another agent may approve: the limit is an agent's, the day was the proposer's
    assert result[1].data()["role"] == "agent"


@pytest.mark.parametrize(
    ("approver_today", "expected"), [("0", None), ("950", "cap_exceeded"), ("900", None)]
)
def test_an_approval_counts_against_the_approvers_daily_cap(
    approver_today: str, expected: str | None
) -> None:
    state, _ = step(opened(), ProposeRemedy(refund("100")), ctx(AGENT))
    used = Usage(customer_window={}, staff_today={"EUR": Decimal(approver_today)})
    result = decide(state, Approve("ok"), ctx(SENIOR, usage=used))
    if expected is None:
        assert not isinstance(result, Refusal) and result[0].type is Kind.REMEDY_APPROVED
    else:
        assert isinstance(result, Refusal) and result.code == expected and result.status == 403


# --- the ladder ------------------------------------------------------------------------------

NO_MIDDLE = frozenset({Role.AGENT, Role.MANAGER, Role.DIRECTOR})


def test_a_team_without_the_role_skips_to_the_next_held() -> None:
    result = decide(opened(), ProposeRemedy(refund("100")), ctx(AGENT, held_roles=NO_MIDDLE))
    assert not isinstance(result, Refusal)
    assert result[1].data()["required_role"] == "senior_agent"
    assert result[1].data()["role"] == "manager"


def test_an_approval_timeout_climbs_then_breaches_at_the_top() -> None:
    state, events = step(opened(), ProposeRemedy(refund("100")), ctx(AGENT, held_roles=NO_MIDDLE))
    approval = state.clock(ClockKind.APPROVAL)
    assert approval is not None and approval.deadline == T0 + timedelta(hours=5)
    fire = ClockFired(ClockKind.APPROVAL, approval.run, "approval_timeout")
    assert decide(state, fire, ctx(SYSTEM, at=timedelta(hours=4))) == []  # not yet due
    state, events = step(state, fire, ctx(SYSTEM, at=timedelta(hours=5), held_roles=NO_MIDDLE))
    assert types(events) == ["complaint.approval_requested", "complaint.deadlines_set"]
    assert events[0].data()["role"] == "director"
    assert events[0].data()["previous_role"] == "manager"
    assert state.pending is not None and state.pending.waiting_role is Role.DIRECTOR
    assert decide(state, fire, ctx(SYSTEM, at=timedelta(hours=6))) == []  # the old run
    top = ClockFired(ClockKind.APPROVAL, state.pending.approval_run, "approval_timeout")
    state, events = step(state, top, ctx(SYSTEM, at=timedelta(hours=9), held_roles=NO_MIDDLE))
    assert types(events) == ["complaint.sla_breached"]
    assert state.status is Status.AWAITING_APPROVAL
    assert not [t for t in desired_timers(state) if t.kind is ClockKind.APPROVAL]


def test_above_a_director_is_refused() -> None:
    result = refused(opened(), ProposeRemedy(refund("10001")), ctx(AGENT))
    assert (result.status, result.code, result.required_role) == (403, "above_director", None)


def test_nobody_active_to_approve_is_refused() -> None:
    result = refused(
        opened(), ProposeRemedy(refund("100")), ctx(AGENT, held_roles=frozenset({Role.AGENT}))
    )
    assert (result.status, result.code, result.required_role) == (
        403,
        "no_approver",
        "senior_agent",
    )


# --- approvals -------------------------------------------------------------------------------


def test_nobody_approves_their_own_proposal() -> None:
    state, _ = step(opened(), ProposeRemedy(refund("200")), ctx(SENIOR))
    assert refused(state, Approve(), ctx(SENIOR)).code == "self_approval"
    assert refused(state, Approve(), ctx(AGENT)).code == "above_limit"
    state, events = step(state, Approve("fine"), ctx(SUPERVISOR))
    assert events[0].data()["authorized_by"] == "sv1"
    assert events[0].data()["authorized_role"] == "supervisor"
    assert state.status is Status.REMEDY_PROPOSED and state.applied is not None
    assert state.clock(ClockKind.APPROVAL) is None


@pytest.mark.parametrize(
    ("actor", "command", "code"),
    [
        (AGENT, Withdraw(), "not_proposer"),
        (AGENT, Decline("no"), "below_required"),
        (SENIOR, Decline("no"), "self_decline"),
    ],
)
def test_withdraw_and_decline_rights(actor: Actor, command: Command, code: str) -> None:
    state, _ = step(opened(), ProposeRemedy(refund("200")), ctx(SENIOR))
    assert refused(state, command, ctx(actor)).code == code


def test_decline_returns_the_case_and_withdraw_clears_it() -> None:
    state, _ = step(opened(), ProposeRemedy(refund("200")), ctx(SENIOR))
    declined, events = step(state, Decline("too generous"), ctx(MANAGER))
    assert types(events) == ["complaint.remedy_declined", "complaint.deadlines_set"]
    assert events[0].data()["reason"] == "too generous"
    assert declined.pending is None and declined.status is Status.ROUTED
    withdrawn, events = step(state, Withdraw(), ctx(SENIOR))
    assert events[0].type is Kind.REMEDY_WITHDRAWN and withdrawn.pending is None
    assert refused(withdrawn, Approve(), ctx(MANAGER)).code == "no_pending"
    assert refused(state, ProposeRemedy(refund("1")), ctx(AGENT)).code == "pending_approval"


# --- who may act -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "code"),
    [
        (staff("x1", team="other"), "not_team"),
        (staff("x2", Role.SUPERVISOR, team="other"), "not_team"),
        (staff("a9", active=False), "inactive"),
        (CUSTOMER, "staff_only"),
        (staff("s9"), "named"),
        (staff("s9", Role.DIRECTOR), "named"),
    ],
)
def test_who_may_not_act(actor: Actor, code: str) -> None:
    state = opened(("s9",))
    for command in (
        Acknowledge(),
        ProposeRemedy(refund("10")),
        Note("x"),
        Resolve(Outcome.UPHELD, "m"),
    ):
        assert refused(state, command, ctx(actor)).code == code


@pytest.mark.parametrize("actor", [AGENT, MANAGER, DIRECTOR])
def test_team_members_managers_and_directors_act(actor: Actor) -> None:
    state, events = step(opened(), Acknowledge(), ctx(actor))
    assert types(events) == ["complaint.acknowledged", "complaint.deadlines_set"]
    assert state.status is Status.ACKNOWLEDGED and state.clock(ClockKind.ACKNOWLEDGE) is None
    assert refused(state, Acknowledge(), ctx(actor)).code == "already_acknowledged"


def test_named_staff_only_give_their_account() -> None:
    named = staff("s9", Role.SUPERVISOR, team="elsewhere")
    state, _ = step(opened(("s9",)), ProposeRemedy(refund("200")), ctx(SENIOR))
    assert refused(state, Approve(), ctx(named)).code == "named"
    assert refused(state, Decline("x"), ctx(named)).code == "named"
    state, events = step(state, StaffRespond("I was polite"), ctx(named))
    assert events[0].data()["staff_id"] == "s9"
    assert refused(state, StaffRespond("again"), ctx(named)).code == "already_answered"
    assert refused(state, StaffRespond("me too"), ctx(AGENT)).code == "not_named"


def test_assign_and_claim() -> None:
    state = opened(("s9",))
    to = Member("a2", Role.AGENT, TEAM)
    state, events = step(state, Assign("a2"), ctx(AGENT, target=to))
    assert events[0].data()["to_assignee"] == "a2" and state.assignee == "a2"
    assert refused(state, Assign("a2"), ctx(AGENT, target=to)).code == "already_assigned"
    bad = [
        Member("s9", Role.AGENT, TEAM),
        Member("x", Role.AGENT, "other"),
        Member("y", Role.AGENT, TEAM, active=False),
    ]
    for member in bad:
        result = refused(state, Assign(member.id), ctx(AGENT, target=member))
        assert result.status == 422 and result.missing == ["to"]
    state, events = step(state, Claim(), ctx(AGENT))
    assert events[0].data()["claimed"] is True and state.assignee == "a1"


# --- hearing both sides ----------------------------------------------------------------------


def test_resolve_waits_until_each_named_person_is_heard_or_their_window_closed() -> None:
    state = opened(("s9", "s10"))
    state, _ = step(state, ProposeRemedy(Remedy(RemedyType.APOLOGY_ONLY)), ctx(AGENT))
    result = refused(state, Resolve(Outcome.UPHELD, "sorry"), ctx(AGENT))
    assert (result.status, result.code, result.missing) == (409, "staff_not_heard", ["s9", "s10"])
    state, _ = step(state, StaffRespond("my side"), ctx(staff("s9")))
    assert refused(state, Resolve(Outcome.UPHELD, "sorry"), ctx(AGENT)).missing == ["s10"]
    window = state.clock(ClockKind.STAFF_RESPONSE)
    assert window is not None and window.subject == "s10"
    fire = ClockFired(ClockKind.STAFF_RESPONSE, window.run, "response_window_closed")
    state, events = step(state, fire, ctx(SYSTEM, at=timedelta(days=2, minutes=1)))
    assert types(events) == ["complaint.staff_response_window_closed", "complaint.deadlines_set"]
    state, events = step(state, Resolve(Outcome.UPHELD, "sorry"), ctx(AGENT))
    assert events[0].type is Kind.RESOLVED and state.status is Status.RESOLVED
    assert state.clocks == ()


def test_request_staff_response_asks_again_those_whose_window_closed() -> None:
    state = opened(("s9",))
    assert refused(state, RequestStaffResponse(), ctx(AGENT)).code == "nothing_to_request"
    fire = ClockFired(ClockKind.STAFF_RESPONSE, 1, "response_window_closed")
    state, _ = step(state, fire, ctx(SYSTEM, at=timedelta(days=3)))
    state, events = step(state, RequestStaffResponse(), ctx(AGENT, at=timedelta(days=3)))
    assert types(events) == ["complaint.staff_response_requested", "complaint.deadlines_set"]
    assert events[0].data()["run"] == 2 and state.unheard() == ["s9"]


@pytest.mark.parametrize(
    ("named", "confirmer", "expected"),
    [
        (("s9",), AGENT2, "confirmer_role"),
        (("s9",), SENIOR, None),
        (("s9",), MANAGER, None),
    ],
)
def test_not_upheld_on_named_staff_needs_a_higher_role_to_confirm(
    named: tuple[str, ...], confirmer: Actor, expected: str | None
) -> None:
    state, _ = step(opened(named), StaffRespond("my side"), ctx(staff("s9")))
    assert refused(state, Resolve(Outcome.NOT_UPHELD, " "), ctx(AGENT)).missing == ["message"]
    state, events = step(state, Resolve(Outcome.NOT_UPHELD, "we looked closely"), ctx(AGENT))
    assert types(events) == [
        "complaint.resolution_proposed",
        "complaint.approval_requested",
        "complaint.deadlines_set",
    ]
    assert state.status is Status.AWAITING_APPROVAL
    assert refused(state, Approve(), ctx(AGENT)).code == "self_approval"
    result = decide(state, Approve("agreed"), ctx(confirmer))
    if expected:
        assert isinstance(result, Refusal) and result.code == expected
        assert result.required_role == "senior_agent"
    else:
        assert not isinstance(result, Refusal)
        data = result[0].data()
        assert data["outcome"] == "not_upheld" and data["confirmed_by"] == confirmer.id
        assert data["decided_by"] == "a1"


def test_a_decision_reads_the_roles_held_only_where_it_says_it_does() -> None:
    """`reads_held_roles` lets the handler skip reading the team's chain: a `not_upheld` on a
    case naming staff needs it (who confirms), other outcomes and cases naming nobody do not."""
    named, _ = step(opened(("s9",)), StaffRespond("my side"), ctx(staff("s9")))
    not_upheld = Resolve(Outcome.NOT_UPHELD, "we looked closely")
    assert reads_held_roles(named, not_upheld)
    nobody = decide(named, not_upheld, ctx(AGENT, held_roles=frozenset()))
    assert isinstance(nobody, Refusal) and nobody.code == "no_approver"
    assert not isinstance(decide(named, not_upheld, ctx(AGENT)), Refusal)
    assert not reads_held_roles(opened(), not_upheld)
    assert not reads_held_roles(named, Resolve(Outcome.UPHELD, "sorry"))
    assert not reads_held_roles(named, Acknowledge())
    assert reads_held_roles(named, ProposeRemedy(refund("10")))


def test_not_upheld_without_named_staff_resolves_at_once() -> None:
    state, events = step(opened(), Resolve(Outcome.NOT_UPHELD, "no fault found"), ctx(AGENT))
    assert events[0].type is Kind.RESOLVED and state.decision is not None


@pytest.mark.parametrize(
    ("outcome", "remedy", "code"),
    [
        (Outcome.UPHELD, None, "remedy_required"),
        (Outcome.PARTIALLY_UPHELD, None, "remedy_required"),
        (Outcome.NOT_UPHELD, refund("10"), "remedy_applied"),
        (Outcome.UPHELD, Remedy(RemedyType.APOLOGY_ONLY), None),
        (Outcome.PARTIALLY_UPHELD, refund("10"), None),
    ],
)
def test_outcomes_and_remedies(outcome: Outcome, remedy: Remedy | None, code: str | None) -> None:
    state = opened()
    if remedy is not None:
        state, _ = step(state, ProposeRemedy(remedy), ctx(AGENT))
    result = decide(state, Resolve(outcome, "message"), ctx(AGENT))
    if code is None:
        assert not isinstance(result, Refusal) and result[0].type is Kind.RESOLVED
    else:
        assert isinstance(result, Refusal) and result.code == code and result.status == 409


# --- consistency -----------------------------------------------------------------------------

SAMPLE = Sample("EUR", 25, Decimal("40"))  # outliers below 10 or above 120


@pytest.mark.parametrize(
    ("actor", "amount", "sample", "expected"),
    [
        (AGENT, "5", SAMPLE, "exception"),  # far below
        (SUPERVISOR, "130", SAMPLE, "exception"),  # far above, within his limit
        (AGENT, "40", SAMPLE, "applied"),
        (AGENT, "5", Sample("EUR", 19, Decimal("40")), "applied"),  # sample too small
        (AGENT, "5", Sample("USD", 50, Decimal("40")), "applied"),  # another currency
        (AGENT, "5", None, "applied"),
    ],
)
def test_consistency_outliers(
    actor: Actor, amount: str, sample: Sample | None, expected: str
) -> None:
    command = ProposeRemedy(refund(amount))
    if expected == "exception":
        missing = refused(opened(), command, ctx(actor, sample=sample))
        assert (missing.status, missing.missing) == (422, ["justification"])
        command = ProposeRemedy(refund(amount), justification="long-standing customer")
    result = decide(opened(), command, ctx(actor, sample=sample))
    assert not isinstance(result, Refusal)
    if expected == "applied":
        assert result[1].type is Kind.REMEDY_APPROVED
        return
    assert result[0].data()["policy_exception"] is True
    assert result[1].data()["role"] == str(actor.role)  # a second pair of eyes, no lower
    state = replay(result, opened())
    assert refused(state, Approve(), ctx(actor)).code == "self_approval"
    if actor.role is Role.SUPERVISOR:
        assert refused(state, Approve(), ctx(SENIOR)).code in (
            "above_limit",
            "exception_needs_peer",
        )
    peer = staff("peer", actor.role or Role.AGENT)
    state, events = step(state, Approve(), ctx(peer))
    assert events[0].data()["policy_exception"] is True
    assert state.applied is not None and state.applied.policy_exception


# --- versions --------------------------------------------------------------------------------


def test_a_stale_version_is_refused_with_the_current_one() -> None:
    state = opened()
    stale = refused(state, Note("x"), ctx(AGENT, expected_version=state.version - 1))
    assert (stale.status, stale.code, stale.current_version) == (
        409,
        "stale_version",
        state.version,
    )
    _, events = step(state, Note("x"), ctx(AGENT, expected_version=state.version))
    assert events[0].seq == state.version + 1


# --- clocks through the case -----------------------------------------------------------------


def test_waiting_on_the_customer_pauses_the_resolve_clock() -> None:
    state = opened()
    resolve_by = state.clock(ClockKind.RESOLVE).deadline  # type: ignore[union-attr]
    assert resolve_by == T0 + timedelta(days=3)
    assert refused(state, CustomerReplied("hi"), ctx(CUSTOMER)).code == "not_awaiting_customer"
    state, events = step(state, RequestInformation("which order?"), ctx(AGENT, timedelta(hours=2)))
    assert state.status is Status.AWAITING_CUSTOMER
    assert events[-1].data()["resolve_by"] is None
    assert not [t for t in desired_timers(state) if t.kind is ClockKind.RESOLVE]
    assert refused(state, CustomerReplied("x"), ctx(AGENT)).code == "customer_only"
    state, events = step(state, CustomerReplied("order 42"), ctx(CUSTOMER, timedelta(hours=12)))
    assert events[-1].data()["resolve_by"] == "2026-11-05T19:00:00Z"  # 10 h later
    assert state.status is Status.ROUTED
    keys = {t.key for t in desired_timers(state)}
    assert "c1:resolve:1:breach" in keys


def test_a_warning_fires_once_and_a_breach_escalates() -> None:
    state = opened()
    warn = ClockFired(ClockKind.ACKNOWLEDGE, 1, "warning:0.75")
    assert decide(state, warn, ctx(SYSTEM, at=timedelta(hours=2))) == []
    state, events = step(state, warn, ctx(SYSTEM, at=timedelta(hours=3)))
    assert types(events) == ["complaint.sla_warning"]
    assert decide(state, warn, ctx(SYSTEM, at=timedelta(hours=3))) == []
    assert "c1:acknowledge:1:warning:0.75" not in {t.key for t in desired_timers(state)}
    breach = ClockFired(ClockKind.ACKNOWLEDGE, 1, "breach")
    assert refused(state, breach, ctx(AGENT)).code == "system_only"
    result = decide(
        state,
        breach,
        ctx(SYSTEM, at=timedelta(hours=4), assignee_role=Role.AGENT, held_roles=NO_MIDDLE),
    )
    assert not isinstance(result, Refusal)
    # the 90 % warning whose timer has not fired yet is said first, once
    assert types(result) == [
        "complaint.sla_warning",
        "complaint.sla_breached",
        "complaint.escalated",
    ]
    assert result[0].data()["what"] == "warning:0.9"
    assert result[2].data()["to_role"] == "manager"
    state = replay(result, state)
    assert state.escalated_to is Role.MANAGER
    late = ClockFired(ClockKind.ACKNOWLEDGE, 1, "warning:0.9")
    assert decide(state, late, ctx(SYSTEM, at=timedelta(hours=5))) == []
    res = ClockFired(ClockKind.RESOLVE, 1, "breach")
    state, events = step(state, res, ctx(SYSTEM, at=timedelta(days=3)))
    assert types(events)[:2] == ["complaint.sla_warning"] * 2  # both resolve warnings missed
    assert events[-1].data()["to_role"] == "director"  # above the last escalation


def test_reopen_starts_a_new_run_for_a_role_above_the_decider() -> None:
    state, _ = step(opened(), ProposeRemedy(refund("20")), ctx(AGENT))
    assert refused(state, Reopen("again"), ctx(AGENT)).code == "not_resolved"
    state, _ = step(state, Resolve(Outcome.UPHELD, "refunded"), ctx(AGENT, timedelta(hours=2)))
    assert (
        refused(state, Reopen("late", by_customer=True), ctx(CUSTOMER, timedelta(days=31))).code
        == "reopen_window_closed"
    )
    assert refused(state, Reopen("x", by_customer=True), ctx(AGENT)).code == "customer_only"
    state, _ = step(state, Close(), ctx(AGENT, timedelta(hours=3)))
    assert state.status is Status.CLOSED
    state, events = step(
        state, Reopen("still broken", by_customer=True), ctx(CUSTOMER, timedelta(days=5))
    )
    assert types(events) == ["complaint.reopened", "complaint.deadlines_set"]
    assert events[0].data()["to_role"] == "senior_agent"
    assert state.status is Status.REOPENED
    assert {t.key for t in desired_timers(state)} == {
        "c1:resolve:2:warning:0.75",
        "c1:resolve:2:warning:0.9",
        "c1:resolve:2:breach",
    }
    assert refused(state, Resolve(Outcome.UPHELD, "x"), ctx(AGENT)).code == (
        "reopened_to_higher_role"
    )
    state, events = step(state, Resolve(Outcome.UPHELD, "as before"), ctx(SENIOR))
    assert state.status is Status.RESOLVED


def test_close_only_after_resolved_and_notes_any_time() -> None:
    state = opened()
    assert refused(state, Close(), ctx(AGENT)).code == "not_resolved"
    assert refused(state, Note(" "), ctx(AGENT)).status == 422
    state, events = step(state, Note("called the shop"), ctx(AGENT))
    assert events[0].data()["text"] == "called the shop"


def test_commands_before_opening_are_refused() -> None:
    assert refused(CaseState(), Note("x"), ctx(AGENT)).code == "not_open"


def test_a_timer_payload_becomes_the_clock_fired_command() -> None:
    state = opened()
    timer = next(t for t in desired_timers(state) if t.what == "breach")
    command = ClockFired.from_payload(timer.payload)
    assert command == ClockFired(ClockKind.ACKNOWLEDGE, 1, "breach")
    state, _ = step(state, command, ctx(SYSTEM, at=timedelta(hours=5)))
    late_warning = ClockFired(ClockKind.ACKNOWLEDGE, 1, "warning:0.9")
    assert decide(state, late_warning, ctx(SYSTEM, at=timedelta(hours=5))) == []
    assert not [
        t for t in desired_timers(state) if t.kind is ClockKind.ACKNOWLEDGE and t.what == "breach"
    ]


def test_deadlines_follow_the_teams_business_hours_and_channel_overrides() -> None:
    office = {
        "time_zone": "Europe/Amsterdam",
        "holidays": ["2026-11-10"],
        "hours": [
            {"day": d, "start": "09:00", "end": "17:00"}
            for d in ("mon", "tue", "wed", "thu", "fri")
        ],
    }
    policy = policy_with(
        business_hours={TEAM: office},
        clocks__channel_overrides={
            "web": {"high": {"acknowledge_within": 60, "resolve_within": "PT2M"}}
        },
    )
    friday_late = datetime(2026, 11, 6, 15, 30, tzinfo=UTC)  # 16:30 in Amsterdam
    facts = RoutedFacts(
        "c1", TEAM, Severity.HIGH, Category.PRODUCT, Channel.WEB, "cust1", friday_late
    )
    events = open_case(facts, Context(SYSTEM, policy, friday_late))
    assert not isinstance(events, Refusal)
    assert events[-1].data()["acknowledge_by"] == "2026-11-06T15:31:00Z"
    phone = RoutedFacts(
        "c2", TEAM, Severity.HIGH, Category.PRODUCT, Channel.PHONE, "cust1", friday_late
    )
    events = open_case(phone, Context(SYSTEM, policy, friday_late))
    assert not isinstance(events, Refusal)
    # 4 working hours: 30 minutes on Friday, then Monday 09:00-12:30 local (CET)
    assert events[-1].data()["acknowledge_by"] == "2026-11-09T11:30:00Z"
    # targets are working time: P3D is 72 working hours, nine 8-hour days, Tue 10 a holiday
    assert events[-1].data()["resolve_by"] == "2026-11-20T15:30:00Z"
