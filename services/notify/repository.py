"""Notify's SQL (tables in the `notify` schema)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.notify.domain import Message, Window
from shared.db import Conn, wake_after_commit
from shared.events import CloudEvent

# The mailer, woken by a commit that planned a message.
WORKER = "mailer"


async def plan(
    conn: Conn,
    *,
    notification_id: str,
    complaint_id: str,
    message: Message,
    trace_headers: dict[str, str],
    held_for: str | None = None,
    due: datetime | None = None,
) -> bool:
    """Queue a message for delivery (or, `held_for` a digest, for that digest to carry); False
    if this complaint already has one of that kind. The commit wakes the mailer."""
    inserted = await conn.fetchval(
        """INSERT INTO notifications (notification_id, complaint_id, kind, medium, recipient,
               language, subject, body, trace_headers, status, digest_id, next_attempt_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                   CASE WHEN $10::text IS NULL THEN 'pending' ELSE 'held' END, $10,
                   coalesce($11, now()))
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
        held_for,
        due,
    )
    wake_after_commit(conn, WORKER)
    return inserted is not None


@dataclass(frozen=True)
class Planned:
    """A message to queue (see `plan`)."""

    notification_id: str
    complaint_id: str
    message: Message
    trace_headers: dict[str, str]
    held_for: str | None = None


async def plan_many(conn: Conn, plans: Sequence[Planned]) -> None:
    """Queue messages due now, in one statement (`plan` for each; a complaint that already has
    a message of that kind keeps it). The commit wakes the mailer."""
    if not plans:
        return
    await conn.execute(
        """INSERT INTO notifications (notification_id, complaint_id, kind, medium, recipient,
               language, subject, body, trace_headers, status, digest_id, next_attempt_at)
           SELECT id, c, k, m, r, l, s, b, t::jsonb,
                  CASE WHEN d IS NULL THEN 'pending' ELSE 'held' END, d, now()
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::text[], $10::text[])
                WITH ORDINALITY AS p(id, c, k, m, r, l, s, b, t, d, n)
           ORDER BY n
           ON CONFLICT (complaint_id, kind) DO NOTHING""",
        [p.notification_id for p in plans],
        [p.complaint_id for p in plans],
        [p.message.kind for p in plans],
        [p.message.medium for p in plans],
        [p.message.recipient for p in plans],
        [p.message.language for p in plans],
        [p.message.subject for p in plans],
        [p.message.body for p in plans],
        [json.dumps(p.trace_headers) for p in plans],
        [p.held_for for p in plans],
    )
    wake_after_commit(conn, WORKER)


async def lock_windows(conn: Conn, addresses: Sequence[str]) -> dict[str, Window]:
    """The addresses' receipt windows, locked until the transaction ends (created when new);
    locked in address order, so two batches sharing addresses cannot deadlock."""
    if not addresses:
        return {}
    rows = await conn.fetch(
        """INSERT INTO receipt_windows (address)
           SELECT a FROM unnest($1::text[]) AS u(a) ORDER BY a
           ON CONFLICT (address) DO UPDATE SET address = EXCLUDED.address
           RETURNING address, window_start, receipts, digest_id""",
        sorted(set(addresses)),
    )
    return {
        r["address"]: Window(
            start=r["window_start"], receipts=r["receipts"], digest_id=r["digest_id"]
        )
        for r in rows
    }


async def save_windows(conn: Conn, windows: dict[str, Window]) -> None:
    """Store the windows (`address -> window`) of addresses `lock_windows` locked."""
    if not windows:
        return
    await conn.execute(
        """UPDATE receipt_windows w SET window_start = u.s, receipts = u.r, digest_id = u.d
           FROM unnest($1::text[], $2::timestamptz[], $3::int[], $4::text[]) AS u(a, s, r, d)
           WHERE w.address = u.a""",
        list(windows),
        [w.start for w in windows.values()],
        [w.receipts for w in windows.values()],
        [w.digest_id for w in windows.values()],
    )


