"""Clients written against the contract, not our code: a phone system on librdkafka
(confluent-kafka) and a consumer on the official CloudEvents Python SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from cloudevents.v1 import kafka as ce_kafka_v1
from confluent_kafka import Consumer, KafkaError, Producer

from services.resolution.case import Kind
from shared import topics
from tests.conftest import Running
from tests.support import eventually, submission

STRUCTURED = b"application/cloudevents+json"


@dataclass(frozen=True)
class Seen:
    """A record as a librdkafka consumer received it."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    def json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.value)
        return doc

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def sdk_message(self) -> ce_kafka.KafkaMessage:
        return ce_kafka.KafkaMessage(headers=dict(self.headers), key=self.key, value=self.value)


@dataclass
class Tap:
    """A librdkafka consumer (its own group, from the earliest offset) reading the events and
    dead-letter topics on a thread, keeping every record."""

    bootstrap: str
    records: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    error: str | None = None

    def start(self) -> Tap:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"contract-sdk-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "client.id": "contract-sdk-consumer",
            }
        )
        consumer.subscribe([topics.EVENTS, topics.DEADLETTER])
        self._thread = threading.Thread(target=self._run, args=(consumer,), daemon=True)
        self._thread.start()
        return self

    def _run(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                message = consumer.poll(0.2)
                if message is None:
                    continue
                if message.error() is not None:
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        self.error = str(message.error())
                    continue
                seen = Seen(
                    topic=message.topic(),
                    key=message.key(),
                    value=message.value(),
                    headers=tuple(message.headers() or ()),
                )
                with self._lock:
                    self.records.append(seen)
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def snapshot(self) -> list[Seen]:
        with self._lock:
            return list(self.records)

    async def wait_for(
        self, done: Callable[[list[Seen]], bool], *, what: str, timeout_s: float = 60
    ) -> list[Seen]:
        """Every record so far, once `done` holds for them."""

        def probe() -> list[Seen] | None:
            records = self.snapshot()
            return records if done(records) else None

        return await eventually(probe, timeout_s=timeout_s, what=what)


@pytest.fixture(scope="module")
def tap(running: Running) -> Iterator[Tap]:
    tap = Tap(running.settings.kafka_bootstrap or "").start()
    try:
        yield tap
    finally:
        tap.stop()


async def produce_with_librdkafka(
    bootstrap: str,
    topic: str,
    *,
    value: bytes,
    key: str | bytes | None,
    headers: list[tuple[str, bytes]],
) -> None:
    """Produce one record the way a phone system on librdkafka would (acks from all)."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "client.id": "phone-system", "acks": "all"}
    )
    failures: list[Any] = []

    def delivered(err: Any, _message: Any) -> None:
        if err is not None:
            failures.append(err)

    producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
    remaining = await asyncio.to_thread(producer.flush, 20)
    assert remaining == 0, "librdkafka did not deliver the record"
    assert failures == []


def phone_event(data: dict[str, Any], source: str = "phone/ivr-eu-1") -> bytes:
    """A structured `complaint.submitted` CloudEvent, written by hand as a foreign system would."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": source,
            "type": "complaint.submitted",
            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


def routed_for(records: list[Seen], external_id: str) -> dict[str, Any] | None:
    for record in records:
        # the topic is shared with other tests, hostile records among them: read only what
        # announces itself as routed, as a consumer of the contract would
        if record.topic != topics.EVENTS or record.header("event-type") != b"complaint.routed":
            continue
        doc = record.json()
        if doc["type"] == "complaint.routed" and doc["data"]["external_id"] == external_id:
            return doc
    return None


def of_complaint(records: list[Seen], complaint_id: str) -> list[Seen]:
    return [r for r in records if r.topic == topics.EVENTS and r.key == complaint_id.encode()]


def types_of(records: list[Seen]) -> list[str]:
    return [r.json()["type"] for r in records]


EXPECTED_SOURCES = {
    "complaint.received": "complaints/intake",
    "complaint.routed": "complaints/intake",
    "complaint.rejected": "complaints/intake",
    "complaint.unassigned": "complaints/intake",
    "notification.sent": "complaints/notify",
    "notification.failed": "complaints/notify",
    **{kind.value: "complaints/resolution" for kind in Kind},
}


async def test_phone_system_on_librdkafka_is_accepted_routed_and_its_trace_continued(
    running: Running, tap: Tap
):
    data = submission("phone")
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    await produce_with_librdkafka(
        running.settings.kafka_bootstrap or "",
        topics.SUBMITTED,
        value=phone_event(data),
        key=topics.submission_key("phone", data["external_id"]),
        headers=[("content-type", STRUCTURED), ("traceparent", traceparent.encode())],
    )

    records = await tap.wait_for(
        lambda rs: routed_for(rs, data["external_id"]) is not None, what="complaint.routed"
    )
    routed = routed_for(records, data["external_id"])
    assert routed is not None
    complaint_id = routed["subject"]
    assert routed["data"]["channel"] == "phone"
    assert routed["data"]["team"]

    phone_key = await running.channel_key("phone")
    view = await eventually(
        lambda: _view(running, complaint_id, phone_key), what="the complaint's view"
    )
    assert view["external_id"] == data["external_id"]
    assert view["channel"] == "phone"
    assert view["status"] != "received"  # resolution has the routing

    records = await tap.wait_for(
        lambda rs: "notification.sent" in types_of(of_complaint(rs, complaint_id)),
        what="the receipt's notification.sent",
    )
    published = of_complaint(records, complaint_id)
    assert {"complaint.received", "complaint.routed", "notification.sent"} <= set(
        types_of(published)
    )
    for record in published:
        header = record.header("traceparent")
        assert header is not None, f"{record.json()['type']} carries no traceparent"
        assert header.decode().split("-")[1] == trace_id, record.json()["type"]


async def _view(running: Running, complaint_id: str, key: str) -> dict[str, Any] | None:
    answer = await running.http.get(
        f"/v1/complaints/{complaint_id}", headers={"Authorization": f"Bearer {key}"}
    )
    if answer.status_code in (401, 404):
        return None  # resolution learns keys and complaints from events: a moment later
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


async def test_every_published_event_and_dead_letter_parses_with_the_cloudevents_sdk(
    running: Running, tap: Tap
):
    bootstrap = running.settings.kafka_bootstrap or ""
    # a record that is not JSON: dead-lettered only
    bad_key = f"phone:garbled-{uuid.uuid4().hex[:8]}"
    await produce_with_librdkafka(
        bootstrap,
        topics.SUBMITTED,
        value=b"\x00not json at all",
        key=bad_key,
        headers=[("content-type", STRUCTURED)],
    )
    # a readable submission with invalid data: dead-lettered and `complaint.rejected`
    invalid = submission("phone")
    del invalid["description"]
    invalid_key = topics.submission_key("phone", invalid["external_id"])
    await produce_with_librdkafka(
        bootstrap,
        topics.SUBMITTED,
        value=phone_event(invalid),
        key=invalid_key,
        headers=[("content-type", STRUCTURED)],
    )
    # good complaints over both doors
    web_key = await running.channel_key("web")
    ids = []
    for _ in range(2):
        answer = await running.http.post(
            "/v1/complaints",
            json=submission("web"),
            headers={"Authorization": f"Bearer {web_key}"},
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["complaint_id"])
    phone = submission("phone")
    await produce_with_librdkafka(
        bootstrap,
        topics.SUBMITTED,
        value=phone_event(phone),
        key=topics.submission_key("phone", phone["external_id"]),
        headers=[("content-type", STRUCTURED)],
    )
    routed = await tap.wait_for(
        lambda rs: routed_for(rs, phone["external_id"]) is not None, what="the phone complaint"
    )
    phone_route = routed_for(routed, phone["external_id"])
    assert phone_route is not None
    ids.append(phone_route["subject"])

    def complete(records: list[Seen]) -> bool:
        letters = [r for r in records if r.topic == topics.DEADLETTER]
        lettered = {r.key for r in letters}
        rejected = [
            r for r in records if r.topic == topics.EVENTS and r.key == invalid_key.encode()
        ]
        return (
            {bad_key.encode(), invalid_key.encode()} <= lettered
            and bool(rejected)
            and all("notification.sent" in types_of(of_complaint(records, c)) for c in ids)
        )

    records = await tap.wait_for(complete, what="events and dead letters of the complaints")
    assert tap.error is None, tap.error
    ours = [r for c in ids for r in of_complaint(records, c)]
    ours += [r for r in records if r.key in (bad_key.encode(), invalid_key.encode())]
    assert {"complaint.received", "complaint.routed", "notification.sent"} <= set(types_of(ours))
    assert "complaint.rejected" in types_of(ours)
    assert "record.deadlettered" in types_of(ours)

    for record in ours:
        doc = record.json()
        assert not [k for k, _ in record.headers if k.lower().startswith("ce_")], (
            f"{doc['type']} carries a ce_ header: the SDK would read it as binary mode"
        )
        assert record.header("content-type") == STRUCTURED
        # the SDK's converter that tells the content mode from the headers, and the
        # structured-mode one: both must give the event the record holds
        for parse in (ce_kafka.from_kafka_event, ce_kafka.from_structured_event):
            event = parse(record.sdk_message())
            assert event.get_specversion() == "1.0"
            assert event.get_type() == doc["type"]
            assert event.get_id() == doc["id"]
            assert event.get_source() == doc["source"]
            assert event.get_subject() == doc.get("subject")
            assert event.get_data() == doc["data"]
            assert event.get_time() is not None
        # the SDK's earlier API (`cloudevents.kafka` in 1.x), which many consumers still use
        legacy = ce_kafka_v1.from_structured(
            ce_kafka_v1.KafkaMessage(dict(record.headers), record.key, record.value)
        )
        assert (legacy["type"], legacy["id"], legacy["source"]) == (
            doc["type"],
            doc["id"],
            doc["source"],
        )
        assert legacy.get("subject") == doc.get("subject")
        assert legacy.data == doc["data"]
        if doc["type"] == "record.deadlettered":
            # named after the refusing service, like its other events; the group in the data
            assert doc["source"] == "complaints/" + doc["data"]["consumer"].split("-")[1]
            assert doc.get("subject") is None
            assert record.topic == topics.DEADLETTER
        else:
            assert doc["source"] == EXPECTED_SOURCES[doc["type"]], doc["type"]
            assert record.topic == topics.EVENTS
        if doc["type"] == "complaint.rejected":
            assert doc.get("subject") is None
            assert doc["data"]["reason_code"] == "schema_violation"
        elif doc["type"] != "record.deadlettered":
            assert record.key is not None
            assert doc["subject"] == record.key.decode()  # keyed by the complaint it is about

    letters = {r.key: r.json()["data"] for r in ours if r.topic == topics.DEADLETTER}
    garbled = letters[bad_key.encode()]
    assert garbled["reason_code"] == "not_json"
    assert garbled["topic"] == topics.SUBMITTED
    assert base64.b64decode(garbled["value_base64"]) == b"\x00not json at all"
    assert letters[invalid_key.encode()]["reason_code"] == "schema_violation"


async def test_a_submission_written_with_the_cloudevents_sdk_is_accepted(
    running: Running, tap: Tap
):
    data = submission("phone")
    event = SdkEvent(
        attributes={
            "type": "complaint.submitted",
            "source": "phone/sdk-client",
            "datacontenttype": "application/json",
        },
        data=data,
    )
    message = ce_kafka.to_structured_event(
        event, key_mapper=lambda _: topics.submission_key("phone", data["external_id"])
    )
    assert message.headers == {"content-type": STRUCTURED}
    await produce_with_librdkafka(
        running.settings.kafka_bootstrap or "",
        topics.SUBMITTED,
        value=message.value,
        key=message.key,
        headers=list(message.headers.items()),
    )
    started = time.monotonic()
    records = await tap.wait_for(
        lambda rs: routed_for(rs, data["external_id"]) is not None, what="complaint.routed"
    )
    routed = routed_for(records, data["external_id"])
    assert routed is not None, f"not routed after {time.monotonic() - started:.1f}s"
    assert routed["data"]["channel"] == "phone"
    received = [
        r.json()
        for r in of_complaint(records, routed["subject"])
        if r.json()["type"] == "complaint.received"
    ]
    assert len(received) == 1
    assert received[0]["data"]["external_id"] == data["external_id"]
    assert received[0]["data"]["customer"]["email"] == data["customer"]["email"]
