"""Intake's use cases: accept a submission (HTTP or Kafka), follow cases, reassign work.

Each runs inside the caller's transaction and writes its events to the outbox there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from services.intake import domain, repository
from shared import ids, inbox, jsonsafe, outbox, topics
from shared.db import Conn
from shared.events import (
    AssignedData,
    CaseEventData,
    Channel,
    CloudEvent,
    Deadlines,
    EventType,
    FeedbackData,
    ReassignedData,
    RejectedData,
    Remedy,
    ResolvedData,
    SubmittedData,
    new_event,
)
from shared.frozen import changed
from shared.kafka import Record, Rejected
from shared.routing import decode
from shared.web import field_errors, summarise

SOURCE = "complaints/intake"
MAX_RECORD_BYTES = 256 * 1024
REVIEWER_ROLE = "senior_agent"


def new_complaint_id() -> str:
    return ids.new_uuid()


def _message(
    type_: EventType,
    complaint_id: str,
    data: Any,
    at: datetime | str,
    trace: dict[str, str] | None = None,
) -> outbox.Message:
    return outbox.complaint_event(
        type_, source=SOURCE, complaint_id=complaint_id, data=data, at=at, trace=trace
    )


@dataclass(frozen=True)
class Submission:
    """A validated submission and where it came from (its source, its trace)."""

    data: SubmittedData
    source: str
    trace: dict[str, str] = field(default_factory=dict)


async def accept_many(
    conn: Conn, items: Sequence[Submission], *, now: datetime
) -> list[tuple[str, bool]]:
    """Store, route and assign submissions in a few set-based statements; return each one's
    complaint id and whether it is new. A (channel, external_id) seen before, or earlier in
    `items`, gets the first one's id and changes nothing."""
    pairs = [(item.data.channel.value, item.data.external_id) for item in items]
    first: dict[tuple[str, str], int] = {}
    for n, pair in enumerate(pairs):
        first.setdefault(pair, n)
    fresh = sorted(first.values())
    customers = [items[n].data.customer.id for n in fresh]
    history = await repository.histories(conn, customers, now)
    rules = await repository.routing_rules(conn)
    # a customer's earlier submissions in this same batch count as history too, but not one
    # sent again that is stored already (its history counts it): looked up only for customers
    # with several submissions in the batch, which is rare
    repeated = {c for c, count in Counter(customers).items() if count > 1}
    stored = (
        await repository.find_complaint_ids(
            conn, [pairs[n] for n in fresh if items[n].data.customer.id in repeated]
        )
        if repeated
        else {}
    )
    seen_in_batch: dict[str, int] = {}
    rows: list[repository.NewComplaint] = []
    histories: list[domain.History] = []
    for n in fresh:
        data = items[n].data
        earlier = seen_in_batch.get(data.customer.id, 0)
        if pairs[n] not in stored:
            seen_in_batch[data.customer.id] = earlier + 1
        own = history[data.customer.id]
        if earlier:
            own = changed(
                own,
                complaints_30d=own.complaints_30d + earlier,
                complaints_total=own.complaints_total + earlier,
            )
        decision = domain.decide(data, history=own, routing_rules=rules, received_at=now)
        submitted = data.model_dump(mode="json", exclude_none=True)
        rows.append(
            repository.NewComplaint(new_complaint_id(), data, decision, items[n].source, submitted)
        )
        histories.append(own)
    created = await repository.insert_complaints(conn, rows, received_at=now)
    # the ids of those stored before: looked up above for repeated customers, here for the rest
    existing = stored | await repository.find_complaint_ids(
        conn,
        [
            pairs[n]
            for n, r in zip(fresh, rows, strict=True)
            if r.complaint_id not in created and pairs[n] not in stored
        ],
    )
    teams = await repository.lock_teams(
        conn, [r.decision.team for r in rows if r.complaint_id in created]
    )
    holders: list[repository.Holder] = []
    messages: list[outbox.Message] = []
    at = outbox.json_time(now)
    ids: dict[tuple[str, str], tuple[str, bool]] = {}
    for n, row, own in zip(fresh, rows, histories, strict=True):
        pair = pairs[n]
        if row.complaint_id not in created:
            ids[pair] = (existing[pair], False)
            continue
        ids[pair] = (row.complaint_id, True)
        decision, data, team = row.decision, row.data, teams[row.decision.team]
        weight = decision.weight
        choice = domain.choose_assignee(
            team, language=decision.language, weight=weight, excluded=data.staff_involved
        )
        if choice.staff_id is not None:  # later complaints in the batch see this one's load
            teams[decision.team] = [
                changed(s, load=s.load + weight, last_assigned_at=now)
                if s.staff_id == choice.staff_id
                else s
                for s in team
            ]
        holders.append(repository.Holder(row.complaint_id, decision.team, choice.staff_id, weight))
        messages += accepted_events(row, choice, own, at, items[n].trace)
    await repository.assign(conn, holders, now=now)
    await outbox.enqueue(conn, messages)
    return [(ids[pair][0], ids[pair][1] and first[pair] == n) for n, pair in enumerate(pairs)]


