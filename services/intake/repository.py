"""Intake's SQL, next to the functions that run it (tables in the `intake` schema)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pydantic_core

from services.intake.domain import (
    AMOUNT_STEPS,
    REMEDY_OVER_SPEND,
    REMEDY_WINDOW_DAYS,
    REPEAT_WINDOW_DAYS,
    Decision,
    History,
    RoutingRule,
    StaffLoad,
)
from shared import quotas
from shared.db import Conn
from shared.events import SubmittedData


@dataclass(frozen=True)
class NewComplaint:
    complaint_id: str
    data: SubmittedData
    decision: Decision
    source: str
    # `data` as JSON values: `data.model_dump(mode="json", exclude_none=True)`
    submitted: dict[str, Any]


async def insert_complaints(
    conn: Conn, rows: Sequence[NewComplaint], *, received_at: datetime
) -> set[str]:
    """Store new complaints in one statement; return the ids actually inserted (the others'
    (channel, external_id) was already known)."""
    if not rows:
        return set()
    values = [_complaint_row(row) for row in rows]
    columns = [list(column) for column in zip(*values, strict=True)]
    inserted = await conn.fetch(
        """INSERT INTO complaints (complaint_id, channel, external_id, customer_id, category,
               category_reason, severity, severity_reasons, severity_score, flags, team,
               language, source, submission, amount_at_stake, currency, received_at)
           SELECT id, ch, ext, cust, cat, cat_r, sev, sev_r::jsonb, score, flags::jsonb, team,
                  lang, src, sub::jsonb, amount::numeric, currency, $17
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::int[], $10::text[], $11::text[], $12::text[],
                       $13::text[], $14::text[], $15::text[], $16::text[])
                AS t(id, ch, ext, cust, cat, cat_r, sev, sev_r, score, flags, team, lang, src,
                     sub, amount, currency)
           ON CONFLICT (channel, external_id) DO NOTHING
           RETURNING complaint_id""",
        *columns,
        received_at,
    )
    return {r["complaint_id"] for r in inserted}


def _complaint_row(row: NewComplaint) -> tuple[Any, ...]:
    """A new complaint's values in the order of `insert_complaints`' columns."""
    data, decision, money = row.data, row.decision, row.data.amount_at_stake
    flags = [{"code": f.code, "reason": f.reason} for f in decision.flags]
    return (
        row.complaint_id,
        data.channel.value,
        data.external_id,
        data.customer.id,
        decision.category.value,
        decision.category_reason,
        decision.severity.value,
        pydantic_core.to_json(decision.severity_reasons).decode(),
        decision.severity_score,
        pydantic_core.to_json(flags).decode(),
        decision.team,
        decision.language,
        row.source,
        pydantic_core.to_json(row.submitted).decode(),
        money.amount if money else None,  # a decimal string: PostgreSQL reads it exactly
        money.currency if money else None,
    )


async def find_complaint_ids(
    conn: Conn, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """The ids of complaints known by (channel, external_id)."""
    if not pairs:
        return {}
    rows = await conn.fetch(
        """SELECT c.channel, c.external_id, c.complaint_id FROM complaints c
           JOIN unnest($1::text[], $2::text[]) AS p(ch, ext)
             ON c.channel = p.ch AND c.external_id = p.ext""",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return {(r["channel"], r["external_id"]): r["complaint_id"] for r in rows}


_HIGH_CLAIM_SQL = " OR ".join(
    f"(currency = '{currency}' AND amount_at_stake >= {steps[0]})"
    for currency, steps in AMOUNT_STEPS.items()
)


async def histories(conn: Conn, customer_ids: Sequence[str], now: datetime) -> dict[str, History]:
    """Each customer's earlier complaints, as routing and flags need them (one query)."""
    rows = await conn.fetch(
        f"""SELECT customer_id,
                   count(*) FILTER (WHERE received_at >= $2)
                     + coalesce(sum(reopens) FILTER (WHERE last_reopened_at >= $2), 0)
                                                                        AS recent,
                   count(*)                                             AS total,
                   count(*) FILTER (WHERE received_at >= $3 AND ({_HIGH_CLAIM_SQL})) AS high_claims,
                   count(*) FILTER (WHERE outcome IN ('upheld', 'partially_upheld')) AS upheld,
                   count(*) FILTER (WHERE outcome = 'not_upheld')       AS not_upheld,
                   avg(satisfaction)::float                             AS satisfaction,
                   count(*) FILTER (WHERE received_at >= $5 AND remedy_amount > 0 AND (
                       amount_at_stake IS NULL
                       OR (remedy_currency = currency AND remedy_amount > $6 * amount_at_stake)
                   ))                                                   AS remedies_above_spend
            FROM complaints WHERE customer_id = ANY($1::text[]) AND received_at < $4
            GROUP BY customer_id""",
        list(set(customer_ids)),
        now - timedelta(days=REPEAT_WINDOW_DAYS),
        now - timedelta(days=90),
        now,
        now - timedelta(days=REMEDY_WINDOW_DAYS),
        REMEDY_OVER_SPEND,
    )
    found = {
        r["customer_id"]: History(
            complaints_30d=r["recent"],
            complaints_total=r["total"],
            high_claims_90d=r["high_claims"],
            upheld=r["upheld"],
            not_upheld=r["not_upheld"],
            mean_satisfaction=r["satisfaction"],
            remedies_above_spend_365d=r["remedies_above_spend"],
        )
        for r in rows
    }
    none = History()  # frozen: one for every customer with no earlier complaint
    return {c: found.get(c, none) for c in customer_ids}


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


