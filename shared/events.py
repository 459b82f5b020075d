"""The CloudEvents 1.0 envelope and the data of the contract's events (money as strings)."""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

CONTENT_TYPE = "application/cloudevents+json"
# Kafka header that repeats the envelope's `type`, so a consumer can skip events it does not
# handle without parsing them. Not `ce_`-prefixed: the CloudEvents Kafka binding (and its
# official SDKs) read any such header as binary mode, which a structured event is not.
TYPE_HEADER = "event-type"
# The name it had until 0.1 (deprecated): still read on consumption for one version, never
# written; the relay renames it on outbox rows stored before the change.
LEGACY_TYPE_HEADER = "ce_type"
MAX_DESCRIPTION = 10_000
MAX_STAFF_INVOLVED = 20


class EventType(StrEnum):
    """Every event type of the contract (`complaint.submitted` is what channels send)."""

    SUBMITTED = "complaint.submitted"
    RECEIVED = "complaint.received"
    REJECTED = "complaint.rejected"
    ROUTED = "complaint.routed"
    ACKNOWLEDGED = "complaint.acknowledged"
    ASSIGNED = "complaint.assigned"
    STAFF_RESPONSE_REQUESTED = "complaint.staff_response_requested"
    STAFF_RESPONDED = "complaint.staff_responded"
    REMEDY_PROPOSED = "complaint.remedy_proposed"
    APPROVAL_REQUESTED = "complaint.approval_requested"
    REMEDY_APPROVED = "complaint.remedy_approved"
    REMEDY_DECLINED = "complaint.remedy_declined"
    RESOLVED = "complaint.resolved"
    REOPENED = "complaint.reopened"
    CLOSED = "complaint.closed"
    SLA_WARNING = "complaint.sla_warning"
    SLA_BREACHED = "complaint.sla_breached"
    ESCALATED = "complaint.escalated"
    FEEDBACK_RECEIVED = "complaint.feedback_received"
    REASSIGNED = "complaint.reassigned"
    UNASSIGNED = "complaint.unassigned"
    NOTIFICATION_SENT = "notification.sent"
    NOTIFICATION_FAILED = "notification.failed"
    DEADLETTERED = "record.deadlettered"
    CHANNEL_KEY_CREATED = "channel_key.created"
    CHANNEL_KEY_REVOKED = "channel_key.revoked"
    STAFF_CHANGED = "staff.changed"
    # on complaints.commands.v1: a staff action sent over Kafka, and the answer to a refused one
    COMMAND = "complaint.command"
    ACTION_REFUSED = "complaint.action_refused"


class Channel(StrEnum):
    WEB = "web"
    PHONE = "phone"
    EMAIL = "email"
    CHAT = "chat"
    STORE = "store"


class Role(StrEnum):
    """Staff roles, lowest first (the order is the ladder approvals and escalations climb)."""

    AGENT = "agent"
    SENIOR_AGENT = "senior_agent"
    SUPERVISOR = "supervisor"
    MANAGER = "manager"
    DIRECTOR = "director"

    @property
    def every_team(self) -> bool:
        """Managers and directors act on (and read) every team's cases; the others on their
        own team's."""
        return self in (Role.MANAGER, Role.DIRECTOR)


class Category(StrEnum):
    PRODUCT = "product"
    SERVICE = "service"
    FACILITIES = "facilities"
    ADVERTISING = "advertising"
    STAFF_CONDUCT = "staff_conduct"
    PRICE_QUALITY = "price_quality"
    WARRANTY = "warranty"
    STOCK = "stock"
    WEBSITE_PHONE = "website_phone"
    OTHER = "other"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


def utcnow() -> datetime:
    """The current time, timezone-aware (only adapters call this; domain functions take `now`)."""
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a timezone offset (RFC 3339)")
    return value


def no_nul(value: str) -> str:
    # PostgreSQL cannot store NUL in text, nor can a lone surrogate (`"\ud800"` in JSON) be
    # sent to it as UTF-8; refuse them here, with the field named.
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must not contain unpaired surrogates (\\ud800-\\udfff)") from None
    return value