def accepted_events(
    row: repository.NewComplaint,
    choice: domain.Assignment,
    history: domain.History,
    at: str,
    trace_headers: dict[str, str],
) -> list[outbox.Message]:
    """`complaint.received`, `complaint.routed`, and `complaint.unassigned` when nobody could
    take it, all continuing the submission's trace; `at` is when it was received, as written
    (`outbox.json_time`)."""
    complaint_id, decision = row.complaint_id, row.decision
    messages = [
        _message(EventType.RECEIVED, complaint_id, received_data(row, at), at, trace_headers),
        _message(
            EventType.ROUTED, complaint_id, routed_data(row, choice, history, at), at, trace_headers
        ),
    ]
    if choice.staff_id is None:
        alert = {"complaint_id": complaint_id, "actor": "system", "at": at}
        alert |= {"team": decision.team, "reason": choice.reason}
        unassigned = outbox.contract_data(ReassignedData, alert)
        messages.append(_message(EventType.UNASSIGNED, complaint_id, unassigned, at, trace_headers))
    return messages


# The data of the accepted events is written from already-validated values, as dicts in the
# order of the contract models' fields with None left out (as `model_dump(mode="json",
# exclude_none=True)` writes them): no model built, no second validation pass, no reordering.
# tests/unit/test_event_bytes.py compares the bytes with what the models write.


def received_data(row: repository.NewComplaint, at: str) -> dict[str, Any]:
    """`complaint.received`'s JSON values: the submission as accepted, with its id and time."""
    submitted = row.submitted
    # ReceivedData has SubmittedData's fields in their order, but channel before external_id
    return {
        "complaint_id": row.complaint_id,
        "actor": "system",
        "received_at": at,
        "channel": submitted["channel"],  # keeps this place when `submitted` sets it again
        **submitted,
    }


def routed_data(
    row: repository.NewComplaint, assignment: domain.Assignment, history: domain.History, at: str
) -> dict[str, Any]:
    """`complaint.routed`'s JSON values: team, assignee, severity with reasons, flags and the
    history."""
    decision, submitted = row.decision, row.submitted
    values: dict[str, Any] = {
        "complaint_id": row.complaint_id,
        "actor": "system",
        "routed_at": at,
        "received_at": at,
        "channel": submitted["channel"],
        "external_id": submitted["external_id"],
        "category": decision.category.value,
        "category_reason": decision.category_reason,
        "severity": decision.severity.value,
        "severity_reasons": decision.severity_reasons,
        "team": decision.team,
    }
    if assignment.staff_id is not None:
        values["assignee"] = assignment.staff_id
    values["language"] = decision.language
    values["staff_involved"] = submitted["staff_involved"]
    values["deadlines"] = deadline_values(decision.deadlines)
    values["severity_score"] = decision.severity_score
    values["team_reason"] = decision.team_reason
    values["assignment_reason"] = assignment.reason
    values["flags"] = [{"code": f.code, "reason": f.reason} for f in decision.flags]
    if decision.flags:
        values["review_by"] = REVIEWER_ROLE
    values["customer_history"] = dict(vars(history))
    return values


