"""Resolution takes a batch of events at once (services/resolution/handlers.py): what each
event does must be what it did alone, in the batch's order, once. On the real PostgreSQL, with
records as the consumer hands them over."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from complaints.samples import submission
from services.resolution import action_batches, actions, api, cases, handlers, repository
from services.resolution.policy import Policy, default_policy
from services.resolution.states import States
from shared import db, directory, migrate, topics
from shared.events import (
    Category,
    Channel,
    Deadlines,
    EventType,
    ReassignedData,
    ReceivedData,
    Role,
    RoutedData,
    Severity,
    SubmittedData,
    new_event,
)
from shared.kafka import Record
from tests.conftest import shared_schema

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.fixture
async def pool(database: str) -> AsyncIterator[db.Pool]:
    migrations = migrate.for_service("services.resolution.migrations")
    async with shared_schema(database, "resbatch", migrations) as (_name, pool):
        yield pool


async def _policy(_conn: db.Conn, _version: int | None = None) -> Policy:
    return default_policy()


def _record(type_: str, data: Any, *, offset: int, header: bool = True) -> Record:
    event = new_event(type=type_, source="test", data=data, subject=data.complaint_id)
    headers = (("event-type", type_.encode()),) if header else ()
    key = data.complaint_id.encode()
    return Record(topics.EVENTS, 0, offset, key, event.to_bytes(), headers)


def _received(complaint_id: str, customer: str) -> ReceivedData:
    data = SubmittedData.model_validate(submission("phone"))
    data.customer.id = customer
    return ReceivedData(complaint_id=complaint_id, received_at=NOW, **data.model_dump())


def _routed(complaint_id: str, team: str) -> RoutedData:
    return RoutedData(
        complaint_id=complaint_id,
        routed_at=NOW,
        received_at=NOW,
        channel=Channel.PHONE,
        external_id=f"ext-{complaint_id}",
        category=Category.SERVICE,
        category_reason="test",
        severity=Severity.MEDIUM,
        severity_reasons=[],
        team=team,
        assignee="agent-1",
        language="nl",
        deadlines=Deadlines(
            acknowledge_by=NOW + timedelta(hours=4), resolve_by=NOW + timedelta(days=2)
        ),
    )


async def _apply(pool: db.Pool, records: list[Record]) -> None:
    apply = handlers.batch_handler(_policy, States())
    async with pool.acquire() as conn, conn.transaction():
        await apply(conn, [(handlers.parse_record(r), {}) for r in records], NOW)


async def _counts(pool: db.Pool) -> dict[str, int]:
    async with pool.acquire() as conn:
        return {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("case_events", "outbox", "timeline", "timers", "inbox")
        }


async def test_a_batch_does_what_each_event_did_alone_in_order_and_once(pool: db.Pool) -> None:
    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    opened = new_event(type="complaint.case_opened", source="resolution", data={}, subject=a)
    records = [
        # a routing before its receipt in one batch: the case still gets the customer
        _record(EventType.ROUTED, _routed(a, "customer-care"), offset=1),
        _record(EventType.RECEIVED, _received(a, "cust-a"), offset=2),
        # routed twice: the first routing opens the case, the second changes nothing
        _record(EventType.ROUTED, _routed(a, "billing"), offset=3),
        _record(EventType.RECEIVED, _received(b, "cust-b"), offset=4),
        _record(EventType.ROUTED, _routed(b, "customer-care"), offset=5),
        # decided alone, after the case it moves was opened by the records before it
        _record(
            EventType.REASSIGNED,
            ReassignedData(
                complaint_id=b,
                team="customer-care",
                from_assignee="agent-1",
                to_assignee="agent-2",
                reason="claimed",
                at=NOW,
            ),
            offset=6,
        ),
        # resolution's own decision, arriving without its type header: passed over once read
        Record(topics.EVENTS, 0, 7, a.encode(), opened.to_bytes(), ()),
    ]
    await _apply(pool, records)
    async with pool.acquire() as conn:
        cases = {
            r["complaint_id"]: r
            for r in await conn.fetch(
                "SELECT complaint_id, team, assignee, customer_id, version FROM cases"
            )
        }
        own_noted = await conn.fetchval("SELECT count(*) FROM inbox WHERE event_id = $1", opened.id)
    assert cases[a]["team"] == "customer-care" and cases[a]["customer_id"] == "cust-a"
    assert cases[a]["version"] > 0
    assert cases[b]["assignee"] == "agent-2" and cases[b]["customer_id"] == "cust-b"
    assert own_noted == 0
    before = await _counts(pool)
    await _apply(pool, records)  # redelivered: nothing changes
    assert await _counts(pool) == before


# --- staff actions kept together (services/resolution/action_batches.py) ----------------------


def _member(staff_id: str, role: Role) -> directory.Member:
    return directory.Member(
        staff_id=staff_id,
        name=staff_id,
        team="customer-care",
        role=role,
        languages=["nl"],
        available=True,
        active=True,
        version=1,
        at=NOW,
    )


AGENT = _member("agent-1", Role.AGENT)


async def _staff_actions(pool: db.Pool, customers: dict[str, str]) -> action_batches.StaffActions:
    """Cases opened for `customers` (complaint id → customer id), routed to AGENT, with a
    senior agent above AGENT in the team; the batches that act on them."""
    records = []
    for n, (complaint_id, customer) in enumerate(customers.items()):
        records.append(_record(EventType.RECEIVED, _received(complaint_id, customer), offset=2 * n))
        routed = _routed(complaint_id, "customer-care")
        records.append(_record(EventType.ROUTED, routed, offset=2 * n + 1))
    await _apply(pool, records)
    async with pool.acquire() as conn:
        for member in (AGENT, _member("senior-1", Role.SENIOR_AGENT)):
            await directory.learn_member(conn, member)
    return _batches(pool)


async def _one_customers(
    pool: db.Pool, count: int, customer: str
) -> tuple[list[str], action_batches.StaffActions]:
    """`count` cases of one customer (`_staff_actions`)."""
    ids = [f"{customer}-{n}-{uuid.uuid4().hex[:6]}" for n in range(count)]
    return ids, await _staff_actions(pool, dict.fromkeys(ids, customer))


def _batches(pool: db.Pool, **options: Any) -> action_batches.StaffActions:
    """Staff-action batches as a replica of its own keeps them."""
    return action_batches.StaffActions(
        lambda: pool,
        policies=_policy,
        known=States(),
        view_of=api.staff_view,
        refused=api.refusal_document,
        **options,
    )


@contextlib.asynccontextmanager
async def _held(pool: db.Pool, lock: str, *args: Any) -> AsyncIterator[None]:
    """Another transaction holding what the statement `lock` locks, until the block ends."""
    async with pool.acquire() as holder:
        await holder.execute("BEGIN")
        try:
            await holder.execute(lock, *args)
            yield
        finally:
            await holder.execute("ROLLBACK")


def _request(complaint_id: str, body: dict[str, Any], key: str | None = None) -> Any:
    action = actions.ACTION.validate_python(body)
    return action_batches.Request(complaint_id, action, AGENT, f"/v1/{complaint_id}", key)


async def _applied_to(pool: db.Pool, customer: str) -> Decimal:
    async with pool.acquire() as conn:
        total: Decimal = await conn.fetchval(
            "SELECT sum(amount) FROM remedies WHERE customer_id = $1", customer
        )
    return total


async def _logged(pool: db.Pool, complaint_id: str) -> list[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type FROM case_events WHERE complaint_id = $1 ORDER BY seq", complaint_id
        )
    return [r["type"] for r in rows]


async def test_actions_sent_together_are_kept_in_one_batch_and_answered_as_if_alone(
    pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = (f"{x}-{uuid.uuid4().hex[:6]}" for x in "abc")
    batches = await _staff_actions(pool, {a: "cust-a", b: "cust-b", c: "cust-c"})
    locked: list[list[str]] = []
    try_load_many = cases.try_load_many

    async def spied(conn: db.Conn, ids: Any, *, known: States) -> Any:
        locked.append(sorted(ids))
        return await try_load_many(conn, ids, known=known)

    monkeypatch.setattr(cases, "try_load_many", spied)
    ack = {"action": "acknowledge"}
    answers = await asyncio.gather(
        batches.act(_request(a, ack)),
        batches.act(_request(b, {**ack, "version": 0})),  # stale: opening made it 1 or more
        batches.act(_request("nobody", ack)),
        batches.act(_request(c, ack, key="k1")),
        batches.act(_request(c, ack, key="k1")),  # the same key again: its first answer
        batches.act(_request(a, {"action": "note", "text": "called back"})),  # after a's ack
    )
    try:
        (s_a, v_a), (s_b, p_b), (s_x, p_x), (s_c1, v_c1), (s_c2, v_c2), (s_n, v_n) = answers
        # one transaction for the first action on each case, one for the second on a and c
        assert locked == [sorted([a, b, "nobody", c]), sorted([c, a])]
        assert s_a == 200 and v_a["status"] == "acknowledged"
        assert s_b == 409 and p_b["current_version"] >= 1 and p_b["instance"] == f"/v1/{b}"
        assert s_x == 404 and p_x["detail"] == "no complaint nobody"
        assert (s_c1, s_c2) == (200, 200) and v_c1 == v_c2
        assert s_n == 200 and v_n["version"] == v_a["version"] + 1
        assert (await _logged(pool, c)).count("complaint.acknowledged") == 1
        assert (await _logged(pool, b)).count("complaint.acknowledged") == 0
        of_a = await _logged(pool, a)
        assert of_a.index("complaint.acknowledged") < of_a.index("complaint.note_added")
    finally:
        await batches.close()


async def test_money_one_decision_of_a_batch_applied_counts_against_the_next_ones_caps(
    pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one customer: the agent may give 100 EUR a month in all, 50 EUR at once
    ids, batches = await _one_customers(pool, 3, "cust-capped")
    samples: list[Any] = []
    money_applied = repository.money_applied

    async def spied(conn: db.Conn, **kwargs: Any) -> Any:
        samples.append(kwargs["similar"])
        return await money_applied(conn, **kwargs)

    monkeypatch.setattr(repository, "money_applied", spied)
    try:
        await asyncio.gather(*(batches.act(_request(i, {"action": "acknowledge"})) for i in ids))
        refund = {"type": "refund", "amount": {"amount": "40.00", "currency": "EUR"}}
        answers = await asyncio.gather(
            *(batches.act(_request(i, {"action": "propose_remedy", "remedy": refund})) for i in ids)
        )
        assert [status for status, _ in answers] == [200, 200, 200]
        # three similar proposals in one batch: their consistency sample is read once
        assert len(samples) == 3 and sum(s is not None for s in samples) == 1
        logged = [await _logged(pool, i) for i in ids]
        # 40 + 40 within the cap; a third 40 would make 120: it waits for a senior agent
        assert ["complaint.remedy_approved" in log for log in logged] == [True, True, False]
        assert "complaint.approval_requested" in logged[2]
        assert await _applied_to(pool, "cust-capped") == Decimal("80.00")
    finally:
        await batches.close()


async def test_an_action_that_cannot_be_kept_fails_alone(
    pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = f"g-{uuid.uuid4().hex[:6]}", f"x-{uuid.uuid4().hex[:6]}"
    batches = await _staff_actions(pool, {good: "cust-g", bad: "cust-x"})
    decision = cases.staff_decision

    async def failing(conn: db.Conn, state: Any, *args: Any, **kwargs: Any) -> Any:
        if state.complaint_id == bad:
            raise RuntimeError("unforeseen")
        return await decision(conn, state, *args, **kwargs)

    monkeypatch.setattr(cases, "staff_decision", failing)
    ack = {"action": "acknowledge"}
    try:
        outcomes = await asyncio.gather(
            batches.act(_request(good, ack)),
            batches.act(_request(bad, ack)),
            return_exceptions=True,
        )
        assert outcomes[0][0] == 200  # type: ignore[index]
        assert isinstance(outcomes[1], RuntimeError)
        assert (await _logged(pool, good)).count("complaint.acknowledged") == 1
        assert (await _logged(pool, bad)).count("complaint.acknowledged") == 0
    finally:
        await batches.close()


async def test_an_action_whose_case_is_held_waits_alone_and_holds_up_no_other(
    pool: db.Pool,
) -> None:
    busy, free = f"busy-{uuid.uuid4().hex[:6]}", f"free-{uuid.uuid4().hex[:6]}"
    batches = await _staff_actions(pool, {busy: "cust-b", free: "cust-f"})
    ack = {"action": "acknowledge"}
    # another transaction decides on `busy` (a consumer batch, another replica)
    try:
        async with _held(pool, "SELECT 1 FROM cases WHERE complaint_id = $1 FOR UPDATE", busy):
            waiting = asyncio.ensure_future(batches.act(_request(busy, ack)))
            status, _ = await asyncio.wait_for(batches.act(_request(free, ack)), timeout=5)
            assert status == 200 and not waiting.done()
        status, view = await asyncio.wait_for(waiting, timeout=5)
        assert status == 200 and view["status"] == "acknowledged"
    finally:
        await batches.close()


async def test_caps_hold_across_batches_of_two_replicas_deciding_at_once(
    pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, replica = await _one_customers(pool, 4, "cust-shared")
    other = _batches(pool)  # a second replica
    money_applied = repository.money_applied

    async def slow(conn: db.Conn, **kwargs: Any) -> Any:
        applied = await money_applied(conn, **kwargs)
        await asyncio.sleep(0.1)  # both batches have read the totals before either commits
        return applied

    try:
        await asyncio.gather(*(replica.act(_request(i, {"action": "acknowledge"})) for i in ids))
        monkeypatch.setattr(repository, "money_applied", slow)
        refund = {"type": "refund", "amount": {"amount": "40.00", "currency": "EUR"}}
        propose = {"action": "propose_remedy", "remedy": refund}
        await asyncio.gather(
            *(replica.act(_request(i, propose)) for i in ids[:2]),
            *(other.act(_request(i, propose)) for i in ids[2:]),
        )
        # 100 EUR a month for this customer: two of the four refunds, never three or four
        assert await _applied_to(pool, "cust-shared") == Decimal("80.00")
    finally:
        await replica.close()
        await other.close()


async def test_a_batch_that_fails_after_deciding_leaves_no_trace_and_each_action_applies_once(
    pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, batches = await _one_customers(pool, 2, "cust-f")
    load_views = repository.load_views
    failures = []

    async def failing_once(conn: db.Conn, complaint_ids: Any) -> Any:
        if not failures:  # after the batch wrote its decisions (and kept their states)
            failures.append(sorted(complaint_ids))
            raise RuntimeError("unforeseen")
        return await load_views(conn, complaint_ids)

    monkeypatch.setattr(repository, "load_views", failing_once)
    try:
        answers = await asyncio.gather(
            *(batches.act(_request(i, {"action": "acknowledge"})) for i in ids)
        )
        assert failures == [sorted(ids)]
        assert [status for status, _ in answers] == [200, 200]
        for complaint_id, (_, view) in zip(ids, answers, strict=True):
            logged = await _logged(pool, complaint_id)
            assert logged.count("complaint.acknowledged") == 1
            assert view["version"] == len(logged)
        # the states the failed batch kept are not taken for the cases' next decisions
        status, view = await batches.act(_request(ids[0], {"action": "note", "text": "x"}))
        assert status == 200 and view["version"] == len(await _logged(pool, ids[0]))
    finally:
        await batches.close()


async def test_a_replicas_actions_on_one_case_apply_in_the_order_they_came(
    pool: db.Pool,
) -> None:
    case = f"t-{uuid.uuid4().hex[:6]}"
    batches = await _staff_actions(pool, {case: "cust-t"})
    texts = [f"call {n}" for n in range(6)]
    try:
        answers = await asyncio.gather(
            *(batches.act(_request(case, {"action": "note", "text": t})) for t in texts)
        )
        assert [status for status, _ in answers] == [200] * 6
        async with pool.acquire() as conn:
            noted = await conn.fetch(
                "SELECT data->>'text' AS text FROM case_events"
                " WHERE complaint_id = $1 AND type = 'complaint.note_added' ORDER BY seq",
                case,
            )
        assert [r["text"] for r in noted] == texts
    finally:
        await batches.close()


async def test_two_actions_on_one_case_meeting_in_a_batch_are_each_kept_once(
    pool: db.Pool,
) -> None:
    case = f"d-{uuid.uuid4().hex[:6]}"
    batches = await _staff_actions(pool, {case: "cust-d"})
    try:
        # past the turns `act` takes: the log's key on the case's version must catch it
        outcomes = await asyncio.gather(
            batches._batcher.submit(_request(case, {"action": "acknowledge"})),
            batches._batcher.submit(_request(case, {"action": "note", "text": "x"})),
        )
        assert [o[0] for o in outcomes] == [200, 200]  # type: ignore[index]
        logged = await _logged(pool, case)
        assert logged.count("complaint.acknowledged") == logged.count("complaint.note_added") == 1
        status, view = await batches.act(_request(case, {"action": "note", "text": "y"}))
        assert status == 200 and view["version"] == len(await _logged(pool, case))
    finally:
        await batches.close()


async def test_waits_alone_are_bounded_so_busy_cases_never_take_every_connection(
    pool: db.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = [f"w{n}-{uuid.uuid4().hex[:6]}" for n in range(7)]
    free = f"free-{uuid.uuid4().hex[:6]}"
    await _staff_actions(pool, {**dict.fromkeys(busy, "cust-w"), free: "cust-w"})
    # the pool has 8: one holds the cases, at most 2 wait for them, the rest stay free
    batches = _batches(pool, alone_limit=2)
    monkeypatch.setattr(action_batches, "LOCK_WAIT_S", 3)
    ack = {"action": "acknowledge"}
    try:
        async with _held(pool, "SELECT 1 FROM cases WHERE complaint_id = ANY($1) FOR UPDATE", busy):
            waiting = [asyncio.ensure_future(batches.act(_request(b, ack))) for b in busy]
            await asyncio.sleep(0.3)
            status, _ = await asyncio.wait_for(batches.act(_request(free, ack)), timeout=2)
            assert status == 200
            # held past LOCK_WAIT_S: each action is answered (503: the database is busy)
            outcomes = await asyncio.wait_for(
                asyncio.gather(*waiting, return_exceptions=True), timeout=30
            )
            assert all(isinstance(o, asyncpg.exceptions.LockNotAvailableError) for o in outcomes)
    finally:
        await batches.close()
    for b in busy:
        assert "complaint.acknowledged" not in await _logged(pool, b)


async def test_a_proposal_whose_caps_are_held_waits_alone_and_holds_up_no_other(
    pool: db.Pool,
) -> None:
    spend, other = f"s-{uuid.uuid4().hex[:6]}", f"o-{uuid.uuid4().hex[:6]}"
    batches = await _staff_actions(pool, {spend: "cust-held", other: "cust-other"})
    await batches.act(_request(spend, {"action": "acknowledge"}))
    refund = {"type": "refund", "amount": {"amount": "40.00", "currency": "EUR"}}
    # another replica deciding for this customer holds its caps' lock
    cap_lock = "SELECT pg_advisory_xact_lock(hashtextextended('cap:customer:' || $1, 0))"
    try:
        async with _held(pool, cap_lock, "cust-held"):
            proposing = asyncio.ensure_future(
                batches.act(_request(spend, {"action": "propose_remedy", "remedy": refund}))
            )
            status, _ = await asyncio.wait_for(
                batches.act(_request(other, {"action": "acknowledge"})), timeout=5
            )
            assert status == 200 and not proposing.done()
        status, _ = await asyncio.wait_for(proposing, timeout=5)
        assert status == 200
        assert "complaint.remedy_approved" in await _logged(pool, spend)
    finally:
        await batches.close()
