"""Intake's routing and severity table, and the deadline table (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.intake.domain import DEFAULT_TEAM, TEAM_BY_CATEGORY, route
from shared import sla
from shared.events import Category, Severity, SubmittedData
from tests.support import submission

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def _route(**change):
    return route(SubmittedData.model_validate(submission("web", **change)), NOW)


@pytest.mark.parametrize(
    ("category", "team"),
    [
        ("product", "product-quality"),
        ("warranty", "product-quality"),
        ("price_quality", "product-quality"),
        ("service", "customer-care"),
        ("staff_conduct", "conduct-review"),
        ("facilities", "store-operations"),
        ("stock", "store-operations"),
        ("advertising", "marketing"),
        ("website_phone", "digital"),
        ("other", DEFAULT_TEAM),
    ],
)
def test_category_decides_the_team(category, team):
    assert _route(category=category, amount_at_stake=None).team == team


def test_every_category_has_a_team():
    assert set(TEAM_BY_CATEGORY) == set(Category)


def test_missing_category_is_routed_to_the_default_team_with_a_reason():
    routing = _route(category=None)
    assert routing.category == Category.OTHER
    assert routing.team == DEFAULT_TEAM
    assert routing.category_reason


@pytest.mark.parametrize(
    ("category", "amount", "staff", "expected"),
    [
        ("facilities", None, [], Severity.LOW),
        ("product", None, [], Severity.MEDIUM),
        ("product", "249.99", [], Severity.MEDIUM),
        ("product", "250.00", [], Severity.HIGH),
        ("product", "1000", [], Severity.CRITICAL),
        ("facilities", "1000", [], Severity.HIGH),
        ("staff_conduct", None, [], Severity.HIGH),
        ("facilities", None, ["emp-1"], Severity.HIGH),
    ],
)
def test_severity_from_category_amount_and_named_staff(category, amount, staff, expected):
    money = {"amount": amount, "currency": "EUR"} if amount else None
    routing = _route(category=category, amount_at_stake=money, staff_involved=staff)
    assert routing.severity == expected
    assert routing.severity_reasons[0].startswith(f"category {category}")


@pytest.mark.parametrize(
    ("severity", "ack", "resolve"),
    [
        (Severity.CRITICAL, timedelta(hours=1), timedelta(hours=24)),
        (Severity.HIGH, timedelta(hours=4), timedelta(days=3)),
        (Severity.MEDIUM, timedelta(hours=24), timedelta(days=7)),
        (Severity.LOW, timedelta(hours=48), timedelta(days=14)),
    ],
)
def test_deadline_table(severity, ack, resolve):
    deadlines = sla.deadlines(severity, NOW)
    assert deadlines.acknowledge_by == NOW + ack
    assert deadlines.resolve_by == NOW + resolve


def test_routed_deadlines_follow_severity():
    routing = _route(category="product", amount_at_stake=None)
    assert routing.deadlines == sla.deadlines(Severity.MEDIUM, NOW)
    assert routing.language == "nl"
