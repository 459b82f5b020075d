"""Routing in the running system: assignment, named staff, reassignment, the team queue,
and a channel reading its own complaints."""

from __future__ import annotations

import json
import uuid

import pytest

from services.intake import admin
from shared import auth
from tests.conftest import Running
from tests.support import (
    complaints_cli_text,
    eventually,
    submission,
)


@pytest.fixture
async def team(running: Running):
    """A team of three reached by chat complaints in Turkish (a rule only this module uses)."""
    name = f"team-{uuid.uuid4().hex[:6]}"
    members = [f"{name}-{n}" for n in ("a", "b", "c")]
    for staff_id, languages in zip(members, (["en"], ["tr", "en"], ["tr"]), strict=True):
        await admin.add_staff(
            running.settings,
            staff_id=staff_id,
            name=staff_id,
            team=name,
            role="agent",
            languages=languages,
            capacity=10,
        )
    rule = await admin.add_route(
        running.settings, team=name, priority=1, channel="chat", language="tr"
    )
    yield name, members
    await admin.remove_route(running.settings, rule)


async def _submit(running: Running, key: str, **change) -> str:
    data = submission("chat", **change)
    data["customer"]["locale"] = "tr"
    answer = await running.http.post(
        "/v1/complaints", json=data, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["complaint_id"]


async def _view(running: Running, complaint_id: str, *, token: str | None = None):
    token = token or running.staff_token()
    answer = await running.http.get(
        f"/v1/complaints/{complaint_id}", headers={"Authorization": f"Bearer {token}"}
    )
    return answer.json() if answer.status_code == 200 else None


async def _cli(running: Running, *args: str) -> tuple[int, str, str]:
    return await complaints_cli_text(running.settings, *args)


async def test_assignment_speaks_the_language_and_skips_named_staff(running, team):
    name, (_a, b, c) = team
    key = await running.channel_key("chat")
    complaint_id = await _submit(running, key, category="service", staff_involved=[b])

    view = await eventually(lambda: _view(running, complaint_id), what="the routed view")
    assert view["team"] == name
    assert view["team_reason"].startswith("routing rule")
    assert view["assignee"] == c  # b speaks Turkish too, but is named in the complaint
    assert "speaks tr" in view["assignment_reason"]
    assert view["severity"] == "high"  # names staff
    assert view["severity_reasons"][-1].startswith("raised to high")
    assert view["category_reason"] == "given by the channel"
    assert view["customer_history"]["complaints_total"] == 0


async def test_unavailable_member_cases_are_reassigned_then_the_queue_takes_over(running, team):
    _name, (a, b, c) = team
    key = await running.channel_key("chat")
    complaint_id = await _submit(running, key, category="service")
    first = (await eventually(lambda: _view(running, complaint_id), what="routed"))["assignee"]
    assert first in (b, c)

    code, _, err = await _cli(running, "staff", "set", first, "--available", "false")
    assert code == 0, err
    assert "reassigned 1 case" in err

    view = await eventually(
        lambda: _moved_view(running, complaint_id, first), what="the reassignment"
    )
    assert view["assignee"] in (a, b, c) and view["assignee"] != first
    assert any(e["type"] == "complaint.reassigned" for e in view["timeline"])

    for member in (a, b, c):
        await admin.set_staff(running.settings, member, available=False)
    queued = await _submit(running, key, category="service")
    view = await eventually(lambda: _view(running, queued), what="routed")
    assert view["assignee"] is None

    async def alerted():
        current = await _view(running, queued)
        return any(e["type"] == "complaint.unassigned" for e in current["timeline"])

    await eventually(alerted, what="complaint.unassigned")


async def _moved_view(running, complaint_id, first):
    view = await _view(running, complaint_id)
    return view if view and view["assignee"] != first else None


async def test_staff_list_json_shape(running, team):
    name, members = team
    code, out, err = await _cli(running, "staff", "list", "--json")
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["team"] == name]
    assert [r["id"] for r in rows] == members
    assert set(rows[0]) == {
        "id",
        "name",
        "team",
        "role",
        "languages",
        "capacity",
        "available",
        "active",
    }


