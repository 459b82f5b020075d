"""Notify's SQL (tables in the `notify` schema)."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.notify.domain import Message
from shared.db import Conn
from shared.events import CloudEvent


async def plan(
    conn: Conn,
    *,
    notification_id: str,
    complaint_id: str,
    message: Message,
    trace_headers: dict[str, str],
) -> bool:
    """Queue a message for delivery; False if this complaint already has one of that kind."""
    inserted = await conn.fetchval(
        """INSERT INTO notifications (notification_id, complaint_id, kind, medium, recipient,
               language, subject, body, trace_headers)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (complaint_id, kind) DO NOTHING RETURNING true""",
        notification_id,
        complaint_id,
        message.kind,
        message.medium,
        message.recipient,
        message.language,
        message.subject,
        message.body,
        trace_headers,
    )
    return inserted is not None


async def claim_due(conn: Conn, *, limit: int, lease_s: float) -> list[asyncpg.Record]:
    """Lease due messages to this mailer; a crashed mailer's lease runs out and they return."""
    return await conn.fetch(
        """UPDATE notifications SET lease_until = now() + make_interval(secs => $2),
               attempts = attempts + 1
           WHERE notification_id IN (
               SELECT notification_id FROM notifications
               WHERE status = 'pending' AND next_attempt_at <= now()
                 AND (lease_until IS NULL OR lease_until < now())
               ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING *""",
        limit,
        lease_s,
    )


async def mark_sent(conn: Conn, notification_id: str) -> None:
    await conn.execute(
        "UPDATE notifications SET status = 'sent', sent_at = now(), lease_until = NULL "
        "WHERE notification_id = $1",
        notification_id,
    )


async def mark_failed(
    conn: Conn, notification_id: str, error: str, *, final: bool, retry_in_s: float
) -> None:
    await conn.execute(
        """UPDATE notifications SET status = CASE WHEN $3 THEN 'failed' ELSE 'pending' END,
               last_error = $2, lease_until = NULL,
               next_attempt_at = now() + make_interval(secs => $4)
           WHERE notification_id = $1""",
        notification_id,
        error,
        final,
        retry_in_s,
    )


async def remember_team(conn: Conn, complaint_id: str, team: str) -> None:
    await conn.execute(
        """INSERT INTO complaint_teams (complaint_id, team) VALUES ($1, $2)
           ON CONFLICT (complaint_id) DO UPDATE SET team = EXCLUDED.team""",
        complaint_id,
        team,
    )


async def add_to_stream(conn: Conn, event: CloudEvent, complaint_id: str | None) -> None:
    """Keep an event for the live stream, tagged with its complaint's team when known."""
    await conn.execute(
        """INSERT INTO stream_events (event_id, complaint_id, type, team, at, event)
           VALUES ($1, $2, $3,
                   (SELECT team FROM complaint_teams WHERE complaint_id = $2), $4, $5)
           ON CONFLICT (event_id) DO NOTHING""",
        event.id,
        complaint_id,
        event.type,
        event.time,
        event.model_dump(mode="json", exclude_none=True),
    )


async def stream_after(
    conn: Conn, after_id: int, *, teams: list[str] | None, limit: int = 200
) -> list[asyncpg.Record]:
    """Stream events after `after_id`, for `teams` (None: all)."""
    return await conn.fetch(
        """SELECT id, type, event FROM stream_events
           WHERE id > $1 AND ($2::text[] IS NULL OR team = ANY($2::text[]))
           ORDER BY id LIMIT $3""",
        after_id,
        teams,
        limit,
    )


async def stream_head(conn: Conn) -> int:
    value: Any = await conn.fetchval("SELECT coalesce(max(id), 0) FROM stream_events")
    return int(value)
