"""Intake's SQL, next to the functions that run it (tables in the `intake` schema)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from services.intake.domain import AMOUNT_STEPS, Decision, History, RoutingRule, StaffLoad
from shared.db import Conn
from shared.events import SubmittedData


async def insert_complaint(
    conn: Conn,
    *,
    complaint_id: str,
    data: SubmittedData,
    decision: Decision,
    source: str,
    received_at: datetime,
) -> bool:
    """Store a new complaint; False when (channel, external_id) is already known."""
    money = data.amount_at_stake
    inserted = await conn.fetchval(
        """INSERT INTO complaints (complaint_id, channel, external_id, customer_id, category,
               category_reason, severity, severity_reasons, severity_score, flags, team, assignee,
               language, received_at, source, submission, amount_at_stake, currency)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $13, $14, $15, $16, $17)
           ON CONFLICT (channel, external_id) DO NOTHING
           RETURNING true""",
        complaint_id,
        data.channel.value,
        data.external_id,
        data.customer.id,
        decision.category.value,
        decision.category_reason,
        decision.severity.value,
        decision.severity_reasons,
        decision.severity_score,
        [{"code": f.code, "reason": f.reason} for f in decision.flags],
        decision.team,
        decision.language,
        received_at,
        source,
        data.model_dump(mode="json", exclude_none=True),
        money.decimal() if money else None,
        money.currency if money else None,
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


_HIGH_CLAIM_SQL = " OR ".join(
    f"(currency = '{currency}' AND amount_at_stake >= {steps[0]})"
    for currency, steps in AMOUNT_STEPS.items()
)


async def history(conn: Conn, customer_id: str, now: datetime) -> History:
    """The customer's earlier complaints, as routing and flags need them."""
    row = await conn.fetchrow(
        f"""SELECT count(*) FILTER (WHERE received_at >= $2)            AS recent,
                   count(*)                                             AS total,
                   count(*) FILTER (WHERE received_at >= $3 AND ({_HIGH_CLAIM_SQL})) AS high_claims,
                   count(*) FILTER (WHERE outcome IN ('upheld', 'partially_upheld')) AS upheld,
                   count(*) FILTER (WHERE outcome = 'not_upheld')       AS not_upheld,
                   avg(satisfaction)::float                             AS satisfaction
            FROM complaints WHERE customer_id = $1 AND received_at < $4""",
        customer_id,
        now - timedelta(days=30),
        now - timedelta(days=90),
        now,
    )
    assert row is not None
    return History(
        complaints_30d=row["recent"],
        complaints_total=row["total"],
        high_claims_90d=row["high_claims"],
        upheld=row["upheld"],
        not_upheld=row["not_upheld"],
        mean_satisfaction=row["satisfaction"],
    )


async def routing_rules(conn: Conn) -> list[RoutingRule]:
    rows = await conn.fetch(
        "SELECT rule_id, team, priority, category, channel, language, severity, tier "
        "FROM routing_rules"
    )
    return [RoutingRule(**dict(r)) for r in rows]


async def add_routing_rule(conn: Conn, **fields: Any) -> int:
    columns = ", ".join(fields)
    marks = ", ".join(f"${i}" for i in range(1, len(fields) + 1))
    rule_id = await conn.fetchval(
        f"INSERT INTO routing_rules ({columns}) VALUES ({marks}) RETURNING rule_id",
        *fields.values(),
    )
    return int(rule_id)


async def remove_routing_rule(conn: Conn, rule_id: int) -> bool:
    result = await conn.execute("DELETE FROM routing_rules WHERE rule_id = $1", rule_id)
    return result.endswith(" 1")


async def lock_team(conn: Conn, team: str) -> list[StaffLoad]:
    """The team's members with their open load, locked until the transaction ends.

    Locking the members (in id order) serialises assignment within a team, so two
    complaints arriving together cannot both take the last unit of someone's capacity.
    """
    rows = await conn.fetch(
        """SELECT s.staff_id, s.languages, s.capacity, s.available, s.last_assigned_at,
                  coalesce((SELECT sum(a.weight) FROM assignments a
                            WHERE a.staff_id = s.staff_id AND a.open), 0) AS load
           FROM staff s WHERE s.team = $1 ORDER BY s.staff_id FOR UPDATE OF s""",
        team,
    )
    return [
        StaffLoad(
            staff_id=r["staff_id"],
            languages=tuple(r["languages"]),
            capacity=r["capacity"],
            load=int(r["load"]),
            available=r["available"],
            last_assigned_at=r["last_assigned_at"],
        )
        for r in rows
    ]