def deadline_values(deadlines: Deadlines) -> dict[str, str]:
    """`deadlines` as JSON values, made once per pair of times (a batch is received at one
    time: one pair per severity); shared, so never to be changed."""
    ack, resolve = deadlines.acknowledge_by, deadlines.resolve_by
    # equal times with other offsets are written otherwise: the offsets are part of the key
    return _times_written(ack, ack.utcoffset(), resolve, resolve.utcoffset())


@lru_cache(maxsize=8)
def _times_written(
    acknowledge_by: datetime, _: object, resolve_by: datetime, __: object
) -> dict[str, str]:
    return {
        "acknowledge_by": outbox.json_time(acknowledge_by),
        "resolve_by": outbox.json_time(resolve_by),
    }


async def reassign_from(conn: Conn, staff_id: str, *, reason: str, now: datetime) -> list[str]:
    """Move a person's open, unacknowledged cases to others; return the complaint ids moved."""
    moved = []
    messages = []
    for case in await repository.open_unacknowledged(conn, staff_id):
        submission = SubmittedData.model_validate(case["submission"])
        staff = (await repository.lock_teams(conn, [case["team"]]))[case["team"]]
        choice = domain.choose_assignee(
            staff,
            language=case["language"],
            weight=case["weight"],
            excluded=[*submission.staff_involved, staff_id],
        )
        holder = repository.Holder(
            case["complaint_id"], case["team"], choice.staff_id, case["weight"]
        )
        await repository.release_load(conn, staff_id, case["weight"])
        await repository.assign(conn, [holder], now=now)
        messages.append(
            _message(
                EventType.REASSIGNED,
                case["complaint_id"],
                ReassignedData(
                    complaint_id=case["complaint_id"],
                    at=now,
                    team=case["team"],
                    from_assignee=staff_id,
                    to_assignee=choice.staff_id,
                    reason=f"{reason}; {choice.reason}",
                ),
                now,
            )
        )
        moved.append(case["complaint_id"])
    await outbox.enqueue(conn, messages)
    return moved


# ---------------------------------------------------------------------- Kafka records


class SubmittedEvent(CloudEvent):
    """A `complaint.submitted` envelope with its data, both read in one pass."""

    data: SubmittedData


def parse_submitted(value: bytes | None) -> tuple[SubmittedData, str]:
    """The submission in a `complaints.submitted.v1` record and its source, or `Rejected`."""
    return read_at_once(value) or read_carefully(value)


def read_at_once(value: bytes | None) -> tuple[SubmittedData, str] | None:
    """A good record's submission and source, validated straight from its bytes (no parsed
    document, one validation); None when anything is amiss, for `read_carefully` to say what.

    It accepts no record `read_carefully` refuses, and reads the same values from the ones it
    accepts: its parser is as strict (UTF-8, JSON grammar, last duplicate key wins), and a
    record that may nest too deep, by its count of brackets, is left to the careful path."""
    if (
        value is None
        or len(value) > MAX_RECORD_BYTES
        or value.count(b"{") + value.count(b"[") > jsonsafe.MAX_DEPTH
    ):
        return None
    try:
        event = SubmittedEvent.model_validate_json(value)
    except ValidationError:
        return None
    if event.type != EventType.SUBMITTED:
        return None
    return event.data, event.source


