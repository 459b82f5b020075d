"""The authority and clock policy as data, and the pure questions asked of it.

Design choices (each one a rule the decider relies on):
- Roles are ordered agent < senior_agent < supervisor < manager < director.
- Limits are per role, per remedy type and (for money remedies) per currency, and are never
  converted between currencies. A role covers a money remedy when its limit for that currency
  is at least the amount. A currency a role names no limit for is not covered by that role,
  except by the director: the director covers any currency absent from his own listed limits,
  with no ceiling (so an unlisted currency always needs a director, who may grant it).
- `discount_next_purchase` has a percent ceiling per role, `reserve_and_notify` a yes/no per
  role; `apology_only` is always allowed.
- Cumulative caps are per role and per currency: the sum of money remedies applied to one
  customer over `customer_window_days`, and the sum one staff member authorised today (an
  approval counts against the approver). A currency without a cap entry is not capped.
- Durations accept seconds (an integer, or digits in a string), ISO 8601 (`PT4H`, `P3D`) or a
  short form (`90s`, `15m`, `4h`, `3d`); they are written back as ISO 8601, so that what
  `to_json` prints `from_json` accepts and reads back equal.
- `version` is assigned by the policy store on load (0 means "not loaded yet").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, time, timedelta
from decimal import Decimal
from enum import StrEnum
from importlib import resources
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.events import MONEY_REMEDIES, Channel, Money, RemedyType, Role, Severity

__all__ = [
    "MONEY_REMEDIES",
    "ROLES",
    "Policy",
    "PolicyError",
    "Remaining",
    "Remedy",
    "RemedyType",
    "Role",
    "Usage",
    "consistency_band",
    "covers",
    "default_policy",
    "diff",
    "is_outlier",
    "next_role",
    "rank",
    "remaining",
    "required_role",
    "within_caps",
]


ROLES: tuple[Role, ...] = tuple(Role)


def rank(role: Role) -> int:
    """The role's position, 0 for agent."""
    return ROLES.index(role)


def next_role(role: Role) -> Role | None:
    """The role directly above `role`, None above director."""
    index = rank(role) + 1
    return ROLES[index] if index < len(ROLES) else None


