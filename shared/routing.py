"""Typed event routing: (event type, data model, handler) registered once per consumer.

A router turns a consumed record into a handler's call: it decodes the CloudEvent (size and
depth limits), finds the route for its type, validates the data against the route's model (a
payload that does not match is `Rejected`, so it is dead-lettered with the fields named),
records the event id in the inbox (a redelivery changes nothing) and calls
`handler(conn, data, delivery)` in the consumer's transaction. Handlers never see raw dicts,
and no consumer branches on event types. A consumer that applies a whole batch at once
(`Service.consume_together`) decodes each record with `decode` instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, RootModel, ValidationError

from shared import inbox
from shared.db import Conn
from shared.events import CloudEvent
from shared.kafka import Record, Rejected, parse_event
from shared.web import field_errors, summarise

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Delivery:
    """What a handler knows of the event besides its data: the envelope and when it arrived."""

    event: CloudEvent
    record: Record
    now: datetime

    @property
    def complaint_id(self) -> str | None:
        return self.event.complaint_id()


Handler = Callable[[Conn, M, Delivery], Awaitable[None]]


class AnyData(RootModel[Any]):
    """Data of any shape: for a route that reads only the envelope."""


@dataclass(frozen=True)
class Route(Generic[M]):
    model: type[M]
    handle: Handler[M]


def validate(event: CloudEvent, model: type[M]) -> M:
    """`event.data` as `model`, or `Rejected` naming every field that does not match."""
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        reason = summarise(field_errors(exc.errors(), prefix=("data",)))
        raise Rejected("schema_violation", f"{event.type}: {reason}") from None


def decode(record: Record, models: Mapping[str, type[BaseModel]]) -> tuple[CloudEvent, Any]:
    """The event in `record` and its data validated by the model for its type (None for a type
    with no model), or `Rejected` saying why not. For consumers that apply a batch at once."""
    event = parse_event(record)
    model = models.get(event.type)
    return event, (validate(event, model) if model is not None else None)


class EventRouter:
    """The routes of one consumer (its inbox name); see the module docstring.

    An event of a type with no route goes to the `otherwise` route if there is one; else it
    is skipped, or, on a `strict` router (a topic that carries only these types), rejected.
    """

    def __init__(self, consumer: str, *, strict: bool = False) -> None:
        self.consumer = consumer
        self.strict = strict
        self._routes: dict[str, Route[Any]] = {}
        self._otherwise: Route[Any] | None = None
        self._ignored: set[str] = set()

    def on(self, *types: str, model: type[M]) -> Callable[[Handler[M]], Handler[M]]:
        """Register the decorated handler for events of `types`, their data read as `model`."""

        def register(handle: Handler[M]) -> Handler[M]:
            for type_ in types:
                if type_ in self._routes:
                    raise ValueError(f"{self.consumer}: {type_} is routed twice")
                self._routes[type_] = Route(model, handle)
            return handle

        return register

    def ignore(self, *types: str) -> None:
        """Skip events of `types` (not even recorded in the inbox), `otherwise` or not."""
        self._ignored.update(types)

    def otherwise(self, *, model: type[M]) -> Callable[[Handler[M]], Handler[M]]:
        """Register the decorated handler for every type without a route of its own."""

        def register(handle: Handler[M]) -> Handler[M]:
            self._otherwise = Route(model, handle)
            return handle

        return register

    @property
    def ignored(self) -> frozenset[str]:
        """The types this router skips (see `ignore`)."""
        return frozenset(self._ignored)

    @property
    def types(self) -> frozenset[str] | None:
        """The types this router acts on; None when it acts on every type (`otherwise`)."""
        return None if self._otherwise is not None else frozenset(self._routes)

    def route(self, event: CloudEvent) -> Route[Any] | None:
        """The route for `event`'s type; None to skip it; `Rejected` on a strict router."""
        if event.type in self._ignored:
            return None
        found = self._routes.get(event.type, self._otherwise)
        if found is None and self.strict:
            raise Rejected("unknown_type", f"type {event.type!r} does not belong on this topic")
        return found

    async def __call__(self, conn: Conn, record: Record, *, now: datetime) -> None:
        """Handle one record (the `Service.consume` handler shape)."""
        event = parse_event(record)
        route = self.route(event)
        if route is None:
            return
        data = validate(event, route.model)
        if not await inbox.first_time(conn, self.consumer, event.id):
            return
        await route.handle(conn, data, Delivery(event, record, now))
