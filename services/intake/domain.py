"""Intake's rules as pure functions: classification, severity and routing of a submission."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared import sla
from shared.events import Category, Deadlines, Severity, SubmittedData

DEFAULT_TEAM = "customer-care"

# Which team owns which kind of problem.
TEAM_BY_CATEGORY: dict[Category, str] = {
    Category.PRODUCT: "product-quality",
    Category.WARRANTY: "product-quality",
    Category.PRICE_QUALITY: "product-quality",
    Category.SERVICE: "customer-care",
    Category.STAFF_CONDUCT: "conduct-review",
    Category.FACILITIES: "store-operations",
    Category.STOCK: "store-operations",
    Category.ADVERTISING: "marketing",
    Category.WEBSITE_PHONE: "digital",
    Category.OTHER: DEFAULT_TEAM,
}

BASE_SEVERITY: dict[Category, Severity] = {
    Category.STAFF_CONDUCT: Severity.HIGH,
    Category.PRODUCT: Severity.MEDIUM,
    Category.WARRANTY: Severity.MEDIUM,
    Category.SERVICE: Severity.MEDIUM,
    Category.PRICE_QUALITY: Severity.MEDIUM,
    Category.FACILITIES: Severity.LOW,
    Category.STOCK: Severity.LOW,
    Category.ADVERTISING: Severity.LOW,
    Category.WEBSITE_PHONE: Severity.LOW,
    Category.OTHER: Severity.LOW,
}

# Amount at stake (in any currency's units) that raises severity one step.
AMOUNT_STEPS = (Decimal("250"), Decimal("1000"))
_ORDER = [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]


@dataclass(frozen=True)
class Routing:
    """Where a complaint goes and how urgent it is, with the reasons."""

    category: Category
    category_reason: str
    severity: Severity
    severity_reasons: list[str]
    team: str
    assignee: str | None
    language: str
    deadlines: Deadlines


def classify(data: SubmittedData) -> tuple[Category, str]:
    """The complaint's category and why (the channel's own choice wins)."""
    if data.category is not None:
        return data.category, "given by the channel"
    return Category.OTHER, "no category given; not yet classified"


def severity(category: Category, data: SubmittedData) -> tuple[Severity, list[str]]:
    """Severity from the category, raised a step for each amount threshold passed."""
    level = _ORDER.index(BASE_SEVERITY[category])
    reasons = [f"category {category.value}: {BASE_SEVERITY[category].value}"]
    if data.amount_at_stake is not None:
        amount = data.amount_at_stake.decimal()
        for step in AMOUNT_STEPS:
            if amount >= step and level < len(_ORDER) - 1:
                level += 1
                reasons.append(f"amount at stake ≥ {step}")
    if data.staff_involved and level < _ORDER.index(Severity.HIGH):
        level = _ORDER.index(Severity.HIGH)
        reasons.append("names staff: both sides must be heard")
    return _ORDER[level], reasons


def route(data: SubmittedData, received_at: datetime) -> Routing:
    """The routing decision for an accepted submission received at `received_at`."""
    category, category_reason = classify(data)
    level, reasons = severity(category, data)
    return Routing(
        category=category,
        category_reason=category_reason,
        severity=level,
        severity_reasons=reasons,
        team=TEAM_BY_CATEGORY.get(category, DEFAULT_TEAM),
        assignee=None,
        language=data.customer.language(),
        deadlines=sla.deadlines(level, received_at),
    )