async def lock_teams(conn: Conn, teams: Sequence[str]) -> dict[str, list[StaffLoad]]:
    """The teams' members with their open load, locked until the transaction ends.

    Locking the members (in a fixed order) serialises assignment within a team, so two
    complaints arriving together cannot both take the last unit of someone's capacity.
    """
    rows = await conn.fetch(
        """SELECT s.staff_id, s.team, s.languages, s.capacity, s.available, s.last_assigned_at,
                  s.open_load AS load
           FROM staff s WHERE s.team = ANY($1::text[])
           ORDER BY s.team, s.staff_id FOR UPDATE OF s""",
        sorted(set(teams)),
    )
    found: dict[str, list[StaffLoad]] = {team: [] for team in teams}
    for r in rows:
        found[r["team"]].append(
            StaffLoad(
                staff_id=r["staff_id"],
                languages=tuple(r["languages"]),
                capacity=r["capacity"],
                load=int(r["load"]),
                available=r["available"],
                last_assigned_at=r["last_assigned_at"],
            )
        )
    return found


@dataclass(frozen=True)
class Holder:
    complaint_id: str
    team: str
    staff_id: str | None
    weight: int


async def assign(conn: Conn, holders: Sequence[Holder], *, now: datetime) -> None:
    """Record who holds each complaint (None: the team queue), pipelined."""
    if not holders:
        return
    await conn.execute(
        """INSERT INTO assignments (complaint_id, team, staff_id, weight, assigned_at)
           SELECT id, team, staff, weight, $5
           FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS h(id, team, staff, weight)
           ON CONFLICT (complaint_id) DO UPDATE
               SET staff_id = EXCLUDED.staff_id, team = EXCLUDED.team,
                   assigned_at = EXCLUDED.assigned_at""",
        [h.complaint_id for h in holders],
        [h.team for h in holders],
        [h.staff_id for h in holders],
        [h.weight for h in holders],
        now,
    )
    gained: dict[str, int] = {}
    for h in holders:
        if h.staff_id is not None:
            gained[h.staff_id] = gained.get(h.staff_id, 0) + h.weight
    if gained:
        # one row version per member per batch (not one per case)
        await conn.execute(
            """UPDATE staff SET open_load = open_load + d.delta, last_assigned_at = $3
               FROM unnest($1::text[], $2::int[]) AS d(id, delta) WHERE staff_id = d.id""",
            list(gained),
            list(gained.values()),
            now,
        )


