"""Bad input gets a specific answer: 4xx naming the field, or a dead letter with the reason."""

from __future__ import annotations

import base64
import json

from aiokafka import AIOKafkaProducer

from shared import topics
from shared.events import EventType, new_event
from tests.conftest import Running
from tests.support import eventually, read_topic, submission


async def test_malformed_body_gets_422_naming_each_field(running: Running):
    key = await running.channel_key("web")
    data = submission("web")
    del data["description"]
    data["customer"] = {"id": "c1", "name": "No Contact"}
    data["amount_at_stake"] = {"amount": 12.5, "currency": "EUR"}

    answer = await running.http.post(
        "/v1/complaints", json=data, headers={"Authorization": f"Bearer {key}"}
    )

    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    fields = {e["field"] for e in answer.json()["errors"]}
    assert fields == {"description", "customer", "amount_at_stake.amount"}
    assert "No Contact" not in answer.text  # personal data is never echoed


async def test_not_json_and_cloudevent_forms(running: Running):
    key = await running.channel_key("web")
    headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
    answer = await running.http.post("/v1/complaints", content=b"{nope", headers=headers)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["rule"] == "json_invalid"

    event = new_event(type=EventType.SUBMITTED, source="web/form", data=submission("web"))
    doc = json.loads(event.to_bytes())
    doc["data"]["channel"] = "fax"
    answer = await running.http.post("/v1/complaints", json=doc, headers=headers)
    assert answer.status_code == 422
    assert [e["field"] for e in answer.json()["errors"]] == ["data.channel"]
    assert answer.json()["detail"].startswith("data.channel: ")  # detail and errors agree

    doc["data"]["channel"] = "web"
    answer = await running.http.post("/v1/complaints", json=doc, headers=headers)
    assert answer.status_code == 202, answer.text


async def test_keys_are_checked(running: Running):
    data = submission("web")
    assert (await running.http.post("/v1/complaints", json=data)).status_code == 401
    wrong = await running.http.post(
        "/v1/complaints", json=data, headers={"Authorization": "Bearer ck_web_forged"}
    )
    assert wrong.status_code == 401
    phone_key = await running.channel_key("phone")
    other = await running.http.post(
        "/v1/complaints", json=data, headers={"Authorization": f"Bearer {phone_key}"}
    )
    assert other.status_code == 403


async def test_oversized_body_gets_413(running: Running):
    key = await running.channel_key("web")
    data = submission("web", description="x" * 300_000)
    answer = await running.http.post(
        "/v1/complaints", json=data, headers={"Authorization": f"Bearer {key}"}
    )
    assert answer.status_code == 413


async def test_malformed_records_are_dead_lettered_and_the_next_one_is_processed(running, smtp):
    good = submission("phone")
    missing = submission("phone")
    del missing["description"]
    key = f"phone:batch-{good['external_id']}".encode()  # one key: one partition, in order
    records = [
        b"this is not json",
        new_event(type=EventType.SUBMITTED, source="phone/ivr", data=missing).to_bytes(),
        new_event(type=EventType.SUBMITTED, source="phone/ivr", data=good).to_bytes(),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in records:
            await producer.send_and_wait(topics.SUBMITTED, value, key=key)
    finally:
        await producer.stop()

    await eventually(lambda: smtp.to(good["customer"]["email"]), what="the good record's receipt")

    async def dead_letters():
        found = []
        for record in await read_topic(running.settings.kafka_bootstrap, topics.DEADLETTER):
            if record.key == key:
                found.append(json.loads(record.value))
        return found if len(found) >= 2 else None

    letters = await eventually(dead_letters, what="two dead letters")
    assert [letter["type"] for letter in letters] == ["record.deadlettered"] * 2
    first, second = (letter["data"] for letter in letters)
    assert first["reason_code"] == "not_json"
    assert base64.b64decode(first["value_base64"]) == b"this is not json"
    assert first["topic"] == topics.SUBMITTED
    assert isinstance(first["partition"], int) and isinstance(first["offset"], int)
    assert second["reason_code"] == "schema_violation"
    assert "data.description" in second["reason"]
    assert second["offset"] == first["offset"] + 1


async def test_an_invalid_phone_submission_is_answered_with_complaint_rejected(running: Running):
    data = submission("phone")
    data["customer"]["name"] = "Private Person"
    data["amount_at_stake"] = {"amount": 12.5, "currency": "EUR"}
    del data["description"]
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.SUBMITTED,
            new_event(type=EventType.SUBMITTED, source="phone/ivr-eu-1", data=data).to_bytes(),
            key=topics.submission_key("phone", data["external_id"]).encode(),
        )
    finally:
        await producer.stop()
    key = topics.submission_key("phone", data["external_id"]).encode()

    async def rejected():
        for record in await read_topic(running.settings.kafka_bootstrap, topics.EVENTS):
            if record.key == key:
                return json.loads(record.value)
        return None

    event = await eventually(rejected, what="complaint.rejected")
    assert event["type"] == "complaint.rejected"
    assert event["data"]["external_id"] == data["external_id"]
    assert event["data"]["reason_code"] == "schema_violation"
    assert {r["field"] for r in event["data"]["reasons"]} == {
        "data.description",
        "data.amount_at_stake.amount",
    }
    assert "Private Person" not in json.dumps(event) and "12.5" not in json.dumps(event)
