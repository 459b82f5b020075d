"""Staff actions over HTTP against the real broker and database: a routed complaint opens a case
with resolution's clocks; authority is enforced on the server (at once within it, an approval
above it, never one's own); stale versions, retried idempotency keys, malformed actions,
outsiders and named staff get the contract's answers; the customer's reply resumes the clock."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from services.intake import admin
from services.intake import repository as intake_repository
from services.resolution import admin as resolution_admin
from services.resolution import cases, policies, repository
from services.resolution.case import Acknowledge, Actor, Refusal
from services.resolution.policy import consistency_band, default_policy
from services.resolution.states import States
from shared import auth, db, quota, topics
from shared.events import EventType, Money, Role, new_event, utcnow
from tests.support import activate_policy, eventually, read_topic, remedy_granted, submission


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Case:
    """One complaint's case, and a team of fresh members to act on it."""

    def __init__(self, running, complaint_id: str, team: str) -> None:
        self.running = running
        self.id = complaint_id
        self.team = team

    async def member(self, role: str, *, team: str | None = None) -> str:
        staff_id = f"{role}-{uuid.uuid4().hex[:6]}"
        await self.running.add_member(staff_id, team=team or self.team, role=role)
        return self.running.staff_token(staff_id)

    async def act(self, token: str, body: dict[str, Any], **headers: str):
        return await self.running.http.post(
            f"/v1/complaints/{self.id}/actions", json=body, headers={**_auth(token), **headers}
        )

    async def view(self) -> dict[str, Any]:
        answer = await self.running.http.get(
            f"/v1/complaints/{self.id}", headers=_auth(self.running.staff_token())
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


async def _opened(running, **overrides: Any) -> Case:
    answer = await running.http.post(
        "/v1/complaints", json=submission("web", **overrides), headers=_auth(running.web_key)
    )
    assert answer.status_code == 202, answer.text
    complaint_id = answer.json()["complaint_id"]

    async def opened():
        found = await running.http.get(
            f"/v1/complaints/{complaint_id}", headers=_auth(running.staff_token())
        )
        return found.json() if found.status_code == 200 and found.json()["version"] else None

    view = await eventually(opened, what="the case opened")
    return Case(running, complaint_id, view["team"])


async def test_a_routed_complaint_opens_a_case_with_resolutions_clocks(running) -> None:
    case = await _opened(running)
    view = await case.view()
    assert view["status"] == "routed"
    assert view["deadlines"]["acknowledge_by"] < view["deadlines"]["resolve_by"]
    kinds = [e["type"] for e in view["timeline"]]
    assert "complaint.case_opened" in kinds and "complaint.deadlines_set" in kinds


async def test_within_authority_applies_at_once_and_resolves(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    assert (await case.act(agent, {"action": "acknowledge"})).status_code == 200
    proposal = {
        "action": "propose_remedy",
        "remedy": {"type": "refund", "amount": {"amount": "40.00", "currency": "EUR"}},
        "note": "wrong delivery",
    }
    applied = await case.act(agent, proposal)
    assert applied.status_code == 200, applied.text
    assert applied.json()["remedy"]["authorized_by"].startswith("agent-")
    resolved = await case.act(
        agent, {"action": "resolve", "outcome": "upheld", "message": "We refunded you."}
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["status"] == "resolved"
    assert resolved.json()["outcome"] == "upheld"
    # the answer is the view the decision wrote, its own entry included: what a read then shows
    # (a read may show more timeline: other services' news of the case arrives meanwhile)
    answered, read = resolved.json(), await case.view()
    assert {k: v for k, v in answered.items() if k != "timeline"} == {
        k: v for k, v in read.items() if k != "timeline"
    }
    assert all(entry in read["timeline"] for entry in answered["timeline"])
    assert "complaint.resolved" in [e["type"] for e in answered["timeline"]]
    channel = await running.http.get(f"/v1/complaints/{case.id}", headers=_auth(running.web_key))
    seen = channel.json()
    assert seen["remedy"]["type"] == "refund" and "authorized_by" not in seen["remedy"]
    assert "agent-" not in channel.text  # the channel never learns who on the staff acted


async def test_intake_learns_what_staff_decided_through_the_case_feed(running) -> None:
    """Resolution's outbox copies each event that changes a case as intake keeps it onto the
    internal cases feed, same id, and intake follows that feed alone: the acknowledgement,
    the outcome and the freed capacity reach it; nothing else is copied."""
    case = await _opened(running)
    agent = await case.member("agent")
    holder = (await case.view())["assignee"]
    assert (await case.act(agent, {"action": "acknowledge"})).status_code == 200
    resolved = await case.act(
        agent, {"action": "resolve", "outcome": "not_upheld", "message": "As agreed."}
    )
    assert resolved.status_code == 200, resolved.text

    async def learnt():
        rows = await running.sql(
            "SELECT a.acknowledged, a.open, c.outcome FROM intake.assignments a "
            "JOIN intake.complaints c USING (complaint_id) WHERE complaint_id = $1",
            case.id,
        )
        return tuple(rows[0]) == (True, False, "not_upheld")

    await eventually(learnt, what="intake to learn the acknowledgement and the outcome")
    if holder is not None:
        drift = await running.sql(
            """SELECT open_load, (SELECT coalesce(sum(weight), 0) FROM intake.assignments a
                                  WHERE a.staff_id = s.staff_id AND a.open) AS held
               FROM intake.staff s WHERE staff_id = $1""",
            holder,
        )
        assert drift[0]["open_load"] == drift[0]["held"]

    def of_case(topic_records: list[Any]) -> list[tuple[str, str]]:
        return [
            (event["id"], event["type"])
            for event in (json.loads(r.value) for r in topic_records if r.key == case.id.encode())
        ]

    async def fed():
        return of_case(await read_topic(running.settings.kafka_bootstrap, topics.CASES)) or None

    feed = await eventually(fed, what="the case feed")
    published = of_case(await read_topic(running.settings.kafka_bootstrap, topics.EVENTS))
    assert [t for _, t in feed] == ["complaint.acknowledged", "complaint.resolved"]
    assert [e for e in published if e[1] in topics.CASE_FEED] == feed


async def test_above_authority_waits_for_the_lowest_role_that_covers_it(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    senior = await case.member("senior_agent")
    proposal = {
        "action": "propose_remedy",
        "remedy": {"type": "refund", "amount": {"amount": "120.00", "currency": "EUR"}},
    }
    pending = await case.act(agent, proposal)
    assert pending.status_code == 200, pending.text
    assert pending.json()["status"] == "awaiting_approval"
    assert pending.json()["pending_approval"]["waiting_role"] == "senior_agent"
    own = await case.act(agent, {"action": "approve"})
    assert own.status_code == 403
    assert own.headers["content-type"].startswith("application/problem+json")
    approved = await case.act(senior, {"action": "approve", "note": "fair"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["remedy"]["authorized_role"] == "senior_agent"
    fresh = await _opened(running)
    too_much = await fresh.act(
        await fresh.member("agent"),
        {
            "action": "propose_remedy",
            "remedy": {"type": "refund", "amount": {"amount": "99999.00", "currency": "EUR"}},
        },
    )
    assert too_much.status_code == 403, too_much.text  # above a director's limit
    assert too_much.json()["code"] == "above_director"


async def test_an_approver_below_the_required_role_gets_403_naming_it(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    senior = await case.member("senior_agent")
    await case.member("supervisor")
    proposal = {
        "action": "propose_remedy",
        "remedy": {"type": "refund", "amount": {"amount": "300.00", "currency": "EUR"}},
    }
    pending = await case.act(agent, proposal)
    assert pending.json()["pending_approval"]["waiting_role"] == "supervisor"
    refused = await case.act(senior, {"action": "approve"})
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["required_role"] == "supervisor"
    assert refused.json()["detail"]


async def test_stale_versions_retried_keys_and_malformed_actions(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    version = (await case.view())["version"]
    note = {"action": "note", "text": "called the customer", "version": version}
    first = await case.act(agent, note, **{"Idempotency-Key": "k-1"})
    again = await case.act(agent, note, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert (await case.view())["version"] == version + 1  # applied once
    other = await case.act(agent, {"action": "note", "text": "other"}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422  # a key names one action
    stale = await case.act(agent, note)  # a new attempt against the old version
    assert stale.status_code == 409
    assert stale.json()["current_version"] == version + 1
    malformed = await case.act(agent, {"action": "propose_remedy", "remedy": {"type": "refund"}})
    assert malformed.status_code == 422
    assert "remedy" in malformed.text
    unknown = await case.act(agent, {"action": "teleport"})
    assert unknown.status_code == 422


async def test_text_postgresql_cannot_hold_is_refused_with_the_field_named(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    version = (await case.view())["version"]
    for body, field in [
        ({"action": "note", "text": "a\u0000b"}, "text"),
        ({"action": "assign", "to": "nobody\u0000"}, "to"),
        ({"action": "decline", "reason": "lone \ud800 surrogate"}, "reason"),
    ]:
        # raw JSON: the escapes reach the server as sent
        answer = await running.http.post(
            f"/v1/complaints/{case.id}/actions",
            content=json.dumps(body, ensure_ascii=True),
            headers={**_auth(agent), "Content-Type": "application/json"},
        )
        assert answer.status_code == 422, (body, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert field in answer.text
    odd_id = await running.http.post(
        "/v1/complaints/abc%00def/actions", json={"action": "acknowledge"}, headers=_auth(agent)
    )
    assert odd_id.status_code == 404, odd_id.text
    assert (await case.view())["version"] == version  # nothing was applied


async def test_outsiders_may_not_act_or_read(running) -> None:
    case = await _opened(running)
    outsider = await case.member("supervisor", team=f"elsewhere-{uuid.uuid4().hex[:4]}")
    acted = await case.act(outsider, {"action": "acknowledge"})
    assert acted.status_code == 403
    read = await running.http.get(f"/v1/complaints/{case.id}", headers=_auth(outsider))
    assert read.status_code == 404


async def test_named_staff_are_heard_and_never_decide(running) -> None:
    named_id = f"named-{uuid.uuid4().hex[:6]}"
    await running.add_member(named_id, team=f"shop-{uuid.uuid4().hex[:4]}")
    case = await _opened(running, staff_involved=[named_id])
    named = running.staff_token(named_id)
    agent = await case.member("agent")
    view = await case.view()
    assert [s["staff_id"] for s in view["staff_involved"]] == [named_id]
    early = await case.act(agent, {"action": "resolve", "outcome": "upheld", "message": "ok"})
    assert early.status_code == 409
    assert early.json()["missing"] == [named_id]
    proposal = {"action": "propose_remedy", "remedy": {"type": "apology_only"}}
    assert (await case.act(named, proposal)).status_code == 403
    read = await running.http.get(f"/v1/complaints/{case.id}", headers=_auth(named))
    assert read.status_code == 200  # they read the case that names them
    heard = await case.act(named, {"action": "staff_respond", "statement": "I was polite."})
    assert heard.status_code == 200, heard.text
    assert (await case.act(agent, proposal)).status_code == 200
    done = await case.act(agent, {"action": "resolve", "outcome": "upheld", "message": "Sorry."})
    assert done.status_code == 200, done.text


async def test_the_customers_reply_resumes_the_resolve_clock(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    asked = await case.act(
        agent, {"action": "request_information", "question": "Which order number?"}
    )
    assert asked.status_code == 200, asked.text
    assert asked.json()["status"] == "awaiting_customer"
    assert asked.json()["deadlines"]["resolve_by"] is None  # paused
    channel_view = await running.http.get(
        f"/v1/complaints/{case.id}", headers=_auth(running.web_key)
    )
    questions = [
        e["detail"].get("question")
        for e in channel_view.json()["timeline"]
        if e["type"] == "complaint.information_requested"
    ]
    assert questions == ["Which order number?"]
    reply = await running.http.post(
        f"/v1/complaints/{case.id}/replies",
        json={"text": "Order 4411."},
        headers=_auth(running.web_key),
    )
    assert reply.status_code == 200, reply.text
    view = await case.view()
    assert view["status"] != "awaiting_customer"
    assert view["deadlines"]["resolve_by"] is not None


async def test_the_queue_and_authority(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    queue = await running.http.get("/v1/complaints", headers=_auth(agent), params={"limit": 200})
    assert queue.status_code == 200, queue.text
    dues = [i["next_due"] for i in queue.json()["items"] if i["next_due"]]
    assert dues == sorted(dues)
    assert all(i["team"] == case.team for i in queue.json()["items"])
    first = await running.http.get("/v1/complaints", headers=_auth(agent), params={"limit": 1})
    page = first.json()
    assert len(page["items"]) == 1 and page["next"]
    second = await running.http.get(
        "/v1/complaints", headers=_auth(agent), params={"limit": 1, "after": page["next"]}
    )
    assert second.status_code == 200, second.text
    if second.json()["items"]:
        assert second.json()["items"][0]["complaint_id"] != page["items"][0]["complaint_id"]
    for cursor in ("x|y", "9999-12-31T23:59:59-23:00|y", "0001-01-01T00:00:00+23:00|y"):
        bad = await running.http.get(
            "/v1/complaints", headers=_auth(agent), params={"after": cursor}
        )
        assert bad.status_code == 422, (cursor, bad.status_code)
    authority = await running.http.get(f"/v1/complaints/{case.id}/authority", headers=_auth(agent))
    assert authority.status_code == 200, authority.text
    assert authority.json()["role"] == "agent"
    assert authority.json()["refund"]["EUR"] == "50"


async def _command(running, complaint_id: str, token: str | None, body: dict[str, Any]) -> str:
    """Send a staff command over Kafka; its event id."""
    event = new_event(
        type=EventType.COMMAND, source="console/test", subject=complaint_id, data=body
    )
    headers = [("content-type", b"application/cloudevents+json")]
    if token is not None:
        headers.append(("authorization", f"Bearer {token}".encode()))
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.COMMANDS, event.to_bytes(), key=complaint_id.encode(), headers=headers
        )
    finally:
        await producer.stop()
    return event.id


async def _refusal_of(running, command_id: str) -> dict[str, Any] | None:
    for record in await read_topic(running.settings.kafka_bootstrap, topics.EVENTS, timeout_s=2):
        if b"complaint.action_refused" in record.value and command_id.encode() in record.value:
            data: dict[str, Any] = json.loads(record.value)["data"]
            return data
    return None


async def test_commands_over_kafka_are_checked_and_decided_as_over_http(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    version = (await case.view())["version"]
    await _command(running, case.id, agent, {"action": "acknowledge"})

    async def acknowledged():
        view = await case.view()
        return view if view["version"] > version else None

    assert (await eventually(acknowledged, what="the command decided"))["status"] == "acknowledged"

    removed_id = f"gone-{uuid.uuid4().hex[:6]}"
    await running.add_member(removed_id, team=case.team)
    removed = running.staff_token(removed_id)
    await admin.remove_staff(running.settings, removed_id)
    await running.learnt(removed_id, "NOT active")
    expired = auth.issue_token(running.secret, kind=auth.STAFF, subject="manager-1", ttl_s=1, now=1)
    revoked_id = f"rev-{uuid.uuid4().hex[:6]}"
    await running.add_member(revoked_id, team=case.team)
    revoked = running.staff_token(revoked_id)
    await asyncio.sleep(0.01)
    await admin.revoke_tokens(running.settings, revoked_id)
    await running.learnt(revoked_id, "tokens_valid_after IS NOT NULL")
    refusals = {
        "no token": (None, {"action": "note", "text": "x"}, 401),
        "unknown member": (running.staff_token("nobody"), {"action": "note", "text": "x"}, 401),
        "removed member": (removed, {"action": "note", "text": "x"}, 401),
        "expired token": (expired, {"action": "note", "text": "x"}, 401),
        "revoked token": (revoked, {"action": "note", "text": "x"}, 401),
        "malformed": (agent, {"action": "note"}, 422),
        "no authority": (agent, {"action": "approve"}, 409),
    }
    sent = {
        name: await _command(running, case.id, token, body)
        for name, (token, body, _) in refusals.items()
    }
    for name, command_id in sent.items():
        refusal = await eventually(
            lambda command_id=command_id: _refusal_of(running, command_id), what=name
        )
        assert refusal["status"] == refusals[name][2], (name, refusal)
        assert refusal["reason"], name


async def test_a_pending_approval_keeps_the_policy_version_it_started_under(
    running, tmp_path
) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    senior = await case.member("senior_agent")
    proposal = {
        "action": "propose_remedy",
        "remedy": {"type": "refund", "amount": {"amount": "120.00", "currency": "EUR"}},
    }
    pending = await case.act(agent, proposal)
    assert pending.json()["pending_approval"]["waiting_role"] == "senior_agent"
    # a stricter version becomes active: a senior agent may refund 100 EUR at most
    before = (await resolution_admin.show_policy(running.settings)).policy.version

    def stricter(document: dict[str, Any]) -> None:
        document["limits"]["senior_agent"]["refund"]["EUR"] = "100"

    await activate_policy(running.settings, tmp_path, stricter)
    try:
        await asyncio.sleep(2.5)  # every replica follows within 2 s
        approved = await case.act(senior, {"action": "approve"})
        assert approved.status_code == 200, approved.text  # under the version it started in
        fresh = await _opened(running)
        new = await fresh.act(await fresh.member("agent"), proposal)
        assert new.json()["pending_approval"]["waiting_role"] == "supervisor"  # the new one
    finally:
        await resolution_admin.activate_policy(running.settings, before)
        await asyncio.sleep(2.5)


async def test_a_retry_racing_the_first_attempt_applies_once(running) -> None:
    case = await _opened(running)
    agent = await case.member("agent")
    version = (await case.view())["version"]
    note = {"action": "note", "text": "called back"}
    key = {"Idempotency-Key": f"race-{uuid.uuid4().hex[:6]}"}
    first, second = await asyncio.gather(case.act(agent, note, **key), case.act(agent, note, **key))
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert (await case.view())["version"] == version + 1


async def test_refunds_at_once_cannot_spend_a_customers_cap_twice(running) -> None:
    customer = f"cust-{uuid.uuid4().hex[:8]}"

    async def customers_case() -> Case:
        data = submission("web")
        return await _opened(running, customer={**data["customer"], "id": customer})

    cases = [await customers_case() for _ in range(3)]
    teams = {c.team for c in cases}
    assert len(teams) == 1, teams  # the same kind of complaint goes to the same team
    agent = await cases[0].member("agent")
    refund = {
        "action": "propose_remedy",
        "remedy": {"type": "refund", "amount": {"amount": "40.00", "currency": "EUR"}},
    }
    answers = await asyncio.gather(*(c.act(agent, refund) for c in cases))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    statuses = sorted(a.json()["status"] for a in answers)
    # an agent may refund one customer 100 EUR in 30 days: two refunds apply, the third waits
    assert statuses == ["awaiting_approval", "remedy_proposed", "remedy_proposed"], statuses


async def test_a_proposal_far_from_what_similar_complaints_got_needs_a_justification(
    running,
) -> None:
    """The consistency sample read from the remedies granted (count and median, in the
    database) reaches the decision: far above or below it, a proposal is refused without a
    justification, and with one it waits for a second pair of eyes."""
    case = await _opened(running)
    conn = await _resolution_conn(running)
    try:
        row = await conn.fetchrow(
            "SELECT category, severity, amount_at_stake FROM cases WHERE complaint_id = $1",
            case.id,
        )
        policy = await policies.active(conn)
        stake = row["amount_at_stake"]
        band = consistency_band(policy, Money.model_validate(stake) if stake else None)
        # a currency no other test grants remedies in: this sample is the test's alone
        sample = [
            remedy_granted(
                band,
                Decimal(390 + n % 3 * 10),  # median 400
                utcnow(),
                complaint_id=f"sample-{n}",
                customer_id="cust-sample",
                currency="SEK",
                category=row["category"],
                severity=row["severity"],
                policy_version=policy.version,
            )
            for n in range(policy.consistency.min_sample)
        ]
        await repository.remedies_added(sample).run(conn)
    finally:
        await conn.close()
    agent = await case.member("agent")
    await case.member("director")  # the policy names no limit in SEK: a director's call

    def refund(amount: str, **extra: str) -> dict[str, Any]:
        remedy = {"type": "refund", "amount": {"amount": amount, "currency": "SEK"}}
        return {"action": "propose_remedy", "remedy": remedy, **extra}

    median, rule = Decimal(400), policy.consistency
    above, below = median * rule.high_ratio + 100, median * rule.low_ratio - 10
    for far in (above, below):  # far outside the sample, either way
        refused = await case.act(agent, refund(f"{far:.2f}"))
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "justification_required"
        assert refused.json()["missing"] == ["justification"]
    justified = await case.act(agent, refund(f"{below:.2f}", justification="a token gesture"))
    assert justified.status_code == 200, justified.text
    assert justified.json()["status"] == "awaiting_approval"
    assert justified.json()["pending_approval"]["policy_exception"] is True


async def test_a_claim_moves_the_case_and_its_load_in_intake_too(running) -> None:
    case = await _opened(running)
    claimer_id = f"claimer-{uuid.uuid4().hex[:6]}"
    await running.add_member(claimer_id, team=case.team, capacity=50)
    claimed = await case.act(running.staff_token(claimer_id), {"action": "claim"})
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["assignee"] == claimer_id

    async def followed() -> bool:
        rows = await running.sql(
            "SELECT a.staff_id, s.open_load FROM intake.assignments a "
            "JOIN intake.staff s ON s.staff_id = a.staff_id WHERE a.complaint_id = $1",
            case.id,
        )
        return bool(rows and rows[0]["staff_id"] == claimer_id and rows[0]["open_load"] > 0)

    await eventually(followed, what="intake following the claim")


async def test_a_claim_counts_as_the_claimers_latest_assignment_in_intake(running) -> None:
    """Fair assignment prefers whoever was assigned longest ago: a member who claimed a case
    was assigned at the claim, and an older event never moves that back."""
    case = await _opened(running)
    claimer_id = f"claimer-{uuid.uuid4().hex[:6]}"
    await running.add_member(claimer_id, team=case.team, capacity=50)
    claimed = await case.act(running.staff_token(claimer_id), {"action": "claim"})
    assert claimed.status_code == 200, claimed.text
    event = next(e for e in (await case.view())["timeline"] if e["type"] == "complaint.assigned")
    claimed_at = datetime.fromisoformat(event["at"])

    async def last_assigned() -> datetime | None:
        rows = await running.sql(
            "SELECT last_assigned_at FROM intake.staff WHERE staff_id = $1", claimer_id
        )
        return rows[0]["last_assigned_at"]

    assert await eventually(last_assigned, what="intake following the claim") == claimed_at

    # the case moves away and back by events older than the claim: the other member counts as
    # assigned then, the claimer keeps the claim (rolled back: the system sees none of it)
    other_id = f"other-{uuid.uuid4().hex[:6]}"
    await running.add_member(other_id, team=case.team)
    conn = await asyncpg.connect(
        running.settings.require_database_url(), server_settings={"search_path": "intake"}
    )
    transaction = conn.transaction()
    await transaction.start()
    try:
        earlier = claimed_at - timedelta(hours=1)
        await intake_repository.move_holder(conn, case.id, other_id, earlier)
        await intake_repository.move_holder(conn, case.id, claimer_id, earlier)
        rows = await conn.fetch(
            "SELECT staff_id, last_assigned_at FROM staff WHERE staff_id = ANY($1::text[])",
            [claimer_id, other_id],
        )
        assert {r["staff_id"]: r["last_assigned_at"] for r in rows} == {
            claimer_id: claimed_at,
            other_id: earlier,
        }
    finally:
        await transaction.rollback()
        await conn.close()


async def _resolution_conn(running) -> asyncpg.Connection:
    """A connection to resolution's schema, as the service's own are prepared."""
    conn = await asyncpg.connect(running.settings.require_database_url())
    await db.prepare_connection(conn)
    await conn.execute("SET search_path TO resolution, public")
    return conn


async def _acknowledge(conn, loaded: cases.Loaded, actor: Actor, known: States) -> cases.Kept:
    kept = await cases.act(
        conn, loaded, Acknowledge(), actor, policy=default_policy(), now=utcnow(), known=known
    )
    assert not isinstance(kept, Refusal)
    return kept


async def test_a_decision_that_waited_for_the_case_sees_what_was_decided_meanwhile(
    running,
) -> None:
    """The case row and its events are read in one statement, whose snapshot predates the
    wait for the row's lock: the events another decision committed meanwhile must be read."""
    case = await _opened(running)
    known = States()  # the states one replica keeps
    holder, waiter = await _resolution_conn(running), await _resolution_conn(running)
    try:
        async with holder.transaction():
            held = await cases.load(holder, case.id, known=known)
            assert held is not None
            waiter_tx = waiter.transaction()
            await waiter_tx.start()
            waiting = asyncio.create_task(cases.load(waiter, case.id, known=known))
            await asyncio.sleep(0.3)  # its statement has begun, and waits for the lock
            assert not waiting.done()
            actor = Actor(id="agent-x", role=Role.AGENT, team=case.team)
            decided = await _acknowledge(holder, held, actor, known)
        loaded = await waiting
        await waiter_tx.rollback()
        assert loaded is not None
        assert loaded.row["version"] == decided.state.version > held.state.version
        assert loaded.state == decided.state  # replayed from every event, the new ones included
    finally:
        await holder.close()
        await waiter.close()


async def test_a_state_kept_for_a_decision_never_committed_is_never_used(running) -> None:
    """A decision keeps the case's new state for the next one before its transaction ends:
    when the transaction rolls back, or the case goes on another way (another process), the
    kept state does not continue the log, and the case is read whole."""
    case = await _opened(running)
    known = States()
    conn = await _resolution_conn(running)
    actor = Actor(id="agent-x", role=Role.AGENT, team=case.team)
    try:
        tx = conn.transaction()
        await tx.start()
        loaded = await cases.load(conn, case.id, known=known)
        assert loaded is not None
        never = await _acknowledge(conn, loaded, actor, known)
        await tx.rollback()
        assert known.get(case.id) == never.state  # kept, though never committed

        async with conn.transaction():  # the case is not as far as the kept state
            again = await cases.load(conn, case.id, known=known)
            assert again is not None and again.state == loaded.state
            assert again.state.version < never.state.version
            kept = await _acknowledge(conn, again, actor, known)
        # another history at the same version: the row's chain head is not the kept one's
        assert kept.state.version == never.state.version
        assert kept.state.chain_head != never.state.chain_head
        known.put(never.state)
        async with conn.transaction():
            last = await cases.load(conn, case.id, known=known)
        assert last is not None and last.state == kept.state
        assert known.get(case.id) == kept.state
        # a plain read (a reader's, who may not see the case) keeps nothing
        known.put(never.state)
        read = await cases.load(conn, case.id, known=known, lock=False)
        assert read is not None and read.state == kept.state
        assert known.get(case.id) == never.state
    finally:
        await conn.close()


async def test_past_their_burst_a_member_gets_429_with_retry_after_and_others_act_on(
    running,
) -> None:
    """A member may act `staff_action_rate` times a second and `staff_action_burst` at once:
    past that, 429 with Retry-After. The limit is spent once the token is verified, before the
    case is looked up (an action on no complaint counts); another member's bucket is theirs."""
    rate, burst = running.settings.staff_action_rate, running.settings.staff_action_burst
    case = await _opened(running)
    flooder = await case.member("agent")
    other = await case.member("agent")
    note = {"action": "note", "text": "checked"}
    nowhere = f"/v1/complaints/{uuid.uuid4()}/actions"

    # a client of its own (its connections are closed after, not left idle for the next tests
    # to reuse as the server drops them), at most 50 requests at a time (within its pool)
    gate = asyncio.Semaphore(50)
    async with httpx.AsyncClient(base_url=running.settings.base_url(), timeout=30) as http:

        async def flood() -> Any:
            async with gate:
                return await http.post(nowhere, json=note, headers=_auth(flooder))

        started = time.monotonic()
        answers = await asyncio.gather(*(flood() for _ in range(2 * burst)))
        elapsed = time.monotonic() - started
    codes = [a.status_code for a in answers]
    assert set(codes) == {404, 429}, codes
    # the burst, and no more than the refill over the flood
    assert burst <= codes.count(404) <= burst + rate * elapsed + 1, (codes.count(404), elapsed)
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["status"] == 429 and problem["code"] == "rate_limited"
    assert problem["title"] == "Too many requests"
    assert problem["instance"] == nowhere
    assert f"{rate:g} times a second and {burst} at once" in problem["detail"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= quota.retry_after(1 / rate)  # one token back, rounded up

    # a token that names nobody is still 401, not counted against anyone
    unknown = await running.http.post(
        nowhere, json=note, headers=_auth(running.staff_token("nobody"))
    )
    assert unknown.status_code == 401
    # another member acts on
    assert (await case.act(other, note)).status_code == 200

    await asyncio.sleep(retry_after)
    again = await case.act(flooder, note)
    assert again.status_code == 200, again.text

    doc = (await running.http.get("/openapi.json")).json()
    answer = doc["paths"]["/v1/complaints/{complaint_id}/actions"]["post"]["responses"]["429"]
    assert "Retry-After" in answer["headers"]


async def test_a_command_past_the_members_limit_is_refused_with_429(running) -> None:
    """Commands spend the same bucket as HTTP actions; one past the limit is refused with
    `complaint.action_refused` (429, `rate_limited`), never dropped."""
    rate, burst = running.settings.staff_action_rate, running.settings.staff_action_burst
    case = await _opened(running)
    flooder = await case.member("agent")
    nowhere = str(uuid.uuid4())
    headers = [
        ("content-type", b"application/cloudevents+json"),
        ("authorization", f"Bearer {flooder}".encode()),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap)
    await producer.start()
    try:
        sent = []
        for _ in range(3 * burst):
            event = new_event(
                type=EventType.COMMAND,
                source="console/test",
                subject=nowhere,
                data={"action": "note", "text": "checked"},
            )
            await producer.send(
                topics.COMMANDS, event.to_bytes(), key=nowhere.encode(), headers=headers
            )
            sent.append(event.id)
        await producer.flush()
    finally:
        await producer.stop()

    async def every_refusal() -> dict[str, dict[str, Any]] | None:
        records = await read_topic(running.settings.kafka_bootstrap, topics.EVENTS, timeout_s=2)
        found = {}
        for record in records:
            if b"complaint.action_refused" in record.value and nowhere.encode() in record.value:
                data = json.loads(record.value)["data"]
                found[data["command_id"]] = data
        return found if set(found) >= set(sent) else None

    refusals = await eventually(every_refusal, what="a refusal of every command")
    statuses = [refusals[command_id]["status"] for command_id in sent]
    assert set(statuses) == {404, 429}, statuses  # within the limit: no such complaint
    assert statuses.count(404) >= burst
    limited = next(r for r in refusals.values() if r["status"] == 429)
    assert limited["code"] == "rate_limited"
    assert f"{rate:g} times a second and {burst} at once" in limited["reason"]
    assert 1 <= limited["retry_after"] <= quota.retry_after(1 / rate)
