"""Intake's SQL, next to the functions that run it (tables in the `intake` schema)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.intake.domain import Routing
from shared.db import Conn
from shared.events import SubmittedData


async def insert_complaint(
    conn: Conn,
    *,
    complaint_id: str,
    data: SubmittedData,
    routing: Routing,
    source: str,
    received_at: datetime,
) -> bool:
    """Store a new complaint; False when (channel, external_id) is already known."""
    inserted = await conn.fetchval(
        """INSERT INTO complaints (complaint_id, channel, external_id, customer_id, category,
               category_reason, severity, severity_reasons, team, assignee, language,
               received_at, source, submission)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
           ON CONFLICT (channel, external_id) DO NOTHING
           RETURNING true""",
        complaint_id,
        data.channel.value,
        data.external_id,
        data.customer.id,
        routing.category.value,
        routing.category_reason,
        routing.severity.value,
        routing.severity_reasons,
        routing.team,
        routing.assignee,
        routing.language,
        received_at,
        source,
        data.model_dump(mode="json", exclude_none=True),
    )
    return inserted is not None


async def find_complaint_id(conn: Conn, channel: str, external_id: str) -> str:
    """The id of the complaint a channel submitted under `external_id`."""
    found = await conn.fetchval(
        "SELECT complaint_id FROM complaints WHERE channel = $1 AND external_id = $2",
        channel,
        external_id,
    )
    if found is None:
        raise LookupError(f"no complaint {channel}:{external_id}")
    return str(found)


async def add_channel_key(conn: Conn, *, key_id: str, channel: str, key_hash: str) -> None:
    await conn.execute(
        "INSERT INTO channel_keys (key_id, channel, key_hash) VALUES ($1, $2, $3)",
        key_id,
        channel,
        key_hash,
    )


async def channel_for_key(conn: Conn, key_hash: str) -> str | None:
    """The channel a live key belongs to, or None for unknown and revoked keys."""
    found = await conn.fetchval(
        "SELECT channel FROM channel_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )
    return None if found is None else str(found)


async def list_channel_keys(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT key_id, channel, created_at, revoked_at FROM channel_keys ORDER BY created_at"
    )


async def revoke_channel_key(conn: Conn, key_id: str) -> bool:
    """Revoke a key by id; False when no live key has that id."""
    result = await conn.execute(
        "UPDATE channel_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL",
        key_id,
    )
    return result.endswith(" 1")
