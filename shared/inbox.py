"""The inbox: a consumer records each handled event id in the transaction of its effect."""

from __future__ import annotations

from shared.db import Conn


async def first_time(conn: Conn, consumer: str, event_id: str) -> bool:
    """True once per (consumer, event id); a redelivered event gets False and changes nothing."""
    inserted = await conn.fetchval(
        "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) "
        "ON CONFLICT DO NOTHING RETURNING true",
        consumer,
        event_id,
    )
    return inserted is not None
