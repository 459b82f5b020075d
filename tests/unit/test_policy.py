"""The authority and clock policy: JSON round trip, validation naming fields, diff, questions."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.resolution.policy import (
    Policy,
    PolicyError,
    Remedy,
    RemedyType,
    Role,
    Usage,
    consistency_band,
    covers,
    default_policy,
    diff,
    format_duration,
    is_outlier,
    remaining,
    required_role,
    within_caps,
)
from shared.events import Money

POLICY = default_policy()


def document(**changes: Any) -> dict[str, Any]:
    """The default policy as a dict, with dotted paths replaced."""
    doc: dict[str, Any] = json.loads(POLICY.to_json())
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
    return doc


def refund(amount: str, currency: str = "EUR") -> Remedy:
    return Remedy(RemedyType.REFUND, Money(amount=amount, currency=currency))


def test_default_policy_round_trips_exactly() -> None:
    shown = POLICY.to_json()
    loaded = Policy.from_json(shown)
    assert loaded == POLICY
    assert loaded.to_json() == shown
    assert Policy.from_json(shown.encode()) == POLICY


def test_default_clock_table_matches_todays() -> None:
    table = POLICY.clocks.severity
    assert table["critical"].acknowledge_within == timedelta(hours=1)
    assert table["critical"].resolve_within == timedelta(hours=24)
    assert table["high"].resolve_within == timedelta(days=3)
    assert table["medium"].acknowledge_within == timedelta(hours=24)
    assert table["low"].resolve_within == timedelta(days=14)
    assert POLICY.clocks.warn_at == [Decimal("0.75"), Decimal("0.9")]


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        (90, 90),
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("4h", 14400),
        ("3d", 259200),
        ("PT1H30M", 5400),
        ("P1DT2H", 93600),
        ("P1W", 604800),
        ("PT45S", 45),
    ],
)
def test_durations_accept_seconds_iso_and_short_forms(written: object, seconds: int) -> None:
    policy = Policy.model_validate(document(clocks__approval_within=written))
    assert policy.clocks.approval_within == timedelta(seconds=seconds)
    assert Policy.from_json(policy.to_json()) == policy


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=90), "PT1M30S"),
        (timedelta(days=3), "P3D"),
        (timedelta(0), "PT0S"),
        (timedelta(days=1, seconds=1), "P1DT1S"),
    ],
)
def test_durations_are_written_as_iso(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"clocks__approval_within": "soon"}, "clocks.approval_within"),
        ({"clocks__approval_within": 0}, "clocks.approval_within"),
        ({"limits__agent__refund__EUR": "-1"}, "limits.agent.refund.EUR"),
        ({"limits__agent__refund__eur": "10"}, "limits.agent.refund.eur.[key]"),
        ({"limits__agent__bonus": "10"}, "limits.agent.bonus"),
        ({"limits__agent__discount_next_purchase": "101"}, "limits.agent.discount_next_purchase"),
        ({"clocks__warn_at": ["0.9", "0.75"]}, "clocks.warn_at"),
        ({"clocks__warn_at": ["1.5"]}, "clocks.warn_at.0"),
        ({"consistency__bands__EUR": ["100", "25"]}, "consistency.bands"),
        (
            {
                "business_hours": {
                    "support": {
                        "time_zone": "Mars/Olympus",
                        "hours": [{"day": "mon", "start": "09:00", "end": "17:00"}],
                    }
                }
            },
            "business_hours.support.time_zone",
        ),
        (
            {
                "business_hours": {
                    "support": {
                        "time_zone": "Europe/Amsterdam",
                        "hours": [{"day": "someday", "start": "09:00", "end": "17:00"}],
                    }
                }
            },
            "business_hours.support.hours.0.day",
        ),
        ({"surprise": True}, "surprise"),
    ],
)
def test_validation_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Policy.from_json(json.dumps(document(**changes)))
    assert field in [f for f, _ in caught.value.errors]
    assert field in str(caught.value)


def test_a_missing_role_is_named() -> None:
    doc = document()
    del doc["limits"]["manager"]
    with pytest.raises(PolicyError, match=r"limits: .*missing roles: manager"):
        Policy.from_json(json.dumps(doc))


def test_a_missing_severity_is_named() -> None:
    doc = document()
    del doc["clocks"]["severity"]["low"]
    with pytest.raises(PolicyError, match=r"clocks\.severity: .*low"):
        Policy.from_json(json.dumps(doc))


def test_diff_names_each_changed_leaf() -> None:
    new = Policy.model_validate(
        document(
            limits__agent__refund__EUR="60",
            clocks__approval_within=7200,
            business_hours={
                "support": {
                    "time_zone": "Europe/Amsterdam",
                    "hours": [{"day": "mon", "start": "09:00", "end": "17:00"}],
                }
            },
        )
    )
    lines = diff(POLICY, new)
    assert 'changed limits.agent.refund.EUR: "50" -> "60"' in lines
    assert 'changed clocks.approval_within: "PT4H" -> "PT2H"' in lines
    assert any(line.startswith("added business_hours.support = ") for line in lines)
    assert len(lines) == 3
    assert diff(POLICY, POLICY) == []
    assert any(line.startswith("removed business_hours.support") for line in diff(new, POLICY))


@pytest.mark.parametrize(
    ("remedy", "expected"),
    [
        (refund("50"), Role.AGENT),
        (refund("51"), Role.SENIOR_AGENT),
        (refund("10000"), Role.DIRECTOR),
        (refund("10001"), None),
        (refund("5", "JPY"), Role.DIRECTOR),
        (refund("9999999", "JPY"), Role.DIRECTOR),
        (Remedy(RemedyType.DISCOUNT_NEXT_PURCHASE, percent=Decimal("12")), Role.SENIOR_AGENT),
        (Remedy(RemedyType.RESERVE_AND_NOTIFY), Role.SENIOR_AGENT),
        (Remedy(RemedyType.APOLOGY_ONLY), Role.AGENT),
    ],
)
def test_required_role_is_the_lowest_covering(remedy: Remedy, expected: Role | None) -> None:
    assert required_role(POLICY, remedy) == expected


def test_required_role_counts_the_customers_window() -> None:
    used = Usage(customer_window={"EUR": Decimal("80")}, staff_today={})
    assert required_role(POLICY, refund("30"), used) == Role.SENIOR_AGENT
    assert within_caps(POLICY, Role.AGENT, refund("30"), used) == ["customer_cap"]
    today = Usage(customer_window={}, staff_today={"EUR": Decimal("290")})
    assert within_caps(POLICY, Role.AGENT, refund("30"), today) == ["daily_cap"]


def test_covers_never_converts_currencies() -> None:
    assert covers(POLICY, Role.AGENT, refund("50", "EUR"))
    assert not covers(POLICY, Role.AGENT, refund("50", "GBP"))  # GBP limit is 42
    assert not covers(POLICY, Role.MANAGER, refund("1", "CHF"))
    assert covers(POLICY, Role.DIRECTOR, refund("1000000", "CHF"))


def test_remaining_after_limits_and_caps() -> None:
    used = Usage(customer_window={"EUR": Decimal("70")}, staff_today={"EUR": Decimal("290")})
    left = remaining(POLICY, Role.AGENT, used)
    assert left.money[RemedyType.REFUND]["EUR"] == Decimal("10")  # daily cap 300 - 290
    assert left.money[RemedyType.REFUND]["USD"] == Decimal("55")
    assert left.discount_percent == Decimal("10")
    assert not left.reserve_and_notify and not left.any_other_currency
    shown = left.to_json()
    assert shown["refund"]["EUR"] == "10" and shown["apology_only"] is True
    assert remaining(POLICY, Role.DIRECTOR, Usage.none()).any_other_currency


@pytest.mark.parametrize(
    ("amount", "band"),
    [("10", "EUR:<=25"), ("25", "EUR:<=25"), ("26", "EUR:<=100"), ("5000", "EUR:>2000")],
)
def test_consistency_bands(amount: str, band: str) -> None:
    assert consistency_band(POLICY, Money(amount=amount, currency="EUR")) == band
    assert consistency_band(POLICY, None) == "none"
    assert consistency_band(POLICY, Money(amount="1", currency="JPY")) == "JPY:any"


def test_outliers_need_a_minimum_sample() -> None:
    assert is_outlier(POLICY, Decimal("5"), 20, Decimal("40"))
    assert is_outlier(POLICY, Decimal("121"), 20, Decimal("40"))
    assert not is_outlier(POLICY, Decimal("120"), 20, Decimal("40"))
    assert not is_outlier(POLICY, Decimal("5"), 19, Decimal("40"))


def test_remedy_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="amount is required"):
        Remedy(RemedyType.REFUND)
    with pytest.raises(ValueError, match="percent is required"):
        Remedy(RemedyType.DISCOUNT_NEXT_PURCHASE)
    with pytest.raises(ValueError, match="amount is not allowed"):
        Remedy(RemedyType.APOLOGY_ONLY, Money(amount="1", currency="EUR"))
    remedy = refund("80.00")
    assert Remedy.from_json(remedy.to_json()) == remedy
    assert remedy.to_json() == {"type": "refund", "amount": {"amount": "80.00", "currency": "EUR"}}
