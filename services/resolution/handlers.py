"""Resolution's use cases: every event of a complaint lands on its case, once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from opentelemetry import trace

from services.resolution import cases, domain, repository
from services.resolution.case import Kind
from services.resolution.policy import Policy
from shared import directory
from shared.db import Conn
from shared.events import EventType, ReassignedData, ReceivedData, RoutedData
from shared.routing import AnyData, Delivery, EventRouter

CONSUMER = "resolution"

PolicySource = Callable[[Conn], Awaitable[Policy]]


def event_router(policy: PolicySource) -> EventRouter:
    """Every event of a complaint lands on its case's timeline; a routed complaint opens its
    case under the active `policy`. Resolution's own decisions (its case events) are already
    in its decision log: skipped."""
    events = EventRouter(CONSUMER)
    events.ignore(*Kind)

    @events.on(EventType.RECEIVED, model=ReceivedData)
    async def received(conn: Conn, data: ReceivedData, delivery: Delivery) -> None:
        await repository.add_received(conn, data)
        await on_timeline(conn, delivery)

    @events.on(EventType.ROUTED, model=RoutedData)
    async def routed(conn: Conn, data: RoutedData, delivery: Delivery) -> None:
        await on_timeline(conn, delivery)
        await cases.open_routed(conn, data, policy=await policy(conn), now=delivery.now)

    @events.on(EventType.REASSIGNED, model=ReassignedData)
    async def reassigned(conn: Conn, data: ReassignedData, delivery: Delivery) -> None:
        await repository.set_assignee(conn, data.complaint_id, data.to_assignee)
        await on_timeline(conn, delivery)

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