async def test_a_channel_reads_only_its_own_complaints(running, team):
    chat_key = await running.channel_key("chat")
    phone_key = await running.channel_key("phone")
    complaint_id = await _submit(running, chat_key, category="service")
    await eventually(lambda: _view(running, complaint_id), what="routed")

    view = await eventually(
        lambda: _view(running, complaint_id, token=chat_key), what="the channel's view"
    )
    assert view["complaint_id"] == complaint_id
    assert "assignee" not in view and "severity_reasons" not in view and "flags" not in view
    assert {e["type"] for e in view["timeline"]} >= {"complaint.received", "complaint.routed"}

    async def phone_answer():
        answer = await running.http.get(
            f"/v1/complaints/{complaint_id}", headers={"Authorization": f"Bearer {phone_key}"}
        )
        return answer.status_code if answer.status_code != 401 else None

    assert await eventually(phone_answer, what="the phone key to be known") == 404

    assert await admin.revoke_key(running.settings, auth.hash_key(chat_key)[:12])

    async def refused():
        answer = await running.http.get(
            f"/v1/complaints/{complaint_id}", headers={"Authorization": f"Bearer {chat_key}"}
        )
        return answer.status_code == 401

    await eventually(refused, what="the revoked key to be refused")


@pytest.mark.parametrize("announced", [True, False], ids=["type header", "no header"])
async def test_a_resolved_case_frees_its_holders_capacity(running, team, announced):
    """Intake follows the internal cases feed, where each service's outbox copies the events
    that change a case as intake keeps it. It skips other types by their `event-type` header,
    unread: a garbage value announced as `complaint.routed` is passed over, not dead-lettered.
    Events from a producer that sets no header are parsed to find out."""
    from aiokafka import AIOKafkaProducer

    from shared import topics
    from shared.events import EventType, new_event

    key = await running.channel_key("chat")
    complaint_id = await _submit(running, key, category="service")
    holder = (await eventually(lambda: _view(running, complaint_id), what="routed"))["assignee"]

    async def load_of(staff_id):
        rows = await running.sql("SELECT open_load FROM intake.staff WHERE staff_id = $1", staff_id)
        return rows[0]["open_load"]

    before = await load_of(holder)
    assert before >= 2  # service over chat scores medium: weight 2
    resolved = new_event(
        type=EventType.RESOLVED,
        source="complaints/resolution",
        subject=complaint_id,
        data={"complaint_id": complaint_id, "actor": holder, "outcome": "upheld"},
    )
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap)
    await producer.start()
    try:
        if announced:
            skipped = await producer.send_and_wait(
                topics.CASES,
                b"not json at all",
                key=complaint_id.encode(),
                headers=[("event-type", b"complaint.routed")],
            )
        await producer.send_and_wait(
            topics.CASES,
            resolved.to_bytes(),
            key=complaint_id.encode(),
            headers=[("event-type", b"complaint.resolved")] if announced else None,
        )
    finally:
        await producer.stop()

    async def freed():
        return await load_of(holder) == before - 2

    await eventually(freed, what="the holder's load to drop")
    rows = await running.sql(
        "SELECT open, (SELECT outcome FROM intake.complaints WHERE complaint_id = $1) AS outcome "
        "FROM intake.assignments WHERE complaint_id = $1",
        complaint_id,
    )
    assert (rows[0]["open"], rows[0]["outcome"]) == (False, "upheld")
    drift = await running.sql(
        """SELECT staff_id FROM intake.staff s WHERE open_load <> coalesce(
               (SELECT sum(weight) FROM intake.assignments a
                WHERE a.staff_id = s.staff_id AND a.open), 0)"""
    )
    assert drift == []
    if announced:  # the garbage came before the resolution on the same partition: passed over
        letters = await running.sql(
            'SELECT reason FROM intake.deadletters WHERE topic = $1 AND "offset" = $2 '
            "AND partition = $3",
            topics.CASES,
            skipped.offset,
            skipped.partition,
        )
        assert letters == []


