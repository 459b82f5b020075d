"""The envelope and the submission model: what is accepted, and how refusals are worded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events import CloudEvent, EventType, Money, SubmittedData, new_event, parse_rfc3339
from shared.web import field_errors
from tests.support import submission


def test_envelope_round_trips_in_structured_json():
    event = new_event(
        type=EventType.RECEIVED,
        source="complaints/intake",
        subject="c-1",
        data={"complaint_id": "c-1"},
    )
    doc = json.loads(event.to_bytes())
    assert doc["specversion"] == "1.0"
    assert doc["type"] == "complaint.received"
    assert doc["subject"] == "c-1"
    assert doc["datacontenttype"] == "application/json"
    assert doc["time"].endswith("Z")
    assert CloudEvent.model_validate(doc) == event


def test_envelope_requires_id_source_type_and_version():
    with pytest.raises(ValidationError) as info:
        CloudEvent.model_validate({"specversion": "0.3", "data": {}})
    assert {e["loc"][0] for e in info.value.errors()} == {"specversion", "id", "source", "type"}


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"external_id": ""}, "external_id", "string_too_short"),
        ({"external_id": "x" * 129}, "external_id", "string_too_long"),
        ({"channel": "fax"}, "channel", "enum"),
        ({"description": ""}, "description", "string_too_short"),
        ({"description": "   "}, "description", "value_error"),
        ({"description": "x" * 10_001}, "description", "string_too_long"),
        ({"category": "weather"}, "category", "enum"),
        (
            {"amount_at_stake": {"amount": 49.9, "currency": "EUR"}},
            "amount_at_stake.amount",
            "value_error",
        ),
        (
            {"amount_at_stake": {"amount": "-1", "currency": "EUR"}},
            "amount_at_stake.amount",
            "string_pattern_mismatch",
        ),
        (
            {"amount_at_stake": {"amount": "1.00", "currency": "eur"}},
            "amount_at_stake.currency",
            "iso4217",
        ),
        ({"customer": {"id": "c1"}}, "customer", "value_error"),
        (
            {"customer": {"id": "c1", "email": "not-an-address"}},
            "customer.email",
            "string_pattern_mismatch",
        ),
        ({"occurred_at": "2026-11-22T10:00:00"}, "occurred_at", "rfc3339"),
        ({"staff_involved": ["s"] * 21}, "staff_involved", "too_long"),
    ],
)
def test_each_rule_names_its_field(change, field, rule):
    with pytest.raises(ValidationError) as info:
        SubmittedData.model_validate(submission("web", **change))
    errors = field_errors(info.value.errors())
    assert [(e["field"], e["rule"]) for e in errors] == [(field, rule)]


def test_errors_never_echo_the_value():
    data = submission("web", customer={"id": "c1", "email": "secret-person@@example"})
    with pytest.raises(ValidationError) as info:
        SubmittedData.model_validate(data)
    assert "secret-person" not in json.dumps(field_errors(info.value.errors()))


def test_a_valid_submission_keeps_money_as_a_decimal_string():
    data = SubmittedData.model_validate(submission("web"))
    assert data.amount_at_stake == Money(amount="89.00", currency="EUR")
    assert str(data.amount_at_stake.decimal()) == "89.00"
    assert data.customer.language() == "nl"


@pytest.mark.parametrize("field", ["external_id", "description", "desired_outcome", "order_id"])
def test_nul_characters_are_refused_with_the_field_named(field):
    with pytest.raises(ValidationError) as info:
        SubmittedData.model_validate(submission("web", **{field: "a\x00b"}))
    assert [e["field"] for e in field_errors(info.value.errors())] == [field]


def test_nul_in_the_customer_name_or_envelope_is_refused():
    with pytest.raises(ValidationError):
        SubmittedData.model_validate(
            submission("web", customer={"id": "c", "email": "a@b.co", "name": "x\x00"})
        )
    with pytest.raises(ValidationError):
        CloudEvent.model_validate({"specversion": "1.0", "id": "1", "source": "s\x00", "type": "t"})


def test_nul_in_the_email_is_refused():
    with pytest.raises(ValidationError) as info:
        SubmittedData.model_validate(submission("web", customer={"id": "c", "email": "a\x00@b.co"}))
    assert [e["field"] for e in field_errors(info.value.errors())] == ["customer.email"]


@settings(max_examples=300, deadline=None)
@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    digits=st.integers(min_value=0, max_value=9),
    offset_minutes=st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    zulu=st.booleans(),
    lower=st.booleans(),
)
def test_rfc3339_times_read_as_written(
    moment: datetime, digits: int, offset_minutes: int, zulu: bool, lower: bool
) -> None:
    """Every RFC 3339 form (any fraction length, `Z` or an offset, either letter case) names
    the time it writes: the fast path and the part-by-part one agree."""
    fraction = f"{moment.microsecond:06d}{'7' * max(0, digits - 6)}"[:digits]
    offset = timedelta(minutes=offset_minutes)
    sign, size = ("-", -offset) if offset < timedelta(0) else ("+", offset)
    zone = "Z" if zulu else f"{sign}{size.seconds // 3600:02d}:{size.seconds // 60 % 60:02d}"
    day = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    text = f"{day}T{moment:%H:%M:%S}{'.' + fraction if digits else ''}{zone}"
    if lower:
        text = text.replace("T", "t").replace("Z", "z")
    expected = moment.replace(
        microsecond=int(fraction[:6].ljust(6, "0")) if digits else 0,
        tzinfo=UTC if zulu else timezone(offset),
    )
    parsed = parse_rfc3339(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30T10:00:00Z",
        "2026-11-22T10:00:60Z",
        "2026-11-22T10:00:00+24:00",
        "2026-11-22T10:00:00+05:60",
        "2026-11-22T10:00:00",
        "2026-11-22 10:00:00Z",
        "2026-11-22T25:00:00Z",
        "2026-11-22T24:00:00Z",
        "2026-11-22T10:60:00Z",
    ],
)
def test_rfc3339_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)
