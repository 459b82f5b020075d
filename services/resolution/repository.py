"""Resolution's SQL (tables in the `resolution` schema)."""

from __future__ import annotations

from typing import Any

from services.resolution.domain import OpenedCase, Status, TimelineEntry
from shared.db import Conn
from shared.events import ReceivedData, RoutedData


async def add_received(conn: Conn, data: ReceivedData) -> None:
    """A case row for a received complaint (no-op if routing got there first)."""
    await conn.execute(
        """INSERT INTO cases (complaint_id, status, channel, external_id, category,
               staff_involved, received_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (complaint_id) DO NOTHING""",
        data.complaint_id,
        Status.RECEIVED.value,
        data.channel.value,
        data.external_id,
        data.category.value if data.category else None,
        [{"staff_id": s, "responded_at": None} for s in data.staff_involved],
        data.received_at,
    )


async def open_case(conn: Conn, routed: RoutedData, case: OpenedCase) -> None:
    """Record where the complaint was routed and why, and start its clocks."""
    await conn.execute(
        """INSERT INTO cases (complaint_id, status, channel, external_id, category, severity,
               severity_reasons, team, assignee, language, staff_involved, received_at,
               routed_at, acknowledge_by, resolve_by, category_reason, severity_score,
               team_reason, assignment_reason, flags, review_by, customer_history)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   $18, $19, $20, $21, $22)
           ON CONFLICT (complaint_id) DO UPDATE SET
               status = EXCLUDED.status, category = EXCLUDED.category,
               severity = EXCLUDED.severity, severity_reasons = EXCLUDED.severity_reasons,
               team = EXCLUDED.team, assignee = EXCLUDED.assignee, language = EXCLUDED.language,
               routed_at = EXCLUDED.routed_at, acknowledge_by = EXCLUDED.acknowledge_by,
               resolve_by = EXCLUDED.resolve_by, category_reason = EXCLUDED.category_reason,
               severity_score = EXCLUDED.severity_score, team_reason = EXCLUDED.team_reason,
               assignment_reason = EXCLUDED.assignment_reason, flags = EXCLUDED.flags,
               review_by = EXCLUDED.review_by, customer_history = EXCLUDED.customer_history,
               updated_at = now()""",
        routed.complaint_id,
        case.status.value,
        routed.channel.value,
        routed.external_id,
        routed.category.value,
        routed.severity.value,
        routed.severity_reasons,
        routed.team,
        routed.assignee,
        routed.language,
        [{"staff_id": s, "responded_at": None} for s in routed.staff_involved],
        routed.received_at,
        routed.routed_at,
        case.deadlines.acknowledge_by,
        case.deadlines.resolve_by,
        routed.category_reason,
        routed.severity_score,
        routed.team_reason,
        routed.assignment_reason,
        routed.flags,
        routed.review_by,
        routed.customer_history,
    )


async def set_assignee(conn: Conn, complaint_id: str, assignee: str | None) -> None:
    await conn.execute(
        "UPDATE cases SET assignee = $2, updated_at = now() WHERE complaint_id = $1",
        complaint_id,
        assignee,
    )


async def append_timeline(
    conn: Conn, complaint_id: str, event_id: str, entry: TimelineEntry
) -> None:
    await conn.execute(
        """INSERT INTO timeline (complaint_id, event_id, type, at, actor, detail)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING""",
        complaint_id,
        event_id,
        entry.type,
        entry.at,
        entry.actor,
        entry.detail,
    )


async def load_view(conn: Conn, complaint_id: str) -> dict[str, Any] | None:
    """The case with its timeline, or None."""
    case = await conn.fetchrow("SELECT * FROM cases WHERE complaint_id = $1", complaint_id)
    if case is None:
        return None
    entries = await conn.fetch(
        "SELECT type, at, actor, detail FROM timeline WHERE complaint_id = $1 ORDER BY at, id",
        complaint_id,
    )
    return {"case": dict(case), "timeline": [dict(e) for e in entries]}