def read_carefully(value: bytes | None) -> tuple[SubmittedData, str]:
    """The submission and its source, or `Rejected` with the first reason found."""
    if value is None or not value.strip():
        raise Rejected("empty", "the record has no value")
    try:
        doc = jsonsafe.loads(value, max_bytes=MAX_RECORD_BYTES)
    except jsonsafe.JsonRejected as exc:
        raise Rejected(exc.code, f"the value is {exc.message}") from None
    if not isinstance(doc, dict):
        raise Rejected("not_cloudevent", "the value is JSON but not an object")
    try:
        event = CloudEvent.model_validate(doc)
    except ValidationError as exc:
        raise Rejected(
            "not_cloudevent",
            "not a CloudEvents 1.0 envelope: " + summarise(field_errors(exc.errors())),
        ) from None
    if event.type != EventType.SUBMITTED:
        raise Rejected(
            "unknown_type",
            f"type {event.type!r} is not accepted here; expected complaint.submitted",
        )
    return validate_data(event.data, prefix=("data",), source=event.source), event.source


def validate_data(data: Any, *, prefix: tuple[str, ...] = (), source: str = "") -> SubmittedData:
    """`complaint.submitted` data, or `Rejected` naming every bad field; when the channel and
    external id can be read, the rejection also tells the channel (`complaint.rejected`)."""
    try:
        return SubmittedData.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc.errors(), prefix=prefix)
        channel_field = ".".join((*prefix, "channel"))
        unknown = any(e["field"] == channel_field for e in errors)
        code = "unknown_channel" if unknown else "schema_violation"
        raise Rejected(code, summarise(errors), rejection(data, code, errors, source)) from None


def rejection(
    data: Any, code: str, errors: list[dict[str, Any]], source: str
) -> list[outbox.Message]:
    """`complaint.rejected` for the sender, keyed like its submission; none when the sender
    cannot be told apart (no readable channel or external id)."""
    if not isinstance(data, dict):
        return []
    channel, external_id = data.get("channel"), data.get("external_id")
    if not isinstance(channel, str) or not isinstance(external_id, str):
        return []
    if channel not in {c.value for c in Channel}:
        return []
    if not 0 < len(external_id) <= 128 or "\x00" in external_id:
        return []
    now = datetime.now(UTC)
    body = RejectedData(
        channel=channel,
        external_id=external_id,
        source=source or "unknown",
        reason_code=code,
        reasons=errors,
        at=now,
    )
    event = new_event(type=EventType.REJECTED, source=SOURCE, data=body, time=now)
    return [outbox.Message(topics.EVENTS, topics.submission_key(channel, external_id), event)]


def parse_record(record: Record) -> tuple[SubmittedData, str]:
    """The submission in a record of `complaints.submitted.v1`, or `Rejected`."""
    return parse_submitted(record.value)


async def apply_submissions(
    conn: Conn, items: list[tuple[tuple[SubmittedData, str], dict[str, str]]], now: datetime
) -> None:
    """Accept a batch of parsed records, each continuing its own trace."""
    await accept_many(
        conn, [Submission(data, source, headers) for (data, source), headers in items], now=now
    )


CONSUMER = "intake"


@dataclass
class _Round:
    """What a round of followed events changes, one list per kind of change, each kind written
    by one statement (`apply`) but the moves (rare: a claim, an assignment), one each; the
    events are about different cases, so their order within the round does not matter."""

    now: datetime
    acknowledged: list[str] = field(default_factory=list)
    opens: dict[str, bool] = field(default_factory=dict)
    moves: list[tuple[str, str | None, datetime]] = field(default_factory=list)
    outcomes: list[tuple[str, str, Decimal | None, str | None]] = field(default_factory=list)
    scores: dict[str, int] = field(default_factory=dict)
    reopened: dict[str, datetime] = field(default_factory=dict)

    def acknowledge(self, data: CaseEventData) -> None:
        self.acknowledged.append(data.complaint_id)

    def close(self, data: CaseEventData) -> None:
        self.opens[data.complaint_id] = False

    def reopen(self, data: CaseEventData) -> None:
        self.opens[data.complaint_id] = True
        self.reopened[data.complaint_id] = data.at or self.now

    def move(self, data: AssignedData) -> None:
        self.moves.append((data.complaint_id, data.to_assignee, data.at or self.now))

    def resolve(self, data: ResolvedData) -> None:
        self.opens[data.complaint_id] = False
        self.outcomes.append((data.complaint_id, data.outcome.value, *remedy_value(data.remedy)))

    def rate(self, data: FeedbackData) -> None:
        self.scores[data.complaint_id] = data.score

    async def apply(self, conn: Conn) -> None:
        for complaint_id, to, at in self.moves:  # rare (a claim, an assignment): one each
            await repository.move_holder(conn, complaint_id, to, at)
        await repository.cases_acknowledged(conn, self.acknowledged)
        await repository.cases_open(conn, self.opens)
        await repository.cases_resolved(conn, self.outcomes)
        await repository.cases_reopened(conn, self.reopened)
        await repository.cases_rated(conn, self.scores)