async def digest_open(conn: Conn, digest_id: str) -> bool:
    """Whether the digest still takes receipts: never claimed by a mailer (its list is read
    after its first claim commits, and fixed from then on). Locks it until the transaction
    ends, so a claim in the meantime skips it."""
    found = await conn.fetchval(
        """SELECT true FROM notifications
           WHERE notification_id = $1 AND kind = 'digest' AND status = 'pending'
             AND attempts = 0
           FOR UPDATE""",
        digest_id,
    )
    return found is not None


async def claim_due(
    conn: Conn, *, limit: int, lease_s: float, owner: uuid.UUID, holding: list[str]
) -> list[asyncpg.Record]:
    """Lease due messages to mailer `owner`; a dead mailer's lease runs out and they return.
    Never what `owner` is `holding` still (a lease it let run out is for another to take)."""
    return await conn.fetch(
        """UPDATE notifications SET lease_until = now() + make_interval(secs => $2),
               lease_owner = $3, attempts = attempts + 1
           WHERE notification_id IN (
               SELECT notification_id FROM notifications
               WHERE status = 'pending' AND next_attempt_at <= now()
                 AND (lease_until IS NULL OR lease_until < now())
                 AND notification_id <> ALL($4::text[])
               ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING notification_id, complaint_id, kind, medium, recipient, language,
                     subject, body, trace_headers, attempts""",
        limit,
        lease_s,
        owner,
        holding,
    )


async def digest_refs(conn: Conn, digest_ids: list[str]) -> dict[str, list[str]]:
    """The complaints each digest carries, oldest first."""
    rows = await conn.fetch(
        """SELECT digest_id, array_agg(complaint_id ORDER BY created_at, complaint_id) AS refs
           FROM notifications WHERE digest_id = ANY($1::text[]) AND status = 'held'
           GROUP BY digest_id""",
        digest_ids,
    )
    return {r["digest_id"]: list(r["refs"]) for r in rows}


# Statements that find messages by id spell their pending test so that the planner cannot
# match it to the due index's predicate (`status = 'pending'`): spelled that way, a generic
# plan made before the table was ever analysed (a young, fast-growing table) read every pending
# message for the ids (4,500 pending: 108 buffers and 0.7 ms a renewal, 3.3 ms a failure
# recorded; by the primary key 6 buffers and 0.06 ms). Ids joined to the table filter it by
# themselves too (`= ANY($1)`, the same rows as the join), so the primary key serves whatever
# order the join is planned in.
_PENDING_BY_ID = "coalesce(status, '') = 'pending'"
_SETTLED = "notification_id, complaint_id, kind, medium, language, digest_id"
_N_SETTLED = ", ".join("n." + c for c in _SETTLED.split(", "))

_RENEW = f"""UPDATE notifications SET lease_until = now() + make_interval(secs => $2)
    WHERE notification_id = ANY($1::text[]) AND lease_owner = $3 AND {_PENDING_BY_ID}
    RETURNING notification_id"""

_RELEASE = f"""UPDATE notifications SET lease_until = NULL, lease_owner = NULL,
        attempts = greatest(attempts - 1, 0)
    WHERE notification_id = ANY($1::text[]) AND lease_owner = $2 AND {_PENDING_BY_ID}"""

_MARK_SENT = f"""UPDATE notifications SET status = 'sent', sent_at = now(), lease_until = NULL,
        lease_owner = NULL, last_error = NULL
    WHERE notification_id = ANY($1::text[]) AND lease_owner = $2 AND {_PENDING_BY_ID}
    RETURNING {_SETTLED}"""

_MARK_FAILED = f"""UPDATE notifications n SET
        status = CASE WHEN f.final THEN 'failed' ELSE 'pending' END,
        last_error = f.error, lease_until = NULL, lease_owner = NULL,
        next_attempt_at = now() + make_interval(secs => f.retry_in)
    FROM unnest($1::text[], $2::text[], $3::bool[], $4::float8[]) AS f(id, error, final, retry_in)
    WHERE n.notification_id = ANY($1::text[]) AND n.notification_id = f.id
      AND n.lease_owner = $5 AND {_PENDING_BY_ID.replace("status", "n.status")}
    RETURNING n.status, {_N_SETTLED}"""

