"""Every way a submitted record can be refused gets its own reason code."""

from __future__ import annotations

import json

import pytest

from services.intake.handlers import FOLLOWED, MAX_RECORD_BYTES, parse_submitted
from shared import topics
from shared.events import EventType, new_event
from shared.kafka import Record, Rejected
from tests.support import submission


def _event(**data_change) -> bytes:
    data = submission("phone")
    data.update(data_change)
    return new_event(type=EventType.SUBMITTED, source="phone/ivr", data=data).to_bytes()


@pytest.mark.parametrize(
    ("value", "code"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\xff\xfe not json", "not_json"),
        (b"[1, 2]", "not_cloudevent"),
        (b'{"specversion": "1.0", "data": {}}', "not_cloudevent"),
        (
            json.dumps(
                {"specversion": "1.0", "id": "1", "source": "s", "type": "complaint.closed"}
            ).encode(),
            "unknown_type",
        ),
        (_event(description=""), "schema_violation"),
        (_event(channel="fax"), "unknown_channel"),
        (b'{"pad": "' + b"x" * MAX_RECORD_BYTES + b'"}', "oversized"),
    ],
)
def test_rejections_carry_a_reason_code(value, code):
    with pytest.raises(Rejected) as info:
        parse_submitted(value)
    assert info.value.code == code
    assert info.value.reason


def test_a_good_record_parses_with_its_source():
    data, source = parse_submitted(_event())
    assert data.channel.value == "phone"
    assert source == "phone/ivr"


@pytest.mark.parametrize("channel", [["web"], {"a": 1}, 7, None, True])
def test_odd_channel_values_are_rejected_not_crashed(channel):
    data = submission("phone")
    data["channel"] = channel
    value = new_event(type=EventType.SUBMITTED, source="fuzz", data=data).to_bytes()
    with pytest.raises(Rejected) as info:
        parse_submitted(value)
    assert info.value.code == "unknown_channel"
    assert info.value.also == []  # no readable channel: nobody to send complaint.rejected to


def test_a_readable_sender_gets_complaint_rejected():
    data = submission("phone")
    del data["description"]
    value = new_event(type=EventType.SUBMITTED, source="phone/ivr", data=data).to_bytes()
    with pytest.raises(Rejected) as info:
        parse_submitted(value)
    [message] = info.value.also
    assert message.key == f"phone:{data['external_id']}"
    assert message.event.type == "complaint.rejected"


def _record(headers: tuple[tuple[str, bytes], ...]) -> Record:
    return Record(topic="t", partition=0, offset=0, key=None, value=b"{}", headers=headers)


@pytest.mark.parametrize(
    ("headers", "wanted"),
    [
        ((("event-type", b"complaint.resolved"),), True),
        ((("event-type", b"complaint.routed"),), False),
        ((("ce_type", b"complaint.routed"),), False),  # the deprecated name, still read
        ((("content-type", b"application/cloudevents+json"),), True),  # unannounced: parse it
        ((), True),
    ],
)
def test_a_consumer_skips_only_records_announced_as_other_types(headers, wanted):
    record = _record(headers)
    assert record.may_be(FOLLOWED) is wanted
    assert record.may_be(None) is True


@pytest.mark.parametrize(
    ("headers", "wanted"),
    [
        ((("event-type", b"complaint.case_opened"),), False),  # ignored: skipped unread
        ((("event-type", b"complaint.routed"),), True),
        ((), True),  # unannounced: parse it
    ],
)
def test_a_consumer_skips_records_announced_as_types_it_ignores(headers, wanted):
    assert _record(headers).may_be(None, skip={"complaint.case_opened"}) is wanted


def test_the_key_partitioner_agrees_with_kafkas_default_partitioner():
    from aiokafka.partitioner import DefaultPartitioner

    from shared.kafka import KeyPartitioner

    ours, theirs = KeyPartitioner(remember=3), DefaultPartitioner()
    partitions = list(range(8))
    keys = [f"complaint-{n}".encode() for n in range(50)] * 2  # repeats hit the memory
    assert [ours(k, partitions, partitions) for k in keys] == [
        theirs(k, partitions, partitions) for k in keys
    ]
    assert ours(None, partitions, [3]) == 3


def test_intake_follows_exactly_the_case_feeds_types() -> None:
    assert set(FOLLOWED) == topics.CASE_FEED