async def release_load(conn: Conn, staff_id: str, weight: int) -> None:
    """Take `weight` off a member's open load (a case moved away from them)."""
    await conn.execute(
        "UPDATE staff SET open_load = open_load - $2 WHERE staff_id = $1", staff_id, weight
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


async def cases_acknowledged(conn: Conn, complaint_ids: Sequence[str]) -> None:
    """These cases were acknowledged by their holders."""
    if complaint_ids:
        await conn.execute(
            "UPDATE assignments SET acknowledged = true WHERE complaint_id = ANY($1::text[])",
            list(complaint_ids),
        )


async def lock_holders(conn: Conn, complaint_ids: Sequence[str], also: Sequence[str]) -> None:
    """Lock the members who hold these cases, and those `also` names, in the order
    `lock_teams` locks a team's (team, then id), until the transaction ends. The follower's
    rounds then change their load in whatever order their events come, and a batch of
    submissions locking one of their teams at the same time waits for it or it for the batch:
    neither holds one member while waiting for another the other holds (a deadlock: a second's
    stall, then one of them again). A case moved to someone else while this waited (a member
    made unavailable) has its new holder locked after the others."""
    locked: set[str] = set()
    wanted = set(also)
    while True:
        fresh = await conn.fetch(
            """SELECT s.staff_id FROM staff s
               WHERE (s.staff_id IN (SELECT a.staff_id FROM assignments a
                                     WHERE a.complaint_id = ANY($1::text[]))
                      OR s.staff_id = ANY($2::text[]))
                 AND NOT s.staff_id = ANY($3::text[])
               ORDER BY s.team, s.staff_id FOR UPDATE OF s""",
            list(complaint_ids),
            list(wanted),
            list(locked),
        )
        if not fresh:
            return
        locked.update(r["staff_id"] for r in fresh)
        wanted = set()  # only holders can have changed: read them again, now that none can


async def lock_member_teams(conn: Conn, staff_id: str, *, joining: str | None = None) -> None:
    """Before a member's change that may reassign their cases (removed, unavailable, moved to
    `joining`): lock every team the change touches (theirs, the one they join, those of their
    unacknowledged cases) in `lock_teams`' order, at once, so that the reassignment, which locks
    the teams one case at a time, never waits for a team while holding another that a batch of
    submissions or the follower waits for."""
    teams = await conn.fetch(
        """SELECT team FROM staff WHERE staff_id = $1
           UNION SELECT team FROM assignments WHERE staff_id = $1 AND open AND NOT acknowledged""",
        staff_id,
    )
    await lock_teams(conn, [r["team"] for r in teams] + ([joining] if joining else []))


async def cases_open(conn: Conn, opens: Mapping[str, bool]) -> None:
    """Each case is now open or not (`complaint_id -> open`): a case that closes frees its
    holder's capacity, one that reopens takes it again (a case already so changes nothing)."""
    if not opens:
        return
    # one change per member, summed: an UPDATE joined to several rows of one member would
    # apply only one of them
    await conn.execute(
        """WITH changed AS (
               UPDATE assignments a SET open = u.open
               FROM unnest($1::text[], $2::bool[]) AS u(complaint_id, open)
               WHERE a.complaint_id = u.complaint_id AND a.open <> u.open
               RETURNING a.staff_id, CASE WHEN u.open THEN a.weight ELSE -a.weight END AS delta),
           per_member AS (
               SELECT staff_id, sum(delta) AS delta FROM changed GROUP BY staff_id)
           UPDATE staff s SET open_load = s.open_load + p.delta
           FROM per_member p WHERE s.staff_id = p.staff_id""",
        list(opens),
        list(opens.values()),
    )


async def cases_resolved(
    conn: Conn, outcomes: Sequence[tuple[str, str, Decimal | None, str | None]]
) -> None:
    """Each case's outcome and the money value of its remedy, for customer history
    (`(complaint_id, outcome, amount, currency)`; without an amount, the value stays)."""
    if outcomes:
        await conn.execute(
            """UPDATE complaints c SET outcome = u.outcome,
                   remedy_amount = coalesce(u.amount, c.remedy_amount),
                   remedy_currency = coalesce(u.currency, c.remedy_currency)
               FROM unnest($1::text[], $2::text[], $3::numeric[], $4::text[])
                    AS u(complaint_id, outcome, amount, currency)
               WHERE c.complaint_id = u.complaint_id""",
            [o[0] for o in outcomes],
            [o[1] for o in outcomes],
            [o[2] for o in outcomes],
            [o[3] for o in outcomes],
        )


async def cases_rated(conn: Conn, scores: Mapping[str, int]) -> None:
    """The customer's satisfaction with each case (`complaint_id -> score`)."""
    if scores:
        await conn.execute(
            """UPDATE complaints c SET satisfaction = u.score
               FROM unnest($1::text[], $2::int[]) AS u(complaint_id, score)
               WHERE c.complaint_id = u.complaint_id""",
            list(scores),
            list(scores.values()),
        )


async def move_holder(conn: Conn, complaint_id: str, to: str | None, at: datetime) -> None:
    """Resolution gave the case to `to` at `at` (a claim, an assignment): the holder and both
    members' open load follow, and `to` counts as assigned at `at` for fair assignment
    (nothing changes when `to` holds it already)."""
    # greatest(): a late or redelivered event never moves a member's last assignment back
    await conn.execute(
        """WITH before AS (
               SELECT staff_id, weight, open FROM assignments WHERE complaint_id = $1
               FOR UPDATE),
           moved AS (
               UPDATE assignments a SET staff_id = $2 FROM before b
               WHERE a.complaint_id = $1 AND b.staff_id IS DISTINCT FROM $2
               RETURNING b.staff_id AS released, a.weight, a.open)
           UPDATE staff s
           SET open_load = s.open_load + CASE WHEN s.staff_id = $2 THEN m.weight ELSE -m.weight END,
               last_assigned_at = CASE WHEN s.staff_id = $2
                   THEN greatest(s.last_assigned_at, $3) ELSE s.last_assigned_at END
           FROM moved m WHERE m.open AND s.staff_id IN (m.released, $2)""",
        complaint_id,
        to,
        at,
    )


async def cases_reopened(conn: Conn, reopened: Mapping[str, datetime]) -> None:
    """A reopened case counts as the customer's contact again (their repeat-contact history):
    `complaint_id -> when`."""
    if reopened:
        await conn.execute(
            """UPDATE complaints c SET reopens = reopens + 1,
                   last_reopened_at = greatest(last_reopened_at, u.at)
               FROM unnest($1::text[], $2::timestamptz[]) AS u(complaint_id, at)
               WHERE c.complaint_id = u.complaint_id""",
            list(reopened),
            list(reopened.values()),
        )


# ---------------------------------------------------------------------- staff directory

STAFF_COLUMNS = "staff_id, name, team, role, languages, capacity, available, active"


async def add_staff(conn: Conn, **member: Any) -> None:
    await conn.execute(
        """INSERT INTO staff (staff_id, name, team, role, languages, capacity, available)
           VALUES ($1, $2, $3, $4, $5, $6, $7)""",
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
        f"UPDATE staff SET {sets}, version = version + 1, updated_at = now() WHERE staff_id = $1",
        staff_id,
        *changes.values(),
    )
    return before


async def revoke_tokens(conn: Conn, staff_id: str) -> bool:
    """Refuse every token issued to the member until now; False when there is no such member."""
    status = await conn.execute(
        """UPDATE staff SET tokens_valid_after = clock_timestamp(), version = version + 1,
                  updated_at = now()
           WHERE staff_id = $1""",
        staff_id,
    )
    return status.endswith(" 1")


async def take_unannounced(conn: Conn) -> list[asyncpg.Record]:
    """Members changed since they were last announced, marked announced (the caller writes
    the announcements in the same transaction)."""
    return await conn.fetch(
        """UPDATE staff SET announced_version = version WHERE version > announced_version
           RETURNING staff_id, name, team, role, languages, available, active,
                     tokens_valid_after, version"""
    )


async def list_staff(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {STAFF_COLUMNS} FROM staff ORDER BY team, staff_id")


async def staff_count(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM staff"))


# ---------------------------------------------------------------------- channel keys


async def add_channel_key(
    conn: Conn,
    *,
    key_id: str,
    channel: str,
    key_hash: str,
    rate_per_s: float | None = None,
    burst: int | None = None,
) -> None:
    """Store a key's hash and its own limit (None: the default)."""
    await conn.execute(
        """INSERT INTO channel_keys (key_id, channel, key_hash, rate_per_s, burst)
           VALUES ($1, $2, $3, $4, $5)""",
        key_id,
        channel,
        key_hash,
        rate_per_s,
        burst,
    )


@dataclass(frozen=True)
class LiveKey:
    key_id: str
    channel: str
    rate_per_s: float | None  # None: the default
    burst: int | None


async def live_key(conn: Conn, key_hash: str) -> LiveKey | None:
    """The live key with this hash (its channel and own limit), or None for unknown and revoked
    keys."""
    row = await conn.fetchrow(
        """SELECT key_id, channel, rate_per_s, burst FROM channel_keys
           WHERE key_hash = $1 AND revoked_at IS NULL""",
        key_hash,
    )
    return None if row is None else LiveKey(**dict(row))


async def list_channel_keys(conn: Conn) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT key_id, channel, created_at, revoked_at, rate_per_s, burst
           FROM channel_keys ORDER BY created_at"""
    )


async def revoke_channel_key(conn: Conn, key_id: str) -> tuple[str, str] | None:
    """Revoke a live key by id; its (channel, hash), or None when no live key has that id."""
    row = await conn.fetchrow(
        "UPDATE channel_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL "
        "RETURNING channel, key_hash",
        key_id,
    )
    if row is None:
        return None
    await quotas.forget(conn, key_id)
    return (row["channel"], row["key_hash"])
