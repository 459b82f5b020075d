"""A batch of submissions through `accept_many` on the real PostgreSQL, pinned: the events it
writes to the outbox (bytes, keys, headers), the rows it stores, whom it assigns. Written from
the code before intake's hot loop was made cheaper, so a change of speed that changes a byte
fails here."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic_core
import pytest

from services.intake import handlers, repository
from shared import db, ids, migrate
from shared.events import SubmittedData
from tests.conftest import shared_schema
from tests.support import add_agent

NOW = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
TRACE = {"traceparent": "00-0af7651916cd43dd8445a5ef6b3e9c1f-b7ad6b7169203331-01"}


@pytest.fixture
async def pool(database: str) -> AsyncIterator[db.Pool]:
    migrations = migrate.for_service("services.intake.migrations")
    async with shared_schema(database, "intakebatch", migrations) as (_name, pool):
        yield pool


@pytest.fixture
def numbered_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Complaint and event ids in the order they are drawn, so the bytes can be pinned."""
    counter = itertools.count(1)
    monkeypatch.setattr(ids, "new_uuid", lambda: f"00000000-0000-4000-8000-{next(counter):012d}")


def _submitted(external_id: str, channel: str, **fields: Any) -> handlers.Submission:
    doc = {"external_id": external_id, "channel": channel, **fields}
    return handlers.Submission(SubmittedData.model_validate(doc), f"{channel}/test", TRACE)


SANNE = {
    "id": "cust-1",
    "name": "Sanne de Vries",
    "email": "sanne@example.com",
    "phone": "+31 20 555 0101",
    "locale": "nl",
}


def _earlier() -> handlers.Submission:
    return _submitted("web-0", "web", customer=SANNE, description="Te laat.", category="service")


def _batch() -> list[handlers.Submission]:
    """Sanne's three new complaints (one names both members), two she sent before, and one
    in Turkish for a team with no members. Her history at web-2 counts the earlier complaint
    and web-1 and phone-1 of this batch: not the resent earlier one, which is stored already
    (it was counted twice before)."""
    return [
        _submitted(
            "web-1",
            "web",
            customer=SANNE,
            description="Mijn bestelling is al drie keer verkeerd bezorgd.",
            category="service",
            amount_at_stake={"amount": "89.00", "currency": "EUR"},
        ),
        _submitted(
            "phone-1",
            "phone",
            customer=SANNE,
            description="De oplader vloog in brand, ik ga naar de rechter. Şikâyet ünlü “x”",
            category="service",
            staff_involved=["amy", "bob"],
            amount_at_stake={"amount": "1200.00", "currency": "EUR"},
            occurred_at="2026-11-20T08:00:00+02:00",
            order_id="o-9",
            desired_outcome="refund",
        ),
        _submitted("web-1", "web", customer=SANNE, description="Again.", category="service"),
        _submitted("web-0", "web", customer=SANNE, description="Again.", category="service"),
        _submitted("web-2", "web", customer=SANNE, description="Weer niets.", category="service"),
        _submitted(
            "chat-1",
            "chat",
            customer={"id": "cust-2", "email": "ayse@example.com", "locale": "tr-TR"},
            description="Ürün bozuk geldi, iade istiyorum.",
        ),
    ]