async def assign(
    conn: Conn, *, complaint_id: str, team: str, staff_id: str | None, weight: int, now: datetime
) -> None:
    """Record who holds a complaint (None: the team queue)."""
    await conn.execute(
        """INSERT INTO assignments (complaint_id, team, staff_id, weight, assigned_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (complaint_id) DO UPDATE
               SET staff_id = EXCLUDED.staff_id, team = EXCLUDED.team,
                   assigned_at = EXCLUDED.assigned_at""",
        complaint_id,
        team,
        staff_id,
        weight,
        now,
    )
    await conn.execute(
        "UPDATE complaints SET assignee = $2, team = $3 WHERE complaint_id = $1",
        complaint_id,
        staff_id,
        team,
    )
    if staff_id is not None:
        await conn.execute(
            "UPDATE staff SET last_assigned_at = $2 WHERE staff_id = $1", staff_id, now
        )


async def open_unacknowledged(conn: Conn, staff_id: str) -> list[asyncpg.Record]:
    """A person's open, unacknowledged cases, locked, with what reassignment needs."""
    return await conn.fetch(
        """SELECT a.complaint_id, a.team, a.weight, c.language, c.submission
           FROM assignments a JOIN complaints c USING (complaint_id)
           WHERE a.staff_id = $1 AND a.open AND NOT a.acknowledged
           ORDER BY a.assigned_at FOR UPDATE OF a""",
        staff_id,
    )


async def case_update(conn: Conn, complaint_id: str, **changes: Any) -> None:
    """Apply what a later event says about a case (open, acknowledged, outcome, satisfaction)."""
    assignment = {k: v for k, v in changes.items() if k in ("open", "acknowledged")}
    record = {k: v for k, v in changes.items() if k in ("outcome", "satisfaction")}
    if assignment:
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(assignment, start=2))
        await conn.execute(
            f"UPDATE assignments SET {sets} WHERE complaint_id = $1",
            complaint_id,
            *assignment.values(),
        )
    if record:
        sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(record, start=2))
        await conn.execute(
            f"UPDATE complaints SET {sets} WHERE complaint_id = $1", complaint_id, *record.values()
        )


# ---------------------------------------------------------------------- staff directory

STAFF_COLUMNS = "staff_id, name, team, role, languages, capacity, available"


async def add_staff(conn: Conn, **member: Any) -> None:
    await conn.execute(
        f"INSERT INTO staff ({STAFF_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        member["staff_id"],
        member["name"],
        member["team"],
        member["role"],
        member["languages"],
        member["capacity"],
        member["available"],
    )


async def update_staff(conn: Conn, staff_id: str, **changes: Any) -> asyncpg.Record | None:
    """Change a member; their row before the change, or None when unknown."""
    before = await conn.fetchrow(
        f"SELECT {STAFF_COLUMNS} FROM staff WHERE staff_id = $1 FOR UPDATE", staff_id
    )
    if before is None or not changes:
        return before
    sets = ", ".join(f"{k} = ${i}" for i, k in enumerate(changes, start=2))
    await conn.execute(
        f"UPDATE staff SET {sets}, updated_at = now() WHERE staff_id = $1",
        staff_id,
        *changes.values(),
    )
    return before


async def list_staff(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {STAFF_COLUMNS} FROM staff ORDER BY team, staff_id")


async def staff_count(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM staff"))


# ---------------------------------------------------------------------- channel keys


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


async def revoke_channel_key(conn: Conn, key_id: str) -> tuple[str, str] | None:
    """Revoke a live key by id; its (channel, hash), or None when no live key has that id."""
    row = await conn.fetchrow(
        "UPDATE channel_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL "
        "RETURNING channel, key_hash",
        key_id,
    )
    return None if row is None else (row["channel"], row["key_hash"])
