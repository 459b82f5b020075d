"""`audit verify` recomputes each case's hash chain from `case_events` and compares it with the
heads the published events carried: an edited entry, a deleted last entry, a case deleted whole
and a chain rewritten whole with fresh hashes are each named, at their first broken entry."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from services.resolution import admin, audit_log
from services.resolution.audit import entry_hash
from services.resolution.case import (
    SYSTEM,
    Actor,
    Claim,
    Context,
    Event,
    Note,
    Refusal,
    RoutedFacts,
    decide,
    open_case,
    replay,
)
from services.resolution.policy import Role, default_policy
from shared import topics
from shared.db import admin_transaction
from shared.events import Category, Channel, Severity, new_event
from shared.settings import Settings
from tests.support import complaints_cli_text

POLICY = default_policy()
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
TEAM = "billing"


def _decided(complaint_id: str) -> list[Event]:
    """A case opened, noted and claimed, as the pure decider seals it."""
    facts = RoutedFacts(
        complaint_id, TEAM, Severity.HIGH, Category.PRODUCT, Channel.WEB, "cust-1", T0, "a1"
    )
    events = open_case(facts, Context(SYSTEM, POLICY, T0))
    assert not isinstance(events, Refusal)
    for actor, command in (
        (Actor("a1", role=Role.AGENT, team=TEAM), Note("called the customer back")),
        (Actor("a2", role=Role.AGENT, team=TEAM), Claim()),
    ):
        more = decide(replay(events), command, Context(actor, POLICY, T0 + timedelta(hours=1)))
        assert not isinstance(more, Refusal), more
        events += more
    return events


async def _sql(settings: Settings, query: str, *args: Any) -> list[asyncpg.Record]:
    async with admin_transaction(settings.require_database_url(), "resolution") as conn:
        return await conn.fetch(query, *args)


async def _store(settings: Settings, events: list[Event]) -> None:
    """The events as resolution writes its decision log (no case row: the audit reads only
    the log)."""
    async with admin_transaction(settings.require_database_url(), "resolution") as conn:
        await conn.executemany(
            """INSERT INTO case_events (complaint_id, seq, event_id, type, at, actor, data,
                   prev_hash, hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9)""",
            [
                (
                    e.complaint_id,
                    e.seq,
                    e.event_id,
                    str(e.type),
                    e.at,
                    e.actor,
                    json.dumps(e.data()),
                    e.prev_hash,
                    e.hash,
                )
                for e in events
            ],
        )


async def _publish(settings: Settings, events: list[Event]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for e in events:
            cloud = new_event(
                type=str(e.type),
                source="resolution",
                subject=e.complaint_id,
                data=e.data(),
                time=e.at,
            ).model_copy(update={"id": e.event_id})
            await producer.send_and_wait(
                topics.EVENTS,
                cloud.to_bytes(),
                key=e.complaint_id.encode(),
                headers=[("content-type", b"application/cloudevents+json")],
            )
    finally:
        await producer.stop()


async def _case(settings: Settings) -> tuple[str, list[Event]]:
    """A fresh case, logged and published."""
    complaint_id = f"audit-{uuid.uuid4().hex[:10]}"
    events = _decided(complaint_id)
    await _store(settings, events)
    await _publish(settings, events)
    return complaint_id, events


async def _verdict(settings: Settings, complaint_id: str) -> admin.CaseAudit:
    report = await admin.verify_audit(settings, complaint_id=complaint_id)
    (case,) = report.cases
    return case


async def test_an_intact_chain_verifies(settings: Settings) -> None:
    complaint_id, events = await _case(settings)
    case = await _verdict(settings, complaint_id)
    assert (case.entries, case.broken) == (len(events), None)

    code, out, _ = await complaints_cli_text(
        settings, "audit", "verify", "--complaint", complaint_id
    )
    assert code == 0 and f"OK      {complaint_id}" in out


async def test_an_edited_entry_is_named(settings: Settings) -> None:
    complaint_id, events = await _case(settings)
    edited = events[-2]  # the note
    await _sql(
        settings,
        """UPDATE case_events SET data = jsonb_set(data, '{text}', '"nothing happened"')
           WHERE event_id = $1""",
        edited.event_id,
    )
    broken = (await _verdict(settings, complaint_id)).broken
    assert broken is not None
    assert (broken.index, broken.event_id) == (len(events) - 2, edited.event_id)
    assert "altered" in broken.reason

    code, out, err = await complaints_cli_text(
        settings, "audit", "verify", "--complaint", complaint_id
    )
    assert code == 1
    assert f"BROKEN  {complaint_id}  entry {edited.seq}" in out
    assert edited.event_id in " ".join(err.split())


async def test_a_deleted_last_entry_is_caught_by_its_published_head(settings: Settings) -> None:
    complaint_id, events = await _case(settings)
    await _sql(
        settings,
        "DELETE FROM case_events WHERE complaint_id = $1 AND seq = $2",
        complaint_id,
        events[-1].seq,
    )
    assert audit_log.check(await _rows(settings, complaint_id), {}) is None  # alone it holds
    broken = (await _verdict(settings, complaint_id)).broken
    assert broken is not None
    assert (broken.index, broken.event_id) == (len(events) - 1, events[-1].event_id)
    assert "missing" in broken.reason


async def test_a_case_deleted_whole_is_found_from_its_heads(settings: Settings) -> None:
    complaint_id, events = await _case(settings)
    await _sql(settings, "DELETE FROM case_events WHERE complaint_id = $1", complaint_id)
    case = await _verdict(settings, complaint_id)
    assert case.entries == 0 and case.broken is not None
    assert case.broken.event_id in {e.event_id for e in events}

    report = await admin.verify_audit(settings)  # every case: this one is still reported
    assert any(c.complaint_id == complaint_id and c.broken for c in report.cases)


async def test_a_chain_rewritten_whole_is_caught_only_by_the_published_heads(
    settings: Settings,
) -> None:
    complaint_id, events = await _case(settings)
    forged = _rewritten(events, at=1, detail={"note": "forged"})
    for e in forged[1:]:
        await _sql(
            settings,
            """UPDATE case_events SET data = $2, prev_hash = $3, hash = $4
               WHERE event_id = $1""",
            e.event_id,
            e.data(),
            e.prev_hash,
            e.hash,
        )
    assert audit_log.check(await _rows(settings, complaint_id), {}) is None  # self-consistent
    broken = (await _verdict(settings, complaint_id)).broken
    assert broken is not None
    assert (broken.index, broken.event_id) == (1, events[1].event_id)
    assert "rewritten" in broken.reason


async def test_an_unknown_complaint_is_an_error_not_a_pass(settings: Settings) -> None:
    code, _, err = await complaints_cli_text(
        settings, "audit", "verify", "--complaint", f"nobody-{uuid.uuid4().hex[:8]}"
    )
    assert code == 1 and "no entries" in err


def _rewritten(events: list[Event], *, at: int, detail: dict[str, Any]) -> list[Event]:
    """The events with entry `at`'s detail changed and every hash from there recomputed."""
    out = events[:at]
    head = events[at - 1].hash
    for index, e in enumerate(events[at:], start=at):
        changed = replace(e, detail={**e.detail, **detail} if index == at else e.detail)
        changed = replace(changed, prev_hash=head, hash="")
        head = entry_hash(head, changed.audit_entry())
        out.append(replace(changed, hash=head))
    return out


async def _rows(settings: Settings, complaint_id: str) -> list[Any]:
    return await _sql(
        settings,
        """SELECT seq, event_id, type, at, actor, data, prev_hash, hash
           FROM case_events WHERE complaint_id = $1 ORDER BY seq""",
        complaint_id,
    )