async def _run_batches(pool: db.Pool) -> tuple[list[tuple[str, bool]], dict[str, Any]]:
    """The earlier submission two days before, then the batch; what the batch returned, and the
    outbox rows, complaints, holders and staff it left (the earlier submission's excluded)."""
    async with pool.acquire() as conn, conn.transaction():
        for staff_id in ("amy", "bob"):
            await add_agent(conn, staff_id, languages=["nl", "en"])
        ((earlier, _),) = await handlers.accept_many(
            conn, [_earlier()], now=NOW - timedelta(days=2)
        )
        await repository.cases_resolved(conn, [(earlier, "upheld", None, None)])
        await repository.cases_rated(conn, {earlier: 4})
        before = await conn.fetchval("SELECT max(id) FROM outbox")
        results = await handlers.accept_many(conn, _batch(), now=NOW)
        outbox = await conn.fetch(
            "SELECT topic, convert_from(key, 'UTF8') AS key, value, headers::text AS headers "
            "FROM outbox WHERE id > $1 ORDER BY id",
            before,
        )
        complaints = await conn.fetch(
            """SELECT complaint_id, channel, external_id, customer_id, category, category_reason,
                      severity, severity_reasons::text, severity_score, flags::text, team,
                      language, source, submission::text, amount_at_stake::text, currency,
                      received_at
               FROM complaints WHERE received_at = $1 ORDER BY complaint_id""",
            NOW,
        )
        holders = await conn.fetch(
            "SELECT complaint_id, team, staff_id, weight, assigned_at FROM assignments "
            "WHERE assigned_at = $1 ORDER BY complaint_id",
            NOW,
        )
        staff = await conn.fetch(
            "SELECT staff_id, open_load, last_assigned_at FROM staff ORDER BY staff_id"
        )
    return results, {
        "outbox": [dict(r) for r in outbox],
        "complaints": [dict(r) for r in complaints],
        "holders": [dict(r) for r in holders],
        "staff": [dict(r) for r in staff],
    }


# What the batch wrote, as the code before the change wrote it.
RESULTS = [
    ("00000000-0000-4000-8000-000000000004", True),
    ("00000000-0000-4000-8000-000000000005", True),
    ("00000000-0000-4000-8000-000000000004", False),
    ("00000000-0000-4000-8000-000000000001", False),
    ("00000000-0000-4000-8000-000000000007", True),
    ("00000000-0000-4000-8000-000000000008", True),
]

