"""Resolution's use cases: every event of a complaint lands on its case, once."""

from __future__ import annotations

from opentelemetry import trace

from services.resolution import domain, repository
from shared.db import Conn
from shared.events import ChannelKeyData, EventType, ReassignedData, ReceivedData, RoutedData
from shared.routing import AnyData, Delivery, EventRouter

CONSUMER = "resolution"

# Every event of a complaint lands on its case's timeline; some also change the case.
events = EventRouter(CONSUMER)


@events.on(EventType.RECEIVED, model=ReceivedData)
async def received(conn: Conn, data: ReceivedData, delivery: Delivery) -> None:
    await repository.add_received(conn, data)
    await on_timeline(conn, delivery)


@events.on(EventType.ROUTED, model=RoutedData)
async def routed(conn: Conn, data: RoutedData, delivery: Delivery) -> None:
    await repository.open_case(conn, data, domain.open_case(data))
    await on_timeline(conn, delivery)


@events.on(EventType.REASSIGNED, model=ReassignedData)
async def reassigned(conn: Conn, data: ReassignedData, delivery: Delivery) -> None:
    await repository.set_assignee(conn, data.complaint_id, data.to_assignee)
    await on_timeline(conn, delivery)


@events.otherwise(model=AnyData)
async def other(conn: Conn, _: AnyData, delivery: Delivery) -> None:
    await on_timeline(conn, delivery)


async def on_timeline(conn: Conn, delivery: Delivery) -> None:
    """Record the event on its complaint's timeline (an event about no complaint, such as a
    dead-letter notice, has none)."""
    complaint_id = delivery.complaint_id
    if not complaint_id:
        return
    trace.get_current_span().set_attribute("complaint.id", complaint_id)
    entry = domain.timeline_entry(delivery.event, received=delivery.now)
    await repository.append_timeline(conn, complaint_id, delivery.event.id, entry)


# Channel keys' lifecycle, learnt from intake (hashes only): a topic of these two types only.
keys = EventRouter(CONSUMER, strict=True)


@keys.on(EventType.CHANNEL_KEY_CREATED, EventType.CHANNEL_KEY_REVOKED, model=ChannelKeyData)
async def key_changed(conn: Conn, key: ChannelKeyData, delivery: Delivery) -> None:
    revoked = delivery.event.type == EventType.CHANNEL_KEY_REVOKED
    await repository.learn_key(conn, key, revoked=revoked)
