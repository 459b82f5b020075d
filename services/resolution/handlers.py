"""Resolution's consumers: every event of a complaint lands on its case, once; a routed one
opens the case; staff commands from Kafka are decided as over HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from opentelemetry import trace as otel_trace
from pydantic import BaseModel, ValidationError

from services.resolution import actions, cases, domain, repository
from services.resolution.action_limit import ActionLimit
from services.resolution.case import SYSTEM, Kind, Reassigned, Refusal
from services.resolution.states import States
from shared import auth, directory, inbox, outbox, telemetry
from shared.db import Conn
from shared.events import CloudEvent, EventType, ReassignedData, ReceivedData, RoutedData
from shared.kafka import Record, Rejected
from shared.routing import AnyData, Delivery, EventRouter, decode
from shared.web import field_errors, summarise

CONSUMER = "resolution"


# Resolution's own decisions (its case events) are already in its decision log: skipped
# unread (by their type header), or once read (a record without the header).
OWN = frozenset({*map(str, Kind), EventType.ACTION_REFUSED})
MODELS: dict[str, type[BaseModel]] = {
    EventType.RECEIVED: ReceivedData,
    EventType.ROUTED: RoutedData,
    EventType.REASSIGNED: ReassignedData,
}


@dataclass(frozen=True)
class Incoming:
    """An event of `complaints.events.v1` as resolution reads it: the envelope and the data of
    the types it acts on (validated; None for the types it only notes)."""

    event: CloudEvent
    data: Any


def parse_record(record: Record) -> Incoming:
    """The event in a record of `complaints.events.v1`, or `Rejected` saying why not (in the
    record's span, which it names the complaint in)."""
    event, data = decode(record, MODELS)
    if complaint_id := event.complaint_id():
        otel_trace.get_current_span().set_attribute("complaint.id", complaint_id)
    return Incoming(event, data)


Apply = Callable[[Conn, list[tuple[Incoming, dict[str, str]]], datetime], Awaitable[None]]


def batch_handler(policy: cases.PolicySource, known: States) -> Apply:
    """Every event of a complaint lands on its case's timeline; a received complaint gives its
    case the customer and the amount at stake; a routed one opens its case under the active
    `policy`; a reassignment moves the case (decisions go on from the states `known`). A batch
    takes a few statements whatever its size (a reassignment is decided on its own, in its
    place in the batch's order)."""

    async def apply(
        conn: Conn, items: list[tuple[Incoming, dict[str, str]]], now: datetime
    ) -> None:
        items = [(i, trace) for i, trace in items if i.event.type not in OWN]
        if not items:
            return
        fresh_ids = await inbox.first_times(conn, CONSUMER, [i.event.id for i, _ in items])
        run: list[tuple[Incoming, dict[str, str]]] = []
        for incoming, trace in items:
            if incoming.event.id not in fresh_ids:
                continue  # handled before (or repeated in this batch)
            fresh_ids.discard(incoming.event.id)
            if isinstance(incoming.data, ReassignedData):
                await _apply_run(conn, run, policy, now, known)
                run = []
                with telemetry.traced(trace):  # its decision continues the record's trace
                    await _reassigned(conn, incoming, policy, now, known)
            else:
                run.append((incoming, trace))
        await _apply_run(conn, run, policy, now, known)

    return apply


# Records applied together at most: between two chunks the process's other tasks run (a run of
# 200 applied at once is tens of milliseconds of pure work in which nothing else moves).
RUN_CHUNK = 25


async def _apply_run(
    conn: Conn,
    run: list[tuple[Incoming, dict[str, str]]],
    policy: cases.PolicySource,
    now: datetime,
    known: States,
) -> None:
    """Events that only add to timelines, give cases their customers or open them: in a few
    statements a chunk. The received rows are written before any case opens, so a case opened
    in this run has its customer and amount whatever the order of the two in the batch."""
    for first in range(0, len(run), RUN_CHUNK):
        chunk = run[first : first + RUN_CHUNK]
        await repository.append_timelines(
            conn,
            [
                (complaint_id, i.event.id, domain.timeline_entry(i.event, received=now))
                for i, _ in chunk
                if (complaint_id := i.event.complaint_id())
            ],
        )
        await repository.add_received_many(
            conn, [i.data for i, _ in chunk if isinstance(i.data, ReceivedData)]
        )
        routed = [(i.data, trace) for i, trace in chunk if isinstance(i.data, RoutedData)]
        if routed:
            active = await policy(conn, None)
            await cases.open_many(conn, routed, policy=active, now=now, known=known)


async def _reassigned(
    conn: Conn, incoming: Incoming, policy: cases.PolicySource, now: datetime, known: States
) -> None:
    data: ReassignedData = incoming.data
    entry = domain.timeline_entry(incoming.event, received=now)
    await repository.append_timelines(conn, [(data.complaint_id, incoming.event.id, entry)])
    loaded = await cases.load(conn, data.complaint_id, known=known)
    if loaded is not None:  # a case not opened yet keeps routing's holder until it opens
        await cases.act(
            conn,
            loaded,
            Reassigned(data.to_assignee, data.reason, data.from_assignee),
            SYSTEM,
            policy=await policy(conn, None),
            now=now,
            known=known,
        )


# What resolution learns from intake, which owns them: channel keys (hashes only) and the
# staff directory; topics of these types only.
keys = EventRouter(CONSUMER, strict=True)
directory.learn_keys(keys)
staff = EventRouter(CONSUMER, strict=True)
directory.learn_staff(staff)


Verify = Callable[[Conn, str], Awaitable[directory.Member]]


def command_router(
    verify: Verify, policy: cases.PolicySource, limit: ActionLimit, known: States
) -> EventRouter:
    """Staff actions from `complaints.commands.v1`: the bearer token in the `authorization`
    header is checked exactly as over HTTP, the member's rate `limit` spent, the action decided
    as over HTTP; a refused command (token, limit, form, authority, state) yields
    `complaint.action_refused`, never silence. The command's event id makes it idempotent (the
    inbox)."""
    commands = EventRouter(f"{CONSUMER}-commands", strict=True)

    @commands.on(EventType.COMMAND, model=AnyData)
    async def command(conn: Conn, data: AnyData, delivery: Delivery) -> None:
        complaint_id = delivery.complaint_id
        if not complaint_id:
            raise Rejected("schema_violation", "a command names its complaint in `subject`")
        outcome = await _run_command(conn, data.root, delivery, verify, policy, limit, known)
        if isinstance(outcome, Refusal):
            await outbox.enqueue(conn, [_refused(complaint_id, delivery, data.root, outcome)])

    return commands


async def _run_command(
    conn: Conn,
    body: Any,
    delivery: Delivery,
    verify: Verify,
    policy: cases.PolicySource,
    limit: ActionLimit,
    known: States,
) -> Refusal | None:
    """Check, decide and keep one command; the refusal, if any."""
    token = _bearer(delivery.record.headers)
    try:
        member = await verify(conn, token or "")
    except auth.InvalidToken as exc:
        return Refusal(401, f"staff token rejected: {exc}", "unauthorized")
    # drawn in a transaction of its own (as over HTTP): the member's bucket row is never held
    # while this command waits for its case
    if (limited := await limit.check(member.staff_id)) is not None:
        return limited
    try:
        action = actions.ACTION.validate_python(body)
    except ValidationError as exc:
        return Refusal(422, summarise(field_errors(exc.errors(), prefix=("data",))), "invalid")
    complaint_id = delivery.complaint_id or ""
    loaded = await cases.load(conn, complaint_id, known=known)
    if loaded is None:
        return Refusal(404, f"no complaint {complaint_id}", "not_found")
    result = await cases.staff_action(
        conn, loaded, action, member, policies=policy, now=delivery.now, known=known
    )
    return result if isinstance(result, Refusal) else None


def _bearer(headers: tuple[tuple[str, bytes], ...]) -> str | None:
    """The token of an `authorization: Bearer …` header, if one is readable."""
    for name, value in headers:
        if name.lower() == "authorization" and value is not None:
            scheme, _, token = value.decode("utf-8", "replace").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _refused(complaint_id: str, delivery: Delivery, body: Any, refusal: Refusal) -> outbox.Message:
    """`complaint.action_refused`: which command, and why (never the command's own words)."""
    action = body.get("action") if isinstance(body, dict) else None
    data = {
        "complaint_id": complaint_id,
        "actor": "system",
        "at": delivery.now.isoformat(),
        "command_id": delivery.event.id,
        "action": action if isinstance(action, str) and len(action) <= 64 else None,
        "status": refusal.status,
        "code": refusal.code,
        "reason": refusal.reason,
        "required_role": refusal.required_role,
        "missing": refusal.missing,
        "current_version": refusal.current_version,
        "retry_after": refusal.retry_after,
    }
    return outbox.complaint_event(
        EventType.ACTION_REFUSED,
        source=cases.SOURCE,
        complaint_id=complaint_id,
        data=data,
        at=delivery.now,
    )