EVENTS: list[dict[str, Any]] = [
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000009",
        "source": "complaints/intake",
        "type": "complaint.received",
        "subject": "00000000-0000-4000-8000-000000000004",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000004",
            "actor": "system",
            "received_at": "2026-11-22T10:00:00.123456Z",
            "channel": "web",
            "external_id": "web-1",
            "customer": SANNE,
            "description": "Mijn bestelling is al drie keer verkeerd bezorgd.",
            "category": "service",
            "amount_at_stake": {"amount": "89.00", "currency": "EUR"},
            "staff_involved": [],
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000010",
        "source": "complaints/intake",
        "type": "complaint.routed",
        "subject": "00000000-0000-4000-8000-000000000004",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000004",
            "actor": "system",
            "routed_at": "2026-11-22T10:00:00.123456Z",
            "received_at": "2026-11-22T10:00:00.123456Z",
            "channel": "web",
            "external_id": "web-1",
            "category": "service",
            "category_reason": "given by the channel",
            "severity": "medium",
            "severity_reasons": [
                "+2 category service",
                "+1 repeat contact: 1 earlier in 30 days",
                "score 3 → medium",
            ],
            "team": "customer-care",
            "assignee": "bob",
            "language": "nl",
            "staff_involved": [],
            "deadlines": {
                "acknowledge_by": "2026-11-23T10:00:00.123456Z",
                "resolve_by": "2026-11-29T10:00:00.123456Z",
            },
            "severity_score": 3,
            "team_reason": "routing rule 4",
            "assignment_reason": "most spare capacity (10), speaks nl",
            "flags": [],
            "customer_history": {
                "complaints_30d": 1,
                "complaints_total": 1,
                "high_claims_90d": 0,
                "upheld": 1,
                "not_upheld": 0,
                "mean_satisfaction": 4.0,
                "remedies_above_spend_365d": 0,
            },
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000011",
        "source": "complaints/intake",
        "type": "complaint.received",
        "subject": "00000000-0000-4000-8000-000000000005",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000005",
            "actor": "system",
            "received_at": "2026-11-22T10:00:00.123456Z",
            "channel": "phone",
            "external_id": "phone-1",
            "customer": SANNE,
            "description": "De oplader vloog in brand, ik ga naar de rechter. Şikâyet ünlü “x”",
            "category": "service",
            "order_id": "o-9",
            "amount_at_stake": {"amount": "1200.00", "currency": "EUR"},
            "staff_involved": ["amy", "bob"],
            "desired_outcome": "refund",
            "occurred_at": "2026-11-20T08:00:00+02:00",
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000012",
        "source": "complaints/intake",
        "type": "complaint.routed",
        "subject": "00000000-0000-4000-8000-000000000005",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000005",
            "actor": "system",
            "routed_at": "2026-11-22T10:00:00.123456Z",
            "received_at": "2026-11-22T10:00:00.123456Z",
            "channel": "phone",
            "external_id": "phone-1",
            "category": "service",
            "category_reason": "given by the channel",
            "severity": "critical",
            "severity_reasons": [
                "+2 category service",
                "+2 amount at stake ≥ 1000 EUR",
                "+2 repeat contact: 2 earlier in 30 days",
                "+4 safety words: brand",
                "+2 legal words: rechter",
                "+1 channel phone",
                "score 13 → critical",
            ],
            "team": "customer-care",
            "language": "nl",
            "staff_involved": ["amy", "bob"],
            "deadlines": {
                "acknowledge_by": "2026-11-22T11:00:00.123456Z",
                "resolve_by": "2026-11-23T10:00:00.123456Z",
            },
            "severity_score": 13,
            "team_reason": "routing rule 4",
            "assignment_reason": "nobody available with spare capacity: left in the team queue",
            "flags": [],
            "customer_history": {
                "complaints_30d": 2,
                "complaints_total": 2,
                "high_claims_90d": 0,
                "upheld": 1,
                "not_upheld": 0,
                "mean_satisfaction": 4.0,
                "remedies_above_spend_365d": 0,
            },
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000013",
        "source": "complaints/intake",
        "type": "complaint.unassigned",
        "subject": "00000000-0000-4000-8000-000000000005",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000005",
            "actor": "system",
            "at": "2026-11-22T10:00:00.123456Z",
            "team": "customer-care",
            "reason": "nobody available with spare capacity: left in the team queue",
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000014",
        "source": "complaints/intake",
        "type": "complaint.received",
        "subject": "00000000-0000-4000-8000-000000000007",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000007",
            "actor": "system",
            "received_at": "2026-11-22T10:00:00.123456Z",
            "channel": "web",
            "external_id": "web-2",
            "customer": SANNE,
            "description": "Weer niets.",
            "category": "service",
            "staff_involved": [],
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000015",
        "source": "complaints/intake",
        "type": "complaint.routed",
        "subject": "00000000-0000-4000-8000-000000000007",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000007",
            "actor": "system",
            "routed_at": "2026-11-22T10:00:00.123456Z",
            "received_at": "2026-11-22T10:00:00.123456Z",
            "channel": "web",
            "external_id": "web-2",
            "category": "service",
            "category_reason": "given by the channel",
            "severity": "high",
            "severity_reasons": [
                "+2 category service",
                "+2 repeat contact: 3 earlier in 30 days",
                "score 4 → high",
            ],
            "team": "customer-care",
            "assignee": "amy",
            "language": "nl",
            "staff_involved": [],
            "deadlines": {
                "acknowledge_by": "2026-11-22T14:00:00.123456Z",
                "resolve_by": "2026-11-25T10:00:00.123456Z",
            },
            "severity_score": 4,
            "team_reason": "routing rule 4",
            "assignment_reason": "most spare capacity (8), speaks nl",
            "flags": [{"code": "frequent_complaints", "reason": "3 earlier complaints in 30 days"}],
            "review_by": "senior_agent",
            "customer_history": {
                "complaints_30d": 3,
                "complaints_total": 3,
                "high_claims_90d": 0,
                "upheld": 1,
                "not_upheld": 0,
                "mean_satisfaction": 4.0,
                "remedies_above_spend_365d": 0,
            },
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000016",
        "source": "complaints/intake",
        "type": "complaint.received",
        "subject": "00000000-0000-4000-8000-000000000008",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000008",
            "actor": "system",
            "received_at": "2026-11-22T10:00:00.123456Z",
            "channel": "chat",
            "external_id": "chat-1",
            "customer": {"id": "cust-2", "email": "ayse@example.com", "locale": "tr-TR"},
            "description": "Ürün bozuk geldi, iade istiyorum.",
            "staff_involved": [],
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000017",
        "source": "complaints/intake",
        "type": "complaint.routed",
        "subject": "00000000-0000-4000-8000-000000000008",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000008",
            "actor": "system",
            "routed_at": "2026-11-22T10:00:00.123456Z",
            "received_at": "2026-11-22T10:00:00.123456Z",
            "channel": "chat",
            "external_id": "chat-1",
            "category": "product",
            "category_reason": "tr rules matched 'bozuk'",
            "severity": "medium",
            "severity_reasons": ["+2 category product", "score 2 → medium"],
            "team": "product-quality",
            "language": "tr",
            "staff_involved": [],
            "deadlines": {
                "acknowledge_by": "2026-11-23T10:00:00.123456Z",
                "resolve_by": "2026-11-29T10:00:00.123456Z",
            },
            "severity_score": 2,
            "team_reason": "routing rule 1",
            "assignment_reason": "the team has no members: left in the team queue",
            "flags": [],
            "customer_history": {
                "complaints_30d": 0,
                "complaints_total": 0,
                "high_claims_90d": 0,
                "upheld": 0,
                "not_upheld": 0,
                "mean_satisfaction": None,
                "remedies_above_spend_365d": 0,
            },
        },
    },
    {
        "specversion": "1.0",
        "id": "00000000-0000-4000-8000-000000000018",
        "source": "complaints/intake",
        "type": "complaint.unassigned",
        "subject": "00000000-0000-4000-8000-000000000008",
        "time": "2026-11-22T10:00:00.123456Z",
        "datacontenttype": "application/json",
        "data": {
            "complaint_id": "00000000-0000-4000-8000-000000000008",
            "actor": "system",
            "at": "2026-11-22T10:00:00.123456Z",
            "team": "product-quality",
            "reason": "the team has no members: left in the team queue",
        },
    },
]

