"""A complaint from the web (HTTP) and from a phone system (Kafka) is heard, routed and timed."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from aiokafka import AIOKafkaProducer

from shared import topics
from shared.events import CONTENT_TYPE, EventType, new_event
from tests.conftest import Running
from tests.support import eventually, read_topic, submission


async def _view(running: Running, complaint_id: str) -> dict | None:
    answer = await running.http.get(
        f"/v1/complaints/{complaint_id}",
        headers={"Authorization": f"Bearer {running.staff_token()}"},
    )
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    view = answer.json()
    return view if view["status"] == "routed" else None


async def _receipt(running: Running, smtp, address: str):
    async def arrived():
        return smtp.to(address)

    return await eventually(arrived, what=f"a receipt to {address}")


async def test_web_complaint_reaches_mailbox_and_is_routed_with_deadlines(running, smtp):
    key = await running.channel_key("web")
    data = submission(
        "web", category="product", amount_at_stake={"amount": "1000.00", "currency": "EUR"}
    )

    answer = await running.http.post(
        "/v1/complaints", json=data, headers={"Authorization": f"Bearer {key}"}
    )

    assert answer.status_code == 202, answer.text
    body = answer.json()
    complaint_id = body["complaint_id"]
    assert body["status_url"].endswith(f"/v1/complaints/{complaint_id}")
    assert body["duplicate"] is False

    mails = await _receipt(running, smtp, data["customer"]["email"])
    assert len(mails) == 1
    assert mails[0]["X-Complaint-Id"] == complaint_id
    assert "klacht" in mails[0]["Subject"]  # Dutch customer, Dutch receipt
    assert complaint_id in mails[0].get_content()

    view = await eventually(lambda: _view(running, complaint_id), what="the routed view")
    assert view["channel"] == "web"
    assert view["external_id"] == data["external_id"]
    assert view["category"] == "product"
    assert view["team"] == "product-quality"
    assert view["severity"] == "high"  # product 2 + 2 for 1000 EUR at stake = 4
    acknowledge_by = datetime.fromisoformat(view["deadlines"]["acknowledge_by"])
    resolve_by = datetime.fromisoformat(view["deadlines"]["resolve_by"])
    assert resolve_by - acknowledge_by == timedelta(days=3) - timedelta(hours=4)
    kinds = [entry["type"] for entry in view["timeline"]]
    assert kinds[:2] == ["complaint.received", "complaint.routed"]

    # every published event announces its type in an `event-type` header matching the envelope,
    # and carries no `ce_` header (the CloudEvents SDKs would take it for binary mode)
    ours = [
        r
        for r in await read_topic(running.settings.kafka_bootstrap, topics.EVENTS)
        if r.key == complaint_id.encode()
    ]
    assert {json.loads(r.value)["type"] for r in ours} >= {"complaint.received", "complaint.routed"}
    for record in ours:
        assert not any(k.startswith("ce_") for k, _ in record.headers)
        assert dict(record.headers)["event-type"].decode() == json.loads(record.value)["type"]


async def test_phone_complaint_produced_to_kafka_gets_the_same_treatment(running, smtp):
    data = submission("phone", category="warranty")
    data["customer"]["locale"] = "tr"
    event = new_event(type=EventType.SUBMITTED, source="phone/ivr-eu-1", data=data)
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.SUBMITTED,
            event.to_bytes(),
            key=topics.submission_key("phone", data["external_id"]).encode(),
            headers=[("content-type", CONTENT_TYPE.encode())],
        )
    finally:
        await producer.stop()

    mails = await _receipt(running, smtp, data["customer"]["email"])
    assert len(mails) == 1
    assert "Şikâyetinizi aldık" in mails[0]["Subject"]
    complaint_id = mails[0]["X-Complaint-Id"]

    view = await eventually(lambda: _view(running, complaint_id), what="the routed view")
    assert view["channel"] == "phone"
    assert view["team"] == "product-quality"
    assert view["deadlines"]["acknowledge_by"] < view["deadlines"]["resolve_by"]


async def test_complaint_view_needs_a_staff_token(running):
    answer = await running.http.get("/v1/complaints/nope")
    assert answer.status_code == 401
    assert answer.headers["content-type"].startswith("application/problem+json")
    answer = await running.http.get(
        "/v1/complaints/nope", headers={"Authorization": f"Bearer {running.staff_token()}"}
    )
    assert answer.status_code == 404
