"""The inbox: a consumer records each handled event id in the transaction of its effect."""

from __future__ import annotations

from collections.abc import Sequence

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


async def first_times(conn: Conn, consumer: str, event_ids: Sequence[str]) -> set[str]:
    """The ids among `event_ids` this consumer sees for the first time, recorded in one
    statement; the others were handled before and must change nothing. They are recorded in
    sorted order: two batches holding some of the same events (one consumer reading two topics
    that carry them, in two replicas) then never wait for each other in a circle."""
    rows = await conn.fetch(
        "INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::text[]) "
        "ON CONFLICT DO NOTHING RETURNING event_id",
        consumer,
        sorted(event_ids),
    )
    return {r["event_id"] for r in rows}
