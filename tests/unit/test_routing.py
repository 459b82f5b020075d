"""Intake's decisions as tables: classification, severity, flags, routing and assignment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from services.intake.domain import (
    DEFAULT_ROUTES,
    DEFAULT_TEAM,
    History,
    RoutingRule,
    StaffLoad,
    choose_assignee,
    classify,
    decide,
    default_rules,
    flags,
    pick_team,
    score_severity,
    signals,
)
from services.intake.handlers import remedy_value
from shared import sla
from shared.events import Category, Remedy, Severity, SubmittedData
from tests.support import submission

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
ROUTES = [RoutingRule(rule_id=i, category=c, team=t) for i, (c, t) in enumerate(DEFAULT_ROUTES, 1)]


def _data(description: str = "x", *, locale: str = "en", **change) -> SubmittedData:
    doc = submission("web", description=description, category=None, amount_at_stake=None)
    doc["customer"]["locale"] = locale
    doc.update(change)
    return SubmittedData.model_validate(doc)


@pytest.mark.parametrize(
    ("locale", "text", "category"),
    [
        ("en", "The kettle stopped working after two days", Category.PRODUCT),
        ("en", "The cashier was rude and shouted at me", Category.STAFF_CONDUCT),
        ("en", "They refused my warranty repair", Category.WARRANTY),
        ("en", "The advertised promotion was misleading", Category.ADVERTISING),
        ("en", "Your website checkout fails at the payment page", Category.WEBSITE_PHONE),
        ("en", "The item has been out of stock for weeks", Category.STOCK),
        ("en", "My delivery never arrived", Category.SERVICE),
        ("tr", "Aldığım buzdolabı soğutmuyor, bozuk geldi", Category.PRODUCT),
        ("tr", "Kasadaki personel bana çok kaba davrandı ve bağırdı", Category.STAFF_CONDUCT),
        ("tr", "Kampanyadaki ürün stokta yok", Category.STOCK),
        ("tr", "GARANTİ kapsamında tamir etmediler", Category.WARRANTY),
        ("nl", "De waterkoker is kapot en werkt niet", Category.PRODUCT),
        ("nl", "De medewerker was onbeleefd", Category.STAFF_CONDUCT),
        ("nl", "Mijn bestelling is te laat bezorgd", Category.SERVICE),
        ("nl", "De folder beloofde korting, misleidend", Category.ADVERTISING),
    ],
)
def test_classification_per_language(locale, text, category):
    result = classify(_data(text, locale=locale), default_rules())
    assert result.category == category
    assert result.reason.startswith(f"{locale} rules matched")


def test_classification_falls_back_to_other_languages_then_other():
    result = classify(_data("The kettle is broken", locale="tr"), default_rules())
    assert (result.category, result.reason.split()[0]) == (Category.PRODUCT, "en")
    unknown = classify(_data("Lorem ipsum dolor sit amet"), default_rules())
    assert unknown.category == Category.OTHER
    assert unknown.reason.startswith("no rule matched")


def test_the_channels_category_wins():
    result = classify(_data("broken", category="stock"), default_rules())
    assert (result.category, result.reason) == (Category.STOCK, "given by the channel")


def _score(text="x", *, category=Category.STOCK, history=None, **change):
    data = _data(text, **change)
    return score_severity(category, data, history or History(), signals(data, default_rules()))


@pytest.mark.parametrize(
    ("change", "history", "category", "expected", "score"),
    [
        ({}, History(), Category.STOCK, Severity.LOW, 0),
        ({}, History(), Category.PRODUCT, Severity.MEDIUM, 2),
        (
            {"amount_at_stake": {"amount": "250", "currency": "EUR"}},
            History(),
            Category.PRODUCT,
            Severity.MEDIUM,
            3,
        ),
        (
            {"amount_at_stake": {"amount": "1000", "currency": "EUR"}},
            History(),
            Category.PRODUCT,
            Severity.HIGH,
            4,
        ),
        (
            {"amount_at_stake": {"amount": "1000", "currency": "TRY"}},
            History(),
            Category.PRODUCT,
            Severity.MEDIUM,
            2,
        ),
        (
            {"amount_at_stake": {"amount": "32000", "currency": "TRY"}},
            History(),
            Category.PRODUCT,
            Severity.HIGH,
            4,
        ),
        (
            {"amount_at_stake": {"amount": "99999", "currency": "JPY"}},  # no JPY threshold
            History(),
            Category.PRODUCT,
            Severity.MEDIUM,
            2,
        ),
        ({}, History(complaints_30d=1), Category.PRODUCT, Severity.MEDIUM, 3),
        ({}, History(complaints_30d=5), Category.PRODUCT, Severity.HIGH, 4),
        ({"description": "the charger caught fire"}, History(), Category.PRODUCT, Severity.HIGH, 6),
        (
            {"description": "my lawyer will take you to court"},
            History(),
            Category.SERVICE,
            Severity.HIGH,
            4,
        ),
        ({"description": "I use a wheelchair"}, History(), Category.FACILITIES, Severity.MEDIUM, 3),
        (
            {"description": "fire, and I am disabled; my lawyer knows"},
            History(),
            Category.PRODUCT,
            Severity.CRITICAL,
            10,
        ),
        ({"channel": "phone"}, History(), Category.PRODUCT, Severity.MEDIUM, 3),
        ({"staff_involved": ["emp-1"]}, History(), Category.STOCK, Severity.HIGH, 0),
    ],
)
def test_severity_points(change, history, category, expected, score):
    text = change.pop("description", "x")
    result = _score(text, category=category, history=history, **change)
    assert (result.severity, result.score) == (expected, score)
    if change.get("staff_involved"):
        assert result.reasons[-2:] == [
            f"score {score} → low",
            "raised to high: names staff, both sides must be heard",
        ]
    else:
        assert result.reasons[-1] == f"score {score} → {expected.value}"


def test_unknown_currency_is_said_not_guessed():
    result = _score(
        category=Category.PRODUCT, amount_at_stake={"amount": "99999", "currency": "JPY"}
    )
    assert result.reasons == [
        "+2 category product",
        "+0 amount at stake: no threshold is configured for JPY",
        "score 2 → medium",
    ]
    assert result.score == 2


@pytest.mark.parametrize(
    ("text", "locale", "history", "amount", "codes"),
    [
        ("x", "en", History(complaints_30d=3), None, ["frequent_complaints"]),
        ("x", "en", History(complaints_30d=2), None, []),
        ("x", "en", History(high_claims_90d=3), "500", ["repeated_high_claims"]),
        ("x", "en", History(high_claims_90d=3), "20", []),
        ("x", "en", History(remedies_above_spend_365d=2), None, ["remedies_above_spend"]),
        ("x", "en", History(remedies_above_spend_365d=1), None, []),
        ("you useless idiot", "en", History(), None, ["abusive_language"]),
        ("aptal mısınız", "tr", History(), None, ["abusive_language"]),
        ("stelletje idioten", "nl", History(), None, ["abusive_language"]),
    ],
)
def test_flags_for_a_senior_reviewer(text, locale, history, amount, codes):
    money = {"amount": amount, "currency": "EUR"} if amount else None
    data = _data(text, locale=locale, amount_at_stake=money)
    assert [f.code for f in flags(data, history, signals(data, default_rules()))] == codes


def test_a_flagged_customer_is_still_routed():
    decision = decide(
        _data("you idiots broke my kettle"),
        history=History(complaints_30d=9),
        routing_rules=ROUTES,
        received_at=NOW,
    )
    assert decision.team == "product-quality"
    assert {f.code for f in decision.flags} == {"frequent_complaints", "abusive_language"}


@pytest.mark.parametrize(
    ("facts", "team"),
    [
        ({"category": "product", "channel": "web"}, "product-quality"),
        ({"category": "product", "channel": "phone", "language": "tr"}, "turkish-desk"),
        ({"category": "product", "channel": "phone", "language": "tr", "tier": "vip"}, "vip-care"),
        ({"category": "weather"}, DEFAULT_TEAM),
    ],
)
def test_routing_rules_most_urgent_then_most_specific(facts, team):
    rules = [
        *ROUTES,
        RoutingRule(rule_id=50, team="turkish-desk", language="tr", channel="phone"),
        RoutingRule(rule_id=51, team="vip-care", tier="vip", priority=10),
    ]
    assert pick_team(rules, facts)[0] == team


def _member(staff_id, load=0, capacity=10, languages=("en",), available=True, minutes_ago=None):
    last = NOW - timedelta(minutes=minutes_ago) if minutes_ago is not None else None
    return StaffLoad(staff_id, tuple(languages), capacity, load, available, last)


@pytest.mark.parametrize(
    ("staff", "kwargs", "expected"),
    [
        # most spare capacity wins
        ([_member("a", load=6), _member("b", load=2)], {}, "b"),
        # capacity full → next person
        ([_member("a", load=9), _member("b", load=8, capacity=9)], {"weight": 2}, None),
        ([_member("a", load=9), _member("b", load=7, capacity=9)], {"weight": 2}, "b"),
        # unavailable people are skipped
        ([_member("a", available=False), _member("b", load=5)], {}, "b"),
        # a speaker of the customer's language beats more spare capacity
        ([_member("a"), _member("b", load=5, languages=("en", "tr"))], {"language": "tr"}, "b"),
        # nobody speaks it: the most spare capacity among all
        ([_member("a", load=1), _member("b", load=3)], {"language": "nl"}, "a"),
        # named staff never get their own case
        ([_member("a"), _member("b", load=4)], {"excluded": ["a"]}, "b"),
        ([_member("a")], {"excluded": ["a"]}, None),
        # empty team
        ([], {}, None),
    ],
)
def test_assignment(staff, kwargs, expected):
    args = {"language": "en", "weight": 1, **kwargs}
    result = choose_assignee(staff, **args)
    assert result.staff_id == expected
    if expected is None:
        assert "team queue" in result.reason


def test_ties_rotate_round_robin():
    staff = [_member("a", minutes_ago=1), _member("b", minutes_ago=5), _member("c")]
    order = []
    for step in range(6):
        chosen = choose_assignee(staff, language="en", weight=1).staff_id
        order.append(chosen)
        staff = [
            _member(s.staff_id, minutes_ago=-step) if s.staff_id == chosen else s for s in staff
        ]
    assert order == ["c", "b", "a", "c", "b", "a"]


def test_decision_sets_clocks_from_severity():
    decision = decide(
        _data("The kettle is broken"), history=History(), routing_rules=ROUTES, received_at=NOW
    )
    assert decision.severity == Severity.MEDIUM
    assert decision.deadlines == sla.deadlines(Severity.MEDIUM, NOW)
    assert decision.language == "en"
    assert decision.weight == 2


def test_terms_inside_longer_matches_still_count():
    from services.intake.domain import TermList

    terms = TermList.of(["does not work", "not work", "work", "broke", "broken"], "en")
    assert terms.found("it does not work, broken") == [
        "does not work",
        "not work",
        "work",
        "broke",
        "broken",
    ]
    assert terms.found("homework") == []  # a term must start a word


@pytest.mark.parametrize(
    ("remedy", "value"),
    [
        (
            {"type": "refund", "amount": {"amount": "80.00", "currency": "EUR"}},
            (Decimal("80.00"), "EUR"),
        ),
        (
            {"type": "replacement", "amount": {"amount": "12.5", "currency": "TRY"}},
            (Decimal("12.5"), "TRY"),
        ),
        ({"type": "discount_next_purchase", "percent": 10}, (None, None)),
        ({"type": "apology_only"}, (None, None)),
        (None, (None, None)),
    ],
)
def test_the_value_of_a_resolved_cases_remedy(remedy, value):
    parsed = None if remedy is None else Remedy.model_validate(remedy)
    assert remedy_value(parsed) == value


@pytest.mark.parametrize(
    "remedy",
    [
        {"type": "refund", "amount": {"amount": 80, "currency": "EUR"}},  # a number
        {"type": "refund", "amount": "80 EUR"},
        {"type": "refund"},  # no amount
        {"type": "apology_only", "amount": {"amount": "1", "currency": "EUR"}},
        {"type": "discount_next_purchase"},  # no percent
        {"type": "discount_next_purchase", "percent": 101},
        {"type": "voucher"},
        "refund",
    ],
)
def test_a_malformed_remedy_is_refused(remedy):
    with pytest.raises(ValidationError):
        Remedy.model_validate(remedy)