@dataclass(frozen=True)
class Remedy:
    """A remedy: money types carry `amount`, a discount carries `percent`, others nothing."""

    type: RemedyType
    amount: Money | None = None
    percent: Decimal | None = None

    def __post_init__(self) -> None:
        money = self.type in MONEY_REMEDIES
        if money != (self.amount is not None):
            raise ValueError(f"{self.type}: amount is {'required' if money else 'not allowed'}")
        discount = self.type is RemedyType.DISCOUNT_NEXT_PURCHASE
        if discount != (self.percent is not None):
            raise ValueError(f"{self.type}: percent is {'required' if discount else 'not allowed'}")

    def value(self) -> Decimal | None:
        """The amount of a money remedy, else None."""
        return self.amount.decimal() if self.amount is not None else None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form, as the contract writes it."""
        out: dict[str, Any] = {"type": str(self.type)}
        if self.amount is not None:
            out["amount"] = {"amount": self.amount.amount, "currency": self.amount.currency}
        if self.percent is not None:
            out["percent"] = str(self.percent)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Remedy:
        """The remedy `to_json` wrote (or the contract's action body sent)."""
        amount = data.get("amount")
        percent = data.get("percent")
        return cls(
            type=RemedyType(data["type"]),
            amount=Money.model_validate(amount) if amount is not None else None,
            percent=Decimal(str(percent)) if percent is not None else None,
        )


# --- durations -------------------------------------------------------------------------------

_ISO = re.compile(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?")
_SHORT = re.compile(r"(\d+)(s|m|h|d)")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError("must be seconds (an integer) or an ISO 8601 duration such as PT4H")
    text = value.strip()
    if text.isdigit():
        return timedelta(seconds=int(text))
    short = _SHORT.fullmatch(text)
    if short:
        return timedelta(seconds=int(short[1]) * _UNIT[short[2]])
    iso = _ISO.fullmatch(text)
    if iso is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError("must be seconds (an integer) or an ISO 8601 duration such as PT4H")
    weeks, days, hours, minutes, seconds = (int(g or 0) for g in iso.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(value: timedelta) -> str:
    """ISO 8601 form of a whole-second duration (`P3D`, `PT1H30M`, `PT0S`)."""
    total = int(value.total_seconds())
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    out = "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "")
    return out if out != "P" else "PT0S"


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    if value.microseconds:
        raise ValueError("must be whole seconds")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
PositiveDecimal = Annotated[Decimal, Field(ge=0)]
CurrencyAmounts = dict[Annotated[str, Field(pattern=r"^[A-Z]{3}$")], PositiveDecimal]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the policy tables ------------------------------------------------------------------------


class RoleLimits(_Model):
    """One role's ceilings: money per currency, a discount percent, reserve-and-notify."""

    refund: CurrencyAmounts = Field(default_factory=dict)
    goodwill_credit: CurrencyAmounts = Field(default_factory=dict)
    replacement: CurrencyAmounts = Field(default_factory=dict)
    cancel_order: CurrencyAmounts = Field(default_factory=dict)
    discount_next_purchase: Annotated[Decimal, Field(ge=0, le=100)] = Decimal(0)
    reserve_and_notify: bool = False


class Caps(_Model):
    """Cumulative caps per role and currency (a currency not named is not capped)."""

    customer_window_days: Annotated[int, Field(ge=1)] = 30
    per_customer: dict[Role, CurrencyAmounts] = Field(default_factory=dict)
    per_staff_per_day: dict[Role, CurrencyAmounts] = Field(default_factory=dict)


class Consistency(_Model):
    """When a remedy is an outlier among similar complaints (same category, severity, band)."""

    min_sample: Annotated[int, Field(ge=1)] = 20
    window_days: Annotated[int, Field(ge=1)] = 90
    low_ratio: PositiveDecimal = Decimal("0.25")
    high_ratio: PositiveDecimal = Decimal("3")
    # amount-at-stake bands per currency, as ascending upper bounds; above the last is one more
    bands: dict[Annotated[str, Field(pattern=r"^[A-Z]{3}$")], list[PositiveDecimal]] = Field(
        default_factory=dict
    )

    @field_validator("bands")
    @classmethod
    def _ascending(cls, value: dict[str, list[Decimal]]) -> dict[str, list[Decimal]]:
        for currency, bounds in value.items():
            if bounds != sorted(set(bounds)):
                raise ValueError(f"{currency}: upper bounds must be strictly ascending")
        return value

    @model_validator(mode="after")
    def _ratios(self) -> Consistency:
        if self.low_ratio >= self.high_ratio:
            raise ValueError("low_ratio must be below high_ratio")
        return self


class ClockTargets(_Model):
    """How long acknowledgement and resolution may take."""

    acknowledge_within: Duration
    resolve_within: Duration

    _check = field_validator("acknowledge_within", "resolve_within")(_positive)


Fraction = Annotated[Decimal, Field(gt=0, lt=1)]


class Clocks(_Model):
    """The clock table: per severity, optional per-channel overrides, and the other windows."""

    severity: dict[Severity, ClockTargets]
    channel_overrides: dict[Channel, dict[Severity, ClockTargets]] = Field(default_factory=dict)
    warn_at: list[Fraction] = Field(default_factory=lambda: [Decimal("0.75"), Decimal("0.9")])
    approval_within: Duration
    staff_response_within: Duration
    reopen_within: Duration

    _check = field_validator("approval_within", "staff_response_within", "reopen_within")(_positive)

    @field_validator("severity")
    @classmethod
    def _every_severity(cls, value: dict[Severity, ClockTargets]) -> dict[Severity, ClockTargets]:
        missing = [s.value for s in Severity if s not in value]
        if missing:
            raise ValueError(f"missing severities: {', '.join(missing)}")
        return value

    @field_validator("warn_at")
    @classmethod
    def _sorted(cls, value: list[Decimal]) -> list[Decimal]:
        if value != sorted(set(value)):
            raise ValueError("fractions must be strictly ascending")
        return value

    def targets(self, severity: Severity, channel: Channel | None = None) -> ClockTargets:
        """The targets for a severity, a channel's override first."""
        override = self.channel_overrides.get(channel) if channel is not None else None
        if override and severity in override:
            return override[severity]
        return self.severity[severity]


class Weekday(StrEnum):
    MON = "mon"
    TUE = "tue"
    WED = "wed"
    THU = "thu"
    FRI = "fri"
    SAT = "sat"
    SUN = "sun"


class OpeningHours(_Model):
    """Open on `day` from `start` to `end` local time; an `end` at or before `start` is the
    next day (hours crossing midnight); `24:00` may be written as `00:00`."""

    day: Weekday
    start: time
    end: time


class BusinessHours(_Model):
    """A team's working week in an IANA zone, and its holidays (shifts starting on a holiday
    date are dropped, including the part after midnight)."""

    time_zone: str
    hours: Annotated[list[OpeningHours], Field(min_length=1)]
    holidays: list[date] = Field(default_factory=list)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown IANA time zone") from None
        return value


class Policy(_Model):
    """The whole authority and clock policy, one version of it."""

    version: Annotated[int, Field(ge=0)] = 0
    limits: dict[Role, RoleLimits]
    caps: Caps = Field(default_factory=Caps)
    consistency: Consistency = Field(default_factory=Consistency)
    clocks: Clocks
    business_hours: dict[str, BusinessHours] = Field(default_factory=dict)

    @field_validator("limits")
    @classmethod
    def _every_role(cls, value: dict[Role, RoleLimits]) -> dict[Role, RoleLimits]:
        missing = [r.value for r in Role if r not in value]
        if missing:
            raise ValueError(f"missing roles: {', '.join(missing)}")
        return value

    @classmethod
    def from_json(cls, raw: bytes | str) -> Policy:
        """The policy a JSON document describes; `PolicyError` naming each bad field."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise PolicyError(exc) from None

    def to_json(self) -> str:
        """The JSON `from_json` accepts (indented, stable key order)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


class PolicyError(ValueError):
    """A policy document that does not validate; `errors` names each field by its path."""

    def __init__(self, exc: ValidationError) -> None:
        self.errors = [
            (".".join(str(p) for p in err["loc"]) or "(document)", err["msg"])
            for err in exc.errors()
        ]
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in self.errors))


def default_policy() -> Policy:
    """The packaged default policy (`policy_default.json`, version 0)."""
    raw = resources.files("services.resolution").joinpath("policy_default.json").read_text()
    return Policy.from_json(raw)


def diff(old: Policy, new: Policy) -> list[str]:
    """Human-readable differences from `old` to `new`, one line per changed leaf."""
    out: list[str] = []
    _diff(old.model_dump(mode="json"), new.model_dump(mode="json"), "", out)
    return out


def _diff(old: object, new: object, path: str, out: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"added {sub} = {json.dumps(new[key], sort_keys=True)}")
            elif key not in new:
                out.append(f"removed {sub} (was {json.dumps(old[key], sort_keys=True)})")
            else:
                _diff(old[key], new[key], sub, out)
    elif old != new:
        out.append(f"changed {path}: {json.dumps(old)} -> {json.dumps(new)}")


# --- questions asked of the policy -----------------------------------------------------------


def covers(policy: Policy, role: Role, remedy: Remedy) -> bool:
    """Whether `role`'s own limit (not the caps) reaches `remedy`."""
    limits = policy.limits[role]
    if remedy.type is RemedyType.APOLOGY_ONLY:
        return True
    if remedy.type is RemedyType.RESERVE_AND_NOTIFY:
        return limits.reserve_and_notify
    if remedy.type is RemedyType.DISCOUNT_NEXT_PURCHASE:
        return remedy.percent is not None and remedy.percent <= limits.discount_next_purchase
    assert remedy.amount is not None
    ceiling = _money_limits(limits, remedy.type).get(remedy.amount.currency)
    if ceiling is None:
        return role is Role.DIRECTOR  # unlisted currency: the director, without a ceiling
    return remedy.amount.decimal() <= ceiling


def _money_limits(limits: RoleLimits, kind: RemedyType) -> dict[str, Decimal]:
    table: dict[str, Decimal] = getattr(limits, kind.value)
    return table


@dataclass(frozen=True)
class Usage:
    """Money already applied, per currency: to this customer in the window, by the actor today."""

    customer_window: dict[str, Decimal]
    staff_today: dict[str, Decimal]

    @classmethod
    def none(cls) -> Usage:
        """No usage at all."""
        return cls(customer_window={}, staff_today={})


def within_caps(policy: Policy, role: Role, remedy: Remedy, usage: Usage) -> list[str]:
    """Which caps `remedy` would exceed for a staff member of `role` with `usage` (empty: none)."""
    if remedy.amount is None:
        return []
    currency, amount = remedy.amount.currency, remedy.amount.decimal()
    exceeded = []
    cap = policy.caps.per_customer.get(role, {}).get(currency)
    if cap is not None and usage.customer_window.get(currency, Decimal(0)) + amount > cap:
        exceeded.append("customer_cap")
    cap = policy.caps.per_staff_per_day.get(role, {}).get(currency)
    if cap is not None and usage.staff_today.get(currency, Decimal(0)) + amount > cap:
        exceeded.append("daily_cap")
    return exceeded


def required_role(policy: Policy, remedy: Remedy, usage: Usage | None = None) -> Role | None:
    """The lowest role whose limit covers `remedy` (and, given `usage` of the customer, whose
    customer cap and whose daily cap for this amount alone allow it); None above a director."""
    for role in ROLES:
        if not covers(policy, role, remedy):
            continue
        if usage is None or not within_caps(policy, role, remedy, _customer_only(usage)):
            return role
    return None


def _customer_only(usage: Usage) -> Usage:
    # routing looks at the customer's usage; an approver's own day is checked when approving
    return Usage(customer_window=usage.customer_window, staff_today={})


@dataclass(frozen=True)
class Remaining:
    """What a role may still grant alone: money left per remedy type and currency (None for a
    currency without a ceiling), the discount percent, reserve-and-notify, apology."""

    money: dict[RemedyType, dict[str, Decimal]]
    any_other_currency: bool
    discount_percent: Decimal
    reserve_and_notify: bool
    apology_only: bool = True

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (amounts as decimal strings)."""
        out: dict[str, Any] = {
            kind.value: {cur: str(left) for cur, left in per.items()}
            for kind, per in self.money.items()
        }
        out["other_currencies"] = self.any_other_currency
        out[RemedyType.DISCOUNT_NEXT_PURCHASE.value] = {"percent": str(self.discount_percent)}
        out[RemedyType.RESERVE_AND_NOTIFY.value] = self.reserve_and_notify
        out[RemedyType.APOLOGY_ONLY.value] = self.apology_only
        return out


def remaining(policy: Policy, role: Role, usage: Usage) -> Remaining:
    """What `role` with `usage` may still offer alone, per remedy type, after limits and caps."""
    limits = policy.limits[role]
    customer_caps = policy.caps.per_customer.get(role, {})
    daily_caps = policy.caps.per_staff_per_day.get(role, {})
    money: dict[RemedyType, dict[str, Decimal]] = {}
    for kind in sorted(MONEY_REMEDIES):
        per: dict[str, Decimal] = {}
        for currency, ceiling in _money_limits(limits, kind).items():
            left = [ceiling]
            if currency in customer_caps:
                left.append(customer_caps[currency] - usage.customer_window.get(currency, 0))
            if currency in daily_caps:
                left.append(daily_caps[currency] - usage.staff_today.get(currency, 0))
            per[currency] = max(Decimal(0), min(left))
        money[kind] = per
    return Remaining(
        money=money,
        any_other_currency=role is Role.DIRECTOR,
        discount_percent=limits.discount_next_purchase,
        reserve_and_notify=limits.reserve_and_notify,
    )


def consistency_band(policy: Policy, amount_at_stake: Money | None) -> str:
    """The amount-at-stake band key (`EUR:<=50`, `EUR:>500`, `none`) used to find similar
    complaints (the wiring adds category and severity)."""
    if amount_at_stake is None:
        return "none"
    currency = amount_at_stake.currency
    bounds = policy.consistency.bands.get(currency, [])
    for bound in bounds:
        if amount_at_stake.decimal() <= bound:
            return f"{currency}:<={bound}"
    return f"{currency}:>{bounds[-1]}" if bounds else f"{currency}:any"


def is_outlier(policy: Policy, amount: Decimal, count: int, median: Decimal | None) -> bool:
    """Whether `amount` lies far outside (either way) a sample of `count` with `median`; a
    sample smaller than `min_sample` never makes an outlier."""
    rule = policy.consistency
    if count < rule.min_sample or median is None:
        return False
    return amount < rule.low_ratio * median or amount > rule.high_ratio * median