# The digests' ids filter the table by themselves too (the same rows as the join): joined
# alone, a generic plan read every message to settle a digest's receipts (10 of 5,000: 103
# buffers and 0.6 ms; by the digest index 13 buffers and 0.15 ms).
_SETTLE_HELD = f"""UPDATE notifications n SET status = $3,
        sent_at = CASE WHEN $3 = 'sent' THEN now() END, last_error = d.error
    FROM unnest($1::text[], $2::text[]) AS d(id, error)
    WHERE n.digest_id = ANY($1::text[]) AND n.digest_id = d.id AND n.status = 'held'
    RETURNING {_N_SETTLED}"""


async def renew(
    conn: Conn, notification_ids: list[str], *, lease_s: float, owner: uuid.UUID
) -> set[str]:
    """Extend `owner`'s leases on these messages; return the ids it still holds."""
    rows = await conn.fetch(_RENEW, notification_ids, lease_s, owner)
    return {r["notification_id"] for r in rows}


async def release(conn: Conn, notification_ids: list[str], *, owner: uuid.UUID) -> None:
    """Give back leases on messages never handed to SMTP (their claim does not count)."""
    await conn.execute(_RELEASE, notification_ids, owner)


async def mark_sent(
    conn: Conn, notification_ids: list[str], *, owner: uuid.UUID
) -> list[asyncpg.Record]:
    """Mark `owner`'s messages sent; return those it still held (the others were settled or
    taken over by another mailer, which settles them)."""
    return await conn.fetch(_MARK_SENT, notification_ids, owner)


async def mark_failed(
    conn: Conn,
    notification_ids: list[str],
    errors: list[str],
    finals: list[bool],
    retries_in_s: list[float],
    *,
    owner: uuid.UUID,
) -> list[asyncpg.Record]:
    """Record failed attempts of `owner`'s messages: final ones fail, the others are due again
    after their back-off. Return the final failures it still held."""
    rows = await conn.fetch(_MARK_FAILED, notification_ids, errors, finals, retries_in_s, owner)
    return [r for r in rows if r["status"] == "failed"]


async def settle_held(
    conn: Conn, digest_ids: list[str], errors: list[str | None], *, status: str
) -> list[asyncpg.Record]:
    """Mark the receipts these digests carry as their digest went (`sent`, or `failed` with
    the digest's error)."""
    return await conn.fetch(_SETTLE_HELD, digest_ids, errors, status)


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


async def remember_teams(conn: Conn, teams: dict[str, str]) -> None:
    """The team of each complaint (`complaint_id -> team`), learnt from `complaint.routed`."""
    if teams:
        await conn.execute(
            """INSERT INTO complaint_teams (complaint_id, team)
               SELECT * FROM unnest($1::text[], $2::text[])
               ON CONFLICT (complaint_id) DO UPDATE SET team = EXCLUDED.team""",
            list(teams),
            list(teams.values()),
        )


async def add_many_to_stream(conn: Conn, events: Sequence[tuple[CloudEvent, bytes]]) -> None:
    """Keep events for the live stream in the given order, each tagged with its complaint's team
    when known; each event's stored form is its JSON as received."""
    if not events:
        return
    await conn.execute(
        """INSERT INTO stream_events (event_id, complaint_id, type, team, at, event)
           SELECT e, c, t, (SELECT team FROM complaint_teams WHERE complaint_id = c),
                  coalesce(a, now()), v::jsonb
           FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[])
                WITH ORDINALITY AS u(e, c, t, a, v, n)
           ORDER BY n
           ON CONFLICT (event_id) DO NOTHING""",
        [e.id for e, _ in events],
        [e.complaint_id() for e, _ in events],
        [e.type for e, _ in events],
        [e.time for e, _ in events],
        [raw.decode("utf-8") for _, raw in events],
    )