# What later events say about a case, as intake tracks it for open load and customer history,
# with the model each is read as: the types of the internal cases feed (`topics.CASE_FEED`,
# which every service's outbox writes for intake). Another type there would be skipped unread
# (by its type header), or, without one, read and passed over.
@dataclass(frozen=True)
class _Followed:
    """A type of event intake follows: its data's model, and what it changes in a round."""

    model: type[CaseEventData]
    collect: Callable[[_Round, Any], None]


_FOLLOWING: dict[str, _Followed] = {
    EventType.ACKNOWLEDGED: _Followed(CaseEventData, _Round.acknowledge),
    EventType.CLOSED: _Followed(CaseEventData, _Round.close),
    EventType.REOPENED: _Followed(CaseEventData, _Round.reopen),
    EventType.ASSIGNED: _Followed(AssignedData, _Round.move),
    EventType.RESOLVED: _Followed(ResolvedData, _Round.resolve),
    EventType.FEEDBACK_RECEIVED: _Followed(FeedbackData, _Round.rate),
}
FOLLOWED: dict[str, type[CaseEventData]] = {t: f.model for t, f in _FOLLOWING.items()}
CaseEvent = tuple[CloudEvent, CaseEventData | None]


def parse_case_event(record: Record) -> CaseEvent:
    """The event in a record of the internal cases feed and its data when intake follows its
    type (None when it does not), or `Rejected` saying why not."""
    return decode(record, FOLLOWED)


async def follow_cases(
    conn: Conn, items: Sequence[tuple[CaseEvent, dict[str, str]]], now: datetime
) -> None:
    """Apply a batch of followed events: the events seen before (the inbox) change nothing;
    the rest go in rounds, the first event of each case, then the second, …, so each case's
    events apply in their order. A round takes one statement per kind of change whatever its
    size, and one per `complaint.assigned` (rare: a claim, an assignment). The members whose
    load the batch changes are locked first, in the order submissions lock them."""
    followed = [(event, data) for (event, data), _ in items if data is not None]
    if not followed:
        return
    fresh_ids = await inbox.first_times(conn, CONSUMER, [event.id for event, _ in followed])
    rounds: list[_Round] = []
    seen: Counter[str] = Counter()
    for event, data in followed:
        if event.id not in fresh_ids:
            continue
        fresh_ids.discard(event.id)  # a repeat later in the batch is not fresh
        n = seen[data.complaint_id]
        seen[data.complaint_id] += 1
        if n == len(rounds):
            rounds.append(_Round(now))
        _FOLLOWING[event.type].collect(rounds[n], data)
    moves = [move for round_ in rounds for move in round_.moves]
    await repository.lock_holders(
        conn,
        [*(c for round_ in rounds for c in round_.opens), *(c for c, _, _ in moves)],
        [to for _, to, _ in moves if to is not None],
    )
    for round_ in rounds:
        await round_.apply(conn)


def remedy_value(remedy: Remedy | None) -> tuple[Decimal | None, str | None]:
    """The money value of the remedy a case was resolved with (amount, currency), for customer
    history: None and None when there was none or it has no amount (an apology, a
    percentage)."""
    if remedy is None or remedy.amount is None:
        return None, None
    return remedy.amount.decimal(), remedy.amount.currency
