"""Events written straight to JSON (intake's accepted events, `outbox.complaint_event`) are,
byte for byte, what the contract models write: same fields, same order, same time format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import BaseModel

from services.intake import domain, handlers, repository
from shared import outbox
from shared.events import (
    CloudEvent,
    EventType,
    NotificationData,
    ReassignedData,
    ReceivedData,
    RoutedData,
    SubmittedData,
)
from tests.support import submission

_MODELS: dict[str, type[BaseModel]] = {
    EventType.RECEIVED: ReceivedData,
    EventType.ROUTED: RoutedData,
    EventType.UNASSIGNED: ReassignedData,
}


def _as_the_models_write_it(value: bytes) -> bytes:
    """The event in `value`, validated by the contract models and written by them again."""
    event = CloudEvent.model_validate_json(value)
    data = _MODELS[event.type].model_validate(event.data)
    event.data = data.model_dump(mode="json", exclude_none=True)
    return event.to_bytes()


def _accepted(
    doc: dict, choice: domain.Assignment, history: domain.History, now: datetime
) -> list[outbox.Message]:
    data = SubmittedData.model_validate(doc)
    decision = domain.decide(data, history=history, routing_rules=[], received_at=now)
    submitted = data.model_dump(mode="json", exclude_none=True)
    row = repository.NewComplaint("c-1", data, decision, "web/form", submitted)
    return handlers.accepted_events(
        row, choice, history, outbox.json_time(now), {"traceparent": "x"}
    )


@pytest.mark.parametrize(
    ("doc", "choice", "history", "now"),
    [
        (
            submission("web"),
            domain.Assignment("amy", "most spare capacity (3), speaks nl"),
            domain.History(),
            datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC),
        ),
        (
            submission(
                "phone",
                category=None,
                description="De oplader vloog in brand, ik ga naar de rechter. Şikâyet ünlü “x”",
                staff_involved=["amy", "bob"],
                occurred_at="2026-11-20T08:00:00+02:00",
                order_id="o-9",
                desired_outcome="refund",
            ),
            domain.Assignment(None, "nobody available with spare capacity: left in the queue"),
            domain.History(complaints_30d=4, complaints_total=9, mean_satisfaction=10 / 3),
            datetime(2026, 11, 22, 10, 0, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_accepted_events_are_written_as_the_models_write_them(doc, choice, history, now):
    messages = _accepted(doc, choice, history, now)
    types = [m.event.type for m in messages]
    assert types[:2] == [EventType.RECEIVED, EventType.ROUTED]
    assert (EventType.UNASSIGNED in types) == (choice.staff_id is None)
    for message in messages:
        value = message.event.to_bytes()
        assert value == _as_the_models_write_it(value)
        assert CloudEvent.model_validate_json(value).id == message.event.id


def test_a_complaint_event_is_what_new_event_writes():
    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    data = NotificationData(
        complaint_id="c-1",
        notification_id="n-1",
        kind="receipt",
        medium="email",
        language="nl",
        at=at,
    )
    message = outbox.complaint_event(
        EventType.NOTIFICATION_SENT, source="notify", complaint_id="c-1", data=data, at=at
    )
    event = CloudEvent.model_validate_json(message.event.to_bytes())
    assert message.topic == "complaints.events.v1" and message.key == "c-1"
    assert message.event.to_bytes() == event.to_bytes()
    assert event.subject == "c-1" and event.time == at
    assert event.data == data.model_dump(mode="json", exclude_none=True)


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 22, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 22, 10, 0, 0, 5, tzinfo=UTC),
        datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    ],
)
def test_times_are_written_as_the_models_write_them(at):
    assert (
        outbox.json_time(at)
        == NotificationData.model_construct(at=at).model_dump(mode="json", include={"at"})["at"]
    )