# RFC 3339 `date-time` (section 5.6): full date, `T`, full time with seconds, then `Z` or a
# numeric offset. Letters may be lower-case (RFC 3339 5.6 note); a space separator is not
# in the grammar and is refused, as are dates alone and times without an offset.
_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt](?P<hour>\d{2}):(?P<minute>\d{2}):(?P<second>\d{2})"
    r"(?P<fraction>\.\d+)?(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))",
    re.ASCII,
)
_RFC3339_HINT = "an RFC 3339 date-time string with a time zone offset, e.g. 2026-11-22T10:00:00Z"


def parse_rfc3339(value: str) -> datetime:
    """The timezone-aware time an RFC 3339 `date-time` string names, or `ValueError`."""
    found = _RFC3339.fullmatch(value)
    if found is None:
        raise ValueError(f"must be {_RFC3339_HINT}")
    if found["second"] == "60":
        raise ValueError("leap seconds (:60) cannot be represented; send :59")
    if found["sign"] and (int(found["oh"]) > 23 or int(found["om"]) > 59):
        raise ValueError("the time zone offset is out of range")
    if found["hour"] > "23":  # newer Pythons read 24:00 as the next midnight; RFC 3339 does not
        raise ValueError("is not a valid date and time")
    with contextlib.suppress(ValueError):
        # the form is checked: Python reads what it can of it (upper-case T and Z, valid
        # dates) twenty times faster than the parts below; the rest is read part by part
        return datetime.fromisoformat(value)
    offset = UTC
    if found["sign"]:
        hours, minutes = int(found["oh"]), int(found["om"])
        delta = timedelta(hours=hours, minutes=minutes)
        offset = timezone(-delta if found["sign"] == "-" else delta)
    fraction = (found["fraction"] or ".")[1:]
    try:
        return datetime.fromisoformat(found["date"]).replace(
            hour=int(found["hour"]),
            minute=int(found["minute"]),
            second=int(found["second"]),
            microsecond=int(fraction[:6].ljust(6, "0")),
            tzinfo=offset,
        )
    except ValueError:
        raise ValueError("is not a valid date and time") from None


def _rfc3339(value: object) -> object:
    # A `datetime` comes from Python code in this process (checked for an offset afterwards);
    # anything from outside must be an RFC 3339 string: no numbers, no dates alone.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("rfc3339", f"must be {_RFC3339_HINT} (a string, not a number)")
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise PydanticCustomError("rfc3339", str(exc)) from None


NoNul = AfterValidator(no_nul)
AwareDatetime = Annotated[datetime, AfterValidator(_aware)]
# A time from outside: an RFC 3339 string with an offset (or an aware `datetime` in process).
Rfc3339Datetime = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_aware)]
Text128 = Annotated[
    str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True), NoNul
]
Text2000 = Annotated[str, StringConstraints(min_length=1, max_length=2000), NoNul]


# Codes of the ISO 4217 list that name no money a customer can have at stake.
_NOT_MONEY = frozenset({"XXX", "XTS"})  # "no currency", "reserved for testing"
_currencies: frozenset[str] | None = None


def currency_codes() -> frozenset[str]:
    """The current ISO 4217 alphabetic codes (pycountry's list), read once on first use."""
    global _currencies
    if _currencies is None:
        import pycountry  # loads its JSON database: only when a currency is first checked

        _currencies = frozenset(c.alpha_3 for c in pycountry.currencies) - _NOT_MONEY
    return _currencies


