"""Bad input gets a specific answer: 4xx naming the field, or a dead letter with the reason."""

from __future__ import annotations

import base64
import json
import logging

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
    data["amount_at_stake"] = {"amount": 987.25, "currency": "EUR"}
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
    assert "Private Person" not in json.dumps(event) and "987.25" not in json.dumps(event)


# ---------------------------------------------------------------- hostile input (issue 8)

PROBLEM = "application/problem+json"


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _problem(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    doc = answer.json()
    assert doc["status"] == status and doc["title"] and doc["detail"] and doc["type"]
    assert doc["instance"] == answer.request.url.path
    return doc


async def test_a_body_nested_10000_levels_deep_is_a_422_problem(running: Running):
    headers = {"Authorization": f"Bearer {running.web_key}", "content-type": "application/json"}
    answer = await running.http.post("/v1/complaints", content=_nested(10_000), headers=headers)
    doc = _problem(answer, 422)
    assert [(e["field"], e["rule"]) for e in doc["errors"]] == [("(body)", "json_too_deep")]


async def test_a_valid_body_with_an_extra_field_nested_1000_deep_is_a_422(running: Running):
    headers = {"Authorization": f"Bearer {running.web_key}", "content-type": "application/json"}
    data = submission("web")
    body = json.dumps(data)[:-1] + ', "extra": ' + _nested(1_000) + "}"
    answer = await running.http.post("/v1/complaints", content=body, headers=headers)
    doc = _problem(answer, 422)
    assert [(e["field"], e["rule"]) for e in doc["errors"]] == [("(body)", "json_too_deep")]
    rows = await running.sql(
        "SELECT 1 FROM intake.complaints WHERE external_id = $1", data["external_id"]
    )
    assert not rows


async def test_unknown_routes_and_wrong_methods_are_problems(running: Running):
    _problem(await running.http.get("/v1/no-such-thing"), 404)
    answer = await running.http.delete("/v1/complaints")
    _problem(answer, 405)
    assert answer.headers["allow"] == "POST"
    answer = await running.http.put("/healthz")
    _problem(answer, 405)
    assert answer.headers["allow"] == "GET"


async def test_an_unexpected_failure_is_a_500_problem_that_tells_nothing(
    running: Running, monkeypatch, caplog
):
    from services.resolution import repository

    async def broken(conn, complaint_id):
        raise RuntimeError("row for Sanne de Vries <sanne@example.com> is corrupt")

    monkeypatch.setattr(repository, "load_view", broken)
    caplog.set_level(logging.DEBUG, logger="shared.web")
    running.spans.clear()
    answer = await running.http.get(
        "/v1/complaints/c-broken",
        headers={"Authorization": f"Bearer {running.staff_token()}"},
    )
    doc = _problem(answer, 500)
    assert doc["title"] == "Internal Server Error"
    assert "Sanne" not in answer.text and "RuntimeError" not in answer.text
    logged = [r for r in caplog.records if r.name == "shared.web" and r.levelno >= logging.INFO]
    assert [r.getMessage() for r in logged] == [
        "unexpected RuntimeError answering GET /v1/complaints/c-broken"
    ]
    spans = [s for s in running.spans.get_finished_spans() if s.name.startswith("GET /v1/")]
    assert spans and spans[-1].attributes["http.response.status_code"] == 500
    assert "Sanne" not in str([(s.attributes, s.events, s.status) for s in spans])


async def test_unknown_currency_and_numeric_time_are_422s_naming_the_fields(running: Running):
    data = submission("web", occurred_at=1_700_000_000)
    data["amount_at_stake"] = {"amount": "10.00", "currency": "XYZ"}
    answer = await running.http.post(
        "/v1/complaints", json=data, headers={"Authorization": f"Bearer {running.web_key}"}
    )
    doc = _problem(answer, 422)
    assert {(e["field"], e["rule"], e["message"].split(" (")[0]) for e in doc["errors"]} == {
        ("amount_at_stake.currency", "iso4217", "unknown ISO 4217 currency code"),
        (
            "occurred_at",
            "rfc3339",
            "must be an RFC 3339 date-time string with a time zone offset, e.g. "
            "2026-11-22T10:00:00Z",
        ),
    }
    assert "XYZ" not in answer.text and "1700000000" not in answer.text

    for change in (
        {"occurred_at": "2026-11-22"},
        {"occurred_at": "2026-11-22T10:00:00"},
        {"amount_at_stake": {"amount": "10.00", "currency": "eur"}},
        {"amount_at_stake": {"amount": "10.00", "currency": "DEM"}},
    ):
        answer = await running.http.post(
            "/v1/complaints",
            json=submission("web", **change),
            headers={"Authorization": f"Bearer {running.web_key}"},
        )
        assert _problem(answer, 422)["errors"][0]["field"] in {
            "occurred_at",
            "amount_at_stake.currency",
        }


async def test_unknown_currency_numeric_times_and_deep_records_on_kafka_are_dead_lettered(
    running: Running,
):
    currency = submission("phone")
    currency["amount_at_stake"] = {"amount": "10.00", "currency": "XYZ"}
    numeric = submission("phone", occurred_at=1_700_000_000)
    envelope = json.loads(
        new_event(type=EventType.SUBMITTED, source="phone/ivr", data=submission("phone")).to_bytes()
    )
    envelope["time"] = 1_700_000_000
    deep = b'{"specversion": "1.0", "data": ' + _nested(10_000).encode() + b"}"
    good = submission("phone")
    key = f"phone:strict-{good['external_id']}".encode()  # one key: one partition, in order
    records = [
        new_event(type=EventType.SUBMITTED, source="phone/ivr", data=currency).to_bytes(),
        new_event(type=EventType.SUBMITTED, source="phone/ivr", data=numeric).to_bytes(),
        json.dumps(envelope).encode(),
        deep,
        b"{nope",  # sent labelled as JSON
        new_event(type=EventType.SUBMITTED, source="phone/ivr", data=good).to_bytes(),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in records:
            labelled = [("content-type", b"application/json")] if value == b"{nope" else None
            await producer.send_and_wait(topics.SUBMITTED, value, key=key, headers=labelled)
    finally:
        await producer.stop()

    async def good_accepted():
        return await running.sql(
            "SELECT 1 FROM intake.complaints WHERE external_id = $1", good["external_id"]
        )

    await eventually(good_accepted, what="the valid record after the refused ones")

    async def dead_letters():
        found = [
            json.loads(r.value)["data"]
            for r in await read_topic(running.settings.kafka_bootstrap, topics.DEADLETTER)
            if r.key == key
        ]
        return found if len(found) >= 5 else None

    letters = await eventually(dead_letters, what="five dead letters")
    assert [base64.b64decode(letter["value_base64"]) for letter in letters] == records[:5]
    assert [letter["reason_code"] for letter in letters] == [
        "schema_violation",
        "schema_violation",
        "not_cloudevent",
        "too_deep",
        "not_json",
    ]
    assert letters[0]["reason"].startswith("data.amount_at_stake.currency: unknown ISO 4217")
    assert letters[1]["reason"].startswith("data.occurred_at: must be an RFC 3339 date-time")
    assert "time: must be an RFC 3339 date-time" in letters[2]["reason"]
    assert "XYZ" not in json.dumps([letter["reason"] for letter in letters])
    for sent in (currency, numeric):
        assert not await running.sql(
            "SELECT 1 FROM intake.complaints WHERE external_id = $1", sent["external_id"]
        )

    async def rejections():
        wanted = {topics.submission_key("phone", d["external_id"]) for d in (currency, numeric)}
        found = {
            r.key.decode(): json.loads(r.value)
            for r in await read_topic(running.settings.kafka_bootstrap, topics.EVENTS)
            if r.key and r.key.decode() in wanted
        }
        return found if len(found) == 2 else None

    rejected = await eventually(rejections, what="complaint.rejected for both senders")
    fields = {
        event["data"]["external_id"]: [r["field"] for r in event["data"]["reasons"]]
        for event in rejected.values()
    }
    assert fields == {
        currency["external_id"]: ["data.amount_at_stake.currency"],
        numeric["external_id"]: ["data.occurred_at"],
    }