async def test_remedies_far_above_what_was_at_stake_flag_the_next_complaint(running, team):
    """Two earlier cases resolved with refunds worth over twice what was at stake: the
    customer's next complaint is flagged for a senior reviewer, and still routed."""
    from aiokafka import AIOKafkaProducer

    from shared import topics
    from shared.events import EventType, new_event

    key = await running.channel_key("chat")
    customer = f"cust-{uuid.uuid4().hex[:8]}"

    async def submit(**change):
        data = submission("chat", category="service", **change)
        data["customer"] = {**data["customer"], "id": customer, "locale": "tr"}
        answer = await running.http.post(
            "/v1/complaints", json=data, headers={"Authorization": f"Bearer {key}"}
        )
        assert answer.status_code == 202, answer.text
        complaint_id = answer.json()["complaint_id"]
        return await eventually(lambda: _view(running, complaint_id), what="routed")

    earlier = [
        await submit(amount_at_stake={"amount": "20.00", "currency": "EUR"}) for _ in range(2)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap)
    await producer.start()
    try:
        for view in earlier:
            resolved = new_event(
                type=EventType.RESOLVED,
                source="complaints/resolution",
                subject=view["complaint_id"],
                data={
                    "complaint_id": view["complaint_id"],
                    "actor": view["assignee"],
                    "outcome": "upheld",
                    "remedy": {"type": "refund", "amount": {"amount": "90.00", "currency": "EUR"}},
                },
            )
            await producer.send_and_wait(
                topics.CASES, resolved.to_bytes(), key=view["complaint_id"].encode()
            )
    finally:
        await producer.stop()

    async def remedies_recorded():
        rows = await running.sql(
            "SELECT count(*) AS n FROM intake.complaints "
            "WHERE customer_id = $1 AND remedy_amount = 90 AND remedy_currency = 'EUR'",
            customer,
        )
        return rows[0]["n"] == 2

    await eventually(remedies_recorded, what="intake to record both remedies")
    assert not any(f["code"] == "remedies_above_spend" for f in earlier[1]["flags"])

    latest = await submit()
    codes = [f["code"] for f in latest["flags"]]
    assert "remedies_above_spend" in codes, latest["flags"]
    assert latest["customer_history"]["remedies_above_spend_365d"] == 2
    assert latest["assignee"] is not None  # flagged, never refused


async def test_a_reopened_case_counts_as_a_repeat_contact(running):
    """A customer whose earlier case was reopened has contacted us twice: their next
    complaint scores two repeat contacts, not one."""
    from aiokafka import AIOKafkaProducer

    from shared import topics
    from shared.events import EventType, new_event

    customer = f"cust-{uuid.uuid4().hex[:8]}"

    async def submit() -> dict:
        data = submission("web", category="service")
        data["customer"] = {**data["customer"], "id": customer}
        answer = await running.http.post(
            "/v1/complaints", json=data, headers={"Authorization": f"Bearer {running.web_key}"}
        )
        assert answer.status_code == 202, answer.text
        complaint_id = answer.json()["complaint_id"]
        return await eventually(lambda: _view(running, complaint_id), what="routed")

    first = await submit()
    reopened = new_event(
        type=EventType.REOPENED,
        source="complaints/resolution",
        subject=first["complaint_id"],
        data={"complaint_id": first["complaint_id"], "actor": "manager-1", "reason": "appeal"},
    )
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.CASES, reopened.to_bytes(), key=first["complaint_id"].encode()
        )
    finally:
        await producer.stop()

    async def counted() -> bool:
        rows = await running.sql(
            "SELECT reopens FROM intake.complaints WHERE complaint_id = $1",
            first["complaint_id"],
        )
        return bool(rows and rows[0]["reopens"] == 1)

    await eventually(counted, what="the reopen counted")
    second = await submit()
    assert any(r.startswith("+2 repeat contact") for r in second["severity_reasons"]), second[
        "severity_reasons"
    ]