class Money(BaseModel):
    """A decimal amount as a string plus its ISO 4217 currency; never a float."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: Annotated[str, StringConstraints(pattern=r"^\d{1,12}(\.\d{1,4})?$")] = Field(
        description="non-negative decimal string, e.g. '49.90'"
    )
    currency: str = Field(
        description="current ISO 4217 code, upper-case, e.g. 'EUR'",
        json_schema_extra={"pattern": "^[A-Z]{3}$"},
    )

    @field_validator("amount", mode="before")
    @classmethod
    def _no_floats(cls, value: object) -> object:
        if isinstance(value, float | int) and not isinstance(value, bool):
            raise ValueError("must be a decimal string such as '49.90', not a number")
        return value

    @field_validator("currency")
    @classmethod
    def _iso4217(cls, value: str) -> str:
        # the message never repeats the value: whatever was sent may be personal data
        if value not in currency_codes():
            if value.upper() in currency_codes():
                raise PydanticCustomError(
                    "iso4217", "unknown ISO 4217 currency code (codes are upper-case, e.g. EUR)"
                )
            raise PydanticCustomError("iso4217", "unknown ISO 4217 currency code")
        return value

    def decimal(self) -> Decimal:
        return Decimal(self.amount)


class Customer(BaseModel):
    """Who complains; `id` plus at least one way to reach them."""

    model_config = ConfigDict(extra="ignore")

    id: Text128
    name: Annotated[str, StringConstraints(max_length=200), NoNul] | None = None
    email: (
        Annotated[
            str,
            StringConstraints(
                max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", strip_whitespace=True
            ),
            NoNul,
        ]
        | None
    ) = None
    phone: (
        Annotated[str, StringConstraints(max_length=32, pattern=r"^\+?[0-9 ()./-]{3,31}$")] | None
    ) = None
    locale: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length=35)
    ] = "en"
    tier: Literal["standard", "silver", "gold", "vip"] | None = Field(
        default=None, description="customer value, for routing rules (an extension)"
    )

    @model_validator(mode="after")
    def _one_contact(self) -> Customer:
        if not self.email and not self.phone:
            raise ValueError("needs at least one contact: email or phone")
        return self

    def language(self) -> str:
        """The primary language subtag, lower-case (`tr-TR` → `tr`)."""
        return self.locale.split("-")[0].lower()


class SubmittedData(BaseModel):
    """`complaint.submitted` data: what channels send."""

    model_config = ConfigDict(extra="ignore")

    external_id: Text128
    channel: Channel
    customer: Customer
    description: Annotated[str, StringConstraints(min_length=1, max_length=MAX_DESCRIPTION), NoNul]
    category: Category | None = None
    order_id: Text128 | None = None
    amount_at_stake: Money | None = None
    staff_involved: Annotated[list[Text128], Field(max_length=MAX_STAFF_INVOLVED)] = Field(
        default_factory=list
    )
    desired_outcome: Text2000 | None = None
    occurred_at: Rfc3339Datetime | None = None

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class Deadlines(BaseModel):
    # frozen: intake shares one per severity and time among a batch's complaints
    model_config = ConfigDict(frozen=True)

    acknowledge_by: datetime
    resolve_by: datetime


class ReceivedData(BaseModel):
    """`complaint.received`: the complaint as accepted, with the contact needed for a receipt."""

    complaint_id: str
    actor: str = "system"
    received_at: datetime
    channel: Channel
    external_id: str
    customer: Customer
    description: str
    category: Category | None = None
    order_id: str | None = None
    amount_at_stake: Money | None = None
    staff_involved: list[str] = Field(default_factory=list)
    desired_outcome: str | None = None
    occurred_at: datetime | None = None


class RoutedData(BaseModel):
    """`complaint.routed`: where the complaint went, how severe it is, and its clocks."""

    complaint_id: str
    actor: str = "system"
    routed_at: datetime
    received_at: datetime
    channel: Channel
    external_id: str
    category: Category
    category_reason: str
    severity: Severity
    severity_reasons: list[str]
    team: str
    assignee: str | None = None
    language: str
    staff_involved: list[str] = Field(default_factory=list)
    deadlines: Deadlines
    severity_score: int | None = None
    team_reason: str | None = None
    assignment_reason: str | None = None
    flags: list[dict[str, str]] = Field(default_factory=list)
    review_by: str | None = None
    customer_history: dict[str, Any] | None = None


class RejectedData(BaseModel):
    """`complaint.rejected`: a submission that could not be accepted, and why (field names and
    rules only, never the values sent)."""

    channel: str
    external_id: str
    actor: str = "system"
    source: str
    reason_code: str
    reasons: list[dict[str, str]]
    at: datetime


class ReassignedData(BaseModel):
    """`complaint.reassigned` (another holder) and `complaint.unassigned` (left in the queue)."""

    complaint_id: str
    actor: str = "system"
    at: datetime
    team: str
    from_assignee: str | None = None
    to_assignee: str | None = None
    reason: str


class RemedyType(StrEnum):
    """The contract's remedy types: the first four carry an amount, a discount a percent."""

    REFUND = "refund"
    GOODWILL_CREDIT = "goodwill_credit"
    REPLACEMENT = "replacement"  # amount: its value
    CANCEL_ORDER = "cancel_order"  # amount: the order value
    DISCOUNT_NEXT_PURCHASE = "discount_next_purchase"
    RESERVE_AND_NOTIFY = "reserve_and_notify"
    APOLOGY_ONLY = "apology_only"


