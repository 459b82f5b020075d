"""Resolution's consumers: every event of a complaint lands on its case, once; a routed one
opens the case; staff commands from Kafka are decided as over HTTP."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace
from pydantic import ValidationError

from services.resolution import actions, cases, domain, repository
from services.resolution.case import SYSTEM, Kind, Reassigned, Refusal
from shared import auth, directory, outbox
from shared.db import Conn
from shared.events import EventType, ReassignedData, ReceivedData, RoutedData
from shared.kafka import Rejected
from shared.routing import AnyData, Delivery, EventRouter
from shared.web import field_errors, summarise

CONSUMER = "resolution"


def event_router(policy: cases.PolicySource) -> EventRouter:
    """Every event of a complaint lands on its case's timeline; a routed complaint opens its
    case under the active `policy`. Resolution's own decisions (its case events) are already
    in its decision log: skipped."""
    events = EventRouter(CONSUMER)
    events.ignore(*Kind, EventType.ACTION_REFUSED)

    @events.on(EventType.RECEIVED, model=ReceivedData)
    async def received(conn: Conn, data: ReceivedData, delivery: Delivery) -> None:
        await repository.add_received(conn, data)
        await on_timeline(conn, delivery)

    @events.on(EventType.ROUTED, model=RoutedData)
    async def routed(conn: Conn, data: RoutedData, delivery: Delivery) -> None:
        await on_timeline(conn, delivery)
        await cases.open_routed(conn, data, policy=await policy(conn, None), now=delivery.now)

    @events.on(EventType.REASSIGNED, model=ReassignedData)
    async def reassigned(conn: Conn, data: ReassignedData, delivery: Delivery) -> None:
        await on_timeline(conn, delivery)
        loaded = await cases.load(conn, data.complaint_id)
        if loaded is not None:  # a case not opened yet keeps routing's holder until it opens
            await cases.act(
                conn,
                loaded,
                Reassigned(data.to_assignee, data.reason, data.from_assignee),
                SYSTEM,
                policy=await policy(conn, None),
                now=delivery.now,
            )

    @events.otherwise(model=AnyData)
    async def other(conn: Conn, _: AnyData, delivery: Delivery) -> None:
        await on_timeline(conn, delivery)

    return events


async def on_timeline(conn: Conn, delivery: Delivery) -> None:
    """Record the event on its complaint's timeline (an event about no complaint, such as a
    dead-letter notice, has none)."""
    complaint_id = delivery.complaint_id
    if not complaint_id:
        return
    trace.get_current_span().set_attribute("complaint.id", complaint_id)
    entry = domain.timeline_entry(delivery.event, received=delivery.now)
    await repository.append_timeline(conn, complaint_id, delivery.event.id, entry)


# What resolution learns from intake, which owns them: channel keys (hashes only) and the
# staff directory; topics of these types only.
keys = EventRouter(CONSUMER, strict=True)
directory.learn_keys(keys)
staff = EventRouter(CONSUMER, strict=True)
directory.learn_staff(staff)


Verify = Callable[[Conn, str], Awaitable[directory.Member]]


def command_router(verify: Verify, policy: cases.PolicySource) -> EventRouter:
    """Staff actions from `complaints.commands.v1`: the bearer token in the `authorization`
    header is checked exactly as over HTTP, the action decided as over HTTP; a refused command
    (token, form, authority, state) yields `complaint.action_refused`, never silence. The
    command's event id makes it idempotent (the inbox)."""
    commands = EventRouter(f"{CONSUMER}-commands", strict=True)

    @commands.on(EventType.COMMAND, model=AnyData)
    async def command(conn: Conn, data: AnyData, delivery: Delivery) -> None:
        complaint_id = delivery.complaint_id
        if not complaint_id:
            raise Rejected("schema_violation", "a command names its complaint in `subject`")
        outcome = await _run_command(conn, data.root, delivery, verify, policy)
        if isinstance(outcome, Refusal):
            await outbox.enqueue(conn, [_refused(complaint_id, delivery, data.root, outcome)])

    return commands


async def _run_command(
    conn: Conn, body: Any, delivery: Delivery, verify: Verify, policy: cases.PolicySource
) -> Refusal | None:
    """Check, decide and keep one command; the refusal, if any."""
    token = _bearer(delivery.record.headers)
    try:
        member = await verify(conn, token or "")
    except auth.InvalidToken as exc:
        return Refusal(401, f"staff token rejected: {exc}", "unauthorized")
    try:
        action = actions.ACTION.validate_python(body)
    except ValidationError as exc:
        return Refusal(422, summarise(field_errors(exc.errors(), prefix=("data",))), "invalid")
    complaint_id = delivery.complaint_id or ""
    loaded = await cases.load(conn, complaint_id)
    if loaded is None:
        return Refusal(404, f"no complaint {complaint_id}", "not_found")
    result = await cases.staff_action(
        conn, loaded, action, member, policies=policy, now=delivery.now
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
    }
    return outbox.complaint_event(
        EventType.ACTION_REFUSED,
        source=cases.SOURCE,
        complaint_id=complaint_id,
        data=data,
        at=delivery.now,
    )