COMPLAINTS: list[dict[str, Any]] = [
    {
        "complaint_id": "00000000-0000-4000-8000-000000000004",
        "channel": "web",
        "external_id": "web-1",
        "customer_id": "cust-1",
        "category": "service",
        "category_reason": "given by the channel",
        "severity": "medium",
        "severity_reasons": [
            "+2 category service",
            "+1 repeat contact: 1 earlier in 30 days",
            "score 3 → medium",
        ],
        "severity_score": 3,
        "flags": [],
        "team": "customer-care",
        "language": "nl",
        "source": "web/test",
        "submission": {
            "channel": "web",
            "category": "service",
            "customer": SANNE,
            "description": "Mijn bestelling is al drie keer verkeerd bezorgd.",
            "external_id": "web-1",
            "staff_involved": [],
            "amount_at_stake": {"amount": "89.00", "currency": "EUR"},
        },
        "amount_at_stake": "89.00",
        "currency": "EUR",
    },
    {
        "complaint_id": "00000000-0000-4000-8000-000000000005",
        "channel": "phone",
        "external_id": "phone-1",
        "customer_id": "cust-1",
        "category": "service",
        "category_reason": "given by the channel",
        "severity": "critical",
        "severity_reasons": [
            "+2 category service",
            "+2 amount at stake ≥ 1000 EUR",
            "+2 repeat contact: 2 earlier in 30 days",
            "+4 safety words: brand",
            "+2 legal words: rechter",
            "+1 channel phone",
            "score 13 → critical",
        ],
        "severity_score": 13,
        "flags": [],
        "team": "customer-care",
        "language": "nl",
        "source": "phone/test",
        "submission": {
            "channel": "phone",
            "category": "service",
            "customer": SANNE,
            "order_id": "o-9",
            "description": "De oplader vloog in brand, ik ga naar de rechter. Şikâyet ünlü “x”",
            "external_id": "phone-1",
            "occurred_at": "2026-11-20T08:00:00+02:00",
            "staff_involved": ["amy", "bob"],
            "amount_at_stake": {"amount": "1200.00", "currency": "EUR"},
            "desired_outcome": "refund",
        },
        "amount_at_stake": "1200.00",
        "currency": "EUR",
    },
    {
        "complaint_id": "00000000-0000-4000-8000-000000000007",
        "channel": "web",
        "external_id": "web-2",
        "customer_id": "cust-1",
        "category": "service",
        "category_reason": "given by the channel",
        "severity": "high",
        "severity_reasons": [
            "+2 category service",
            "+2 repeat contact: 3 earlier in 30 days",
            "score 4 → high",
        ],
        "severity_score": 4,
        "flags": [{"code": "frequent_complaints", "reason": "3 earlier complaints in 30 days"}],
        "team": "customer-care",
        "language": "nl",
        "source": "web/test",
        "submission": {
            "channel": "web",
            "category": "service",
            "customer": SANNE,
            "description": "Weer niets.",
            "external_id": "web-2",
            "staff_involved": [],
        },
        "amount_at_stake": None,
        "currency": None,
    },
    {
        "complaint_id": "00000000-0000-4000-8000-000000000008",
        "channel": "chat",
        "external_id": "chat-1",
        "customer_id": "cust-2",
        "category": "product",
        "category_reason": "tr rules matched 'bozuk'",
        "severity": "medium",
        "severity_reasons": ["+2 category product", "score 2 → medium"],
        "severity_score": 2,
        "flags": [],
        "team": "product-quality",
        "language": "tr",
        "source": "chat/test",
        "submission": {
            "channel": "chat",
            "customer": {"id": "cust-2", "email": "ayse@example.com", "locale": "tr-TR"},
            "description": "Ürün bozuk geldi, iade istiyorum.",
            "external_id": "chat-1",
            "staff_involved": [],
        },
        "amount_at_stake": None,
        "currency": None,
    },
]