MONEY_REMEDIES = frozenset(
    {
        RemedyType.REFUND,
        RemedyType.GOODWILL_CREDIT,
        RemedyType.REPLACEMENT,
        RemedyType.CANCEL_ORDER,
    }
)


class Remedy(BaseModel):
    """A remedy offered or applied: money remedies have an amount, a discount its percent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: RemedyType
    amount: Money | None = None
    percent: Annotated[Decimal, Field(gt=0, le=100)] | None = None

    @model_validator(mode="after")
    def _measure_fits_type(self) -> Remedy:
        if self.type in MONEY_REMEDIES and self.amount is None:
            raise PydanticCustomError("missing", "a {kind} needs an amount", {"kind": self.type})
        if self.type == RemedyType.DISCOUNT_NEXT_PURCHASE and self.percent is None:
            raise PydanticCustomError("missing", "a discount needs a percent")
        if self.type not in MONEY_REMEDIES and self.amount is not None:
            raise PydanticCustomError("extra", "a {kind} has no amount", {"kind": self.type})
        if self.type != RemedyType.DISCOUNT_NEXT_PURCHASE and self.percent is not None:
            raise PydanticCustomError("extra", "only a discount has a percent")
        return self


class Outcome(StrEnum):
    UPHELD = "upheld"
    PARTIALLY_UPHELD = "partially_upheld"
    NOT_UPHELD = "not_upheld"


class CaseEventData(BaseModel):
    """What every event about one complaint carries: the complaint, who acted, and when."""

    complaint_id: str
    actor: str = "system"
    at: datetime | None = None


class AssignedData(CaseEventData):
    """`complaint.assigned`: resolution gave the case to another holder (None: the queue)."""

    from_assignee: str | None = None
    to_assignee: str | None = None


class ResolvedData(CaseEventData):
    """`complaint.resolved`: the outcome, and the remedy applied (none when not upheld)."""

    outcome: Outcome
    remedy: Remedy | None = None


class FeedbackData(CaseEventData):
    """`complaint.feedback_received`: the customer's satisfaction after resolution."""

    score: Annotated[int, Field(ge=1, le=5)]
    comment: str | None = None


class ChannelKeyData(BaseModel):
    """A channel key's lifecycle (internal): its hash, never the key itself."""

    key_id: str
    channel: Channel
    key_hash: str
    at: datetime


class NotificationData(BaseModel):
    """`notification.sent` / `notification.failed`: one message to a customer or staff member."""

    complaint_id: str
    actor: str = "system"
    notification_id: str
    kind: str
    medium: Literal["email", "sms", "console"]
    language: str
    at: datetime
    reason: str | None = None
    # set when the receipt went out in (or failed with) a flooded address's digest
    digest_id: str | None = None


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]
    source: Annotated[str, StringConstraints(min_length=1, max_length=500), NoNul]
    type: Annotated[str, StringConstraints(min_length=1, max_length=200), NoNul]
    subject: Annotated[str, NoNul] | None = None
    time: Rfc3339Datetime | None = None
    datacontenttype: str | None = "application/json"
    data: Any = None

    def complaint_id(self) -> str | None:
        """The complaint this event is about: its subject, else `data.complaint_id`."""
        if self.subject:
            return self.subject
        found = self.data.get("complaint_id") if isinstance(self.data, dict) else None
        return found if isinstance(found, str) and found else None

    def to_bytes(self) -> bytes:
        """Serialized as the structured-mode JSON the contract promises."""
        return self.model_dump_json(exclude_none=True).encode()


def new_event(
    *,
    type: EventType | str,
    source: str,
    data: BaseModel | dict[str, Any],
    subject: str | None = None,
    time: datetime | None = None,
) -> CloudEvent:
    """A new CloudEvent with a fresh id; `data` is dumped as JSON-ready values.

    Built without re-validation: every field is set here from typed values.
    """
    payload = (
        data.model_dump(mode="json", exclude_none=True) if isinstance(data, BaseModel) else data
    )
    return CloudEvent.model_construct(
        specversion="1.0",
        datacontenttype="application/json",
        id=str(uuid.uuid4()),
        source=source,
        type=str(type),
        subject=subject,
        time=time or utcnow(),
        data=payload,
    )
