"""Currencies against the ISO 4217 list, and times as RFC 3339 strings only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from shared.events import (
    CloudEvent,
    EventType,
    Money,
    ReceivedData,
    SubmittedData,
    currency_codes,
    new_event,
)
from shared.web import field_errors
from tests.support import submission


def _currency_errors(currency: object) -> list[dict[str, str]]:
    data = submission("web", amount_at_stake={"amount": "10.00", "currency": currency})
    with pytest.raises(ValidationError) as info:
        SubmittedData.model_validate(data)
    return field_errors(info.value.errors())


@pytest.mark.parametrize("code", ["EUR", "USD", "GBP", "TRY", "JPY", "CHF", "BHD", "XAU"])
def test_current_iso_4217_codes_are_accepted(code):
    assert Money(amount="1", currency=code).currency == code


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("XYZ", "unknown ISO 4217 currency code"),  # never assigned
        ("DEM", "unknown ISO 4217 currency code"),  # historic: the Deutsche Mark
        ("HRK", "unknown ISO 4217 currency code"),  # historic: the kuna, replaced by EUR in 2023
        ("XXX", "unknown ISO 4217 currency code"),  # "no currency": nothing at stake
        ("XTS", "unknown ISO 4217 currency code"),  # reserved for testing
        ("EURO", "unknown ISO 4217 currency code"),
        ("", "unknown ISO 4217 currency code"),
        ("eur", "unknown ISO 4217 currency code (codes are upper-case, e.g. EUR)"),
        ("Eur", "unknown ISO 4217 currency code (codes are upper-case, e.g. EUR)"),
    ],
)
def test_other_currency_codes_are_refused_naming_the_field(code, message):
    errors = _currency_errors(code)
    assert errors == [{"field": "amount_at_stake.currency", "rule": "iso4217", "message": message}]


def test_a_refused_currency_is_never_echoed():
    errors = _currency_errors("QQQ")
    assert "QQQ" not in json.dumps(errors)


def test_a_number_for_currency_is_a_type_error():
    assert [e["rule"] for e in _currency_errors(978)] == ["string_type"]


def test_the_code_list_is_pycountrys_and_read_once():
    codes = currency_codes()
    assert currency_codes() is codes
    assert {"EUR", "USD", "TRY"} <= codes and not {"DEM", "XXX"} & codes
    assert len(codes) > 150


def test_the_remedy_amount_of_a_resolved_case_is_checked_the_same_way():
    with pytest.raises(ValidationError):
        Money.model_validate({"amount": "80.00", "currency": "XYZ"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T10:00:00Z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T10:00:00+00:00", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22T10:00:00-00:00", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        ("2026-11-22t10:00:00z", datetime(2026, 11, 22, 10, tzinfo=UTC)),
        (
            "2026-11-22T10:00:00.5+05:30",
            datetime(2026, 11, 22, 10, 0, 0, 500_000, timezone(timedelta(hours=5, minutes=30))),
        ),
        (
            "2026-11-22T10:00:00.123456789-03:00",  # digits past microseconds are cut
            datetime(2026, 11, 22, 10, 0, 0, 123_456, timezone(timedelta(hours=-3))),
        ),
        ("2024-02-29T23:59:59Z", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_rfc_3339_times_are_accepted(text, expected):
    occurred = SubmittedData.model_validate(submission("web", occurred_at=text)).occurred_at
    assert occurred == expected and occurred.utcoffset() == expected.utcoffset()
    event = CloudEvent.model_validate({"id": "1", "source": "s", "type": "t", "time": text})
    assert event.time == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1700000000, "a string, not a number"),
        (1700000000.5, "a string, not a number"),
        ("1700000000", "with a time zone offset"),
        (True, "a string, not a number"),
        ("2026-11-22", "with a time zone offset"),  # a date alone
        ("2026-11-22T10:00:00", "with a time zone offset"),  # no offset
        ("2026-11-22T10:00Z", "with a time zone offset"),  # no seconds
        ("2026-11-22 10:00:00Z", "with a time zone offset"),  # space: not in the grammar
        ("2026-11-22T10:00:00+0100", "with a time zone offset"),  # offset without colon
        ("20261122T100000Z", "with a time zone offset"),  # ISO 8601 basic format
        ("2026-W47-7T10:00:00Z", "with a time zone offset"),
        ("2026-11-22T10:00:00Z ", "with a time zone offset"),
        ("２０２６-11-22T10:00:00Z", "with a time zone offset"),  # non-ASCII digits
        ("2026-02-30T10:00:00Z", "is not a valid date and time"),
        ("2026-11-22T25:00:00Z", "is not a valid date and time"),
        ("2026-11-22T23:59:60Z", "leap seconds"),
        ("2026-11-22T10:00:00+24:00", "offset is out of range"),
        ({"year": 2026}, "a string, not a number"),
    ],
)
def test_other_times_are_refused_naming_the_field(value, message):
    with pytest.raises(ValidationError) as info:
        SubmittedData.model_validate(submission("web", occurred_at=value))
    [error] = field_errors(info.value.errors())
    assert (error["field"], error["rule"]) == ("occurred_at", "rfc3339")
    assert message in error["message"]
    with pytest.raises(ValidationError) as envelope:
        CloudEvent.model_validate_json(
            json.dumps({"id": "1", "source": "s", "type": "t", "time": value})
        )
    assert [(e["loc"], e["type"]) for e in envelope.value.errors()] == [(("time",), "rfc3339")]


def test_python_code_may_still_pass_aware_datetimes_but_not_naive_ones():
    now = datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert SubmittedData.model_validate(submission("web", occurred_at=now)).occurred_at == now
    with pytest.raises(ValidationError):
        SubmittedData.model_validate(submission("web", occurred_at=now.replace(tzinfo=None)))


def test_events_built_here_read_back_from_kafka_and_the_database():
    data = submission("web", occurred_at="2026-11-22T09:30:00+01:00")
    event = new_event(
        type=EventType.RECEIVED,
        source="complaints/intake",
        subject="c-1",
        data={**data, "complaint_id": "c-1", "received_at": datetime.now(UTC)},
    )
    raw = event.to_bytes()
    back = CloudEvent.model_validate_json(raw)
    assert back.time == event.time
    received = ReceivedData.model_validate(back.data)
    assert received.occurred_at == datetime(2026, 11, 22, 8, 30, tzinfo=UTC)
    # a submission as stored (model_dump in JSON mode) validates again
    stored = SubmittedData.model_validate(data).model_dump(mode="json")
    assert SubmittedData.model_validate(stored).occurred_at == received.occurred_at
