"""Reading decision-log rows as their events, and published heads out of raw record values."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from services.resolution.audit_log import check, heads_in
from services.resolution.case import SYSTEM, Context, Event, Refusal, RoutedFacts, open_case
from services.resolution.policy import default_policy
from shared.events import Category, Channel, Severity

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def _events() -> list[Event]:
    facts = RoutedFacts("c1", "billing", Severity.LOW, Category.STOCK, Channel.WEB, "k1", T0)
    events = open_case(facts, Context(SYSTEM, default_policy(), T0))
    assert not isinstance(events, Refusal)
    return events


def _row(e: Event, **changes: Any) -> dict[str, Any]:
    row = {
        "seq": e.seq,
        "event_id": e.event_id,
        "type": str(e.type),
        "at": e.at,
        "actor": e.actor,
        "data": json.loads(json.dumps(e.data())),
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    }
    return {**row, **changes}


def test_rows_as_written_hold_and_match_their_heads() -> None:
    events = _events()
    heads = {e.event_id: e.hash for e in events}
    assert check([_row(e) for e in events], heads) is None


def test_a_column_edited_alone_breaks_the_entry() -> None:
    events = _events()
    rows = [_row(e) for e in events]
    rows[1] = _row(events[1], actor="someone-else")
    broken = check(rows, {})
    assert broken is not None and broken.index == 1 and "columns" in broken.reason


def test_unreadable_data_breaks_the_entry() -> None:
    events = _events()
    rows = [_row(events[0], data={"complaint_id": "c1"}), *(_row(e) for e in events[1:])]
    broken = check(rows, {})
    assert broken is not None and broken.index == 0 and "unreadable" in broken.reason


def test_heads_are_read_from_decision_events_only() -> None:
    (event, *_) = _events()
    values = [
        json.dumps({"id": event.event_id, "data": event.data()}).encode(),
        json.dumps({"id": "x", "data": {"complaint_id": "c2"}}).encode(),  # no chain
        b"not json",
        None,
        json.dumps([1, 2]).encode(),
        b"[" * 10_000 + b"]" * 10_000,  # a hostile producer's record on the topic
    ]
    assert heads_in(values) == {"c1": {event.event_id: event.hash}}