HOLDERS = [
    ("00000000-0000-4000-8000-000000000004", "customer-care", "bob", 2),
    ("00000000-0000-4000-8000-000000000005", "customer-care", None, 5),
    ("00000000-0000-4000-8000-000000000007", "customer-care", "amy", 3),
    ("00000000-0000-4000-8000-000000000008", "product-quality", None, 2),
]
# open load: amy took the earlier complaint and web-2, bob web-1
STAFF = [("amy", 5, NOW), ("bob", 2, NOW)]


async def test_a_batch_writes_the_pinned_events_rows_and_holders(pool, numbered_ids):
    results, state = await _run_batches(pool)
    assert results == [tuple(r) for r in RESULTS]
    assert [json.loads(r["value"]) for r in state["outbox"]] == EVENTS
    for row, event in zip(state["outbox"], EVENTS, strict=True):
        assert row["value"] == pydantic_core.to_json(event)  # byte for byte
        assert (row["topic"], row["key"]) == ("complaints.events.v1", event["subject"])
        assert json.loads(row["headers"]) == {
            **TRACE,
            "content-type": "application/cloudevents+json",
            "event-type": event["type"],
        }
    stored = [
        {
            **{k: v for k, v in row.items() if k != "received_at"},
            **{k: json.loads(row[k]) for k in ("severity_reasons", "flags", "submission")},
        }
        for row in state["complaints"]
    ]
    assert stored == COMPLAINTS
    assert {row["received_at"] for row in state["complaints"]} == {NOW}
    holders = [(h["complaint_id"], h["team"], h["staff_id"], h["weight"]) for h in state["holders"]]
    assert holders == HOLDERS
    assert [tuple(s.values()) for s in state["staff"]] == STAFF
