"""Resolution's SQL (tables in the `resolution` schema)."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from services.resolution.case import Event
from services.resolution.domain import Status, TimelineEntry
from shared import db, directory
from shared.db import Conn
from shared.events import ReceivedData, Role, RoutedData, parse_rfc3339


async def add_received_many(conn: Conn, received: Sequence[ReceivedData]) -> None:
    """A case row for each received complaint, with the customer and amount the case's caps
    and samples need (routing may have got there first: it keeps what routing wrote), in one
    round trip."""
    if not received:
        return
    await conn.executemany(
        """INSERT INTO cases (complaint_id, status, channel, external_id, category,
               staff_involved, received_at, customer_id, amount_at_stake)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (complaint_id) DO UPDATE SET
               customer_id = EXCLUDED.customer_id, amount_at_stake = EXCLUDED.amount_at_stake""",
        [  # rows written (and so locked) in the order of their ids, as every batch does
            (
                data.complaint_id,
                Status.RECEIVED.value,
                data.channel.value,
                data.external_id,
                data.category.value if data.category else None,
                [{"staff_id": s, "responded_at": None} for s in data.staff_involved],
                data.received_at,
                data.customer.id,
                data.amount_at_stake.model_dump() if data.amount_at_stake else None,
            )
            for data in sorted(received, key=lambda r: r.complaint_id)
        ],
    )


async def open_cases(conn: Conn, routed: Sequence[RoutedData]) -> None:
    """Record where each complaint was routed and why (its clocks are the decider's), in one
    round trip, rows written (and so locked) in the order of their ids; a case opened already
    keeps what it has."""
    await conn.executemany(
        """INSERT INTO cases (complaint_id, status, channel, external_id, category, severity,
               severity_reasons, team, assignee, language, staff_involved, received_at,
               routed_at, category_reason, severity_score, team_reason, assignment_reason,
               flags, review_by, customer_history)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                   $18, $19, $20)
           ON CONFLICT (complaint_id) DO UPDATE SET
               status = EXCLUDED.status, category = EXCLUDED.category,
               severity = EXCLUDED.severity, severity_reasons = EXCLUDED.severity_reasons,
               team = EXCLUDED.team, assignee = EXCLUDED.assignee, language = EXCLUDED.language,
               routed_at = EXCLUDED.routed_at, category_reason = EXCLUDED.category_reason,
               severity_score = EXCLUDED.severity_score, team_reason = EXCLUDED.team_reason,
               assignment_reason = EXCLUDED.assignment_reason, flags = EXCLUDED.flags,
               review_by = EXCLUDED.review_by, customer_history = EXCLUDED.customer_history,
               updated_at = now()
           WHERE cases.version = 0""",
        [
            (
                r.complaint_id,
                Status.ROUTED.value,
                r.channel.value,
                r.external_id,
                r.category.value,
                r.severity.value,
                r.severity_reasons,
                r.team,
                r.assignee,
                r.language,
                [{"staff_id": s, "responded_at": None} for s in r.staff_involved],
                r.received_at,
                r.routed_at,
                r.category_reason,
                r.severity_score,
                r.team_reason,
                r.assignment_reason,
                r.flags,
                r.review_by,
                r.customer_history,
            )
            for r in sorted(routed, key=lambda r: r.complaint_id)
        ],
    )


async def append_timelines(conn: Conn, entries: Sequence[tuple[str, str, TimelineEntry]]) -> None:
    """Add each `(complaint_id, event_id, entry)` to its case's timeline (an event noted before
    is not noted twice), in one statement."""
    if not entries:
        return
    await conn.execute(
        """INSERT INTO timeline (complaint_id, event_id, type, at, actor, detail)
           SELECT c, e, t, a, who, d::jsonb
           FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                       $6::text[]) WITH ORDINALITY AS x(c, e, t, a, who, d, n)
           ORDER BY n
           ON CONFLICT (event_id) DO NOTHING""",
        [c for c, _, _ in entries],
        [e for _, e, _ in entries],
        [entry.type for _, _, entry in entries],
        [entry.at for _, _, entry in entries],
        [entry.actor for _, _, entry in entries],
        [json.dumps(entry.detail) for _, _, entry in entries],
    )


# A case's timeline (what other services said of it, and its decisions) as one json array,
# for the case whose id is `{case}`; `{decided}` names where its decided events are.
_TIMELINE = """(
    SELECT coalesce(json_agg(json_build_object(
               'type', type, 'at', at, 'actor', actor, 'detail', detail)
               ORDER BY at, source, n), '[]')
    FROM (SELECT type, at, actor, detail, 0 AS source, id AS n
          FROM timeline WHERE complaint_id = {case}
          UNION ALL
          SELECT type, at, actor, data - 'chain' - 'complaint_id' - 'actor' - 'at', 1, seq
          FROM {decided} WHERE complaint_id = {case}) AS entries
    ) AS timeline_entries"""


async def load_view(conn: Conn, complaint_id: str) -> dict[str, Any] | None:
    """The case with its timeline (what other services said of it, and its decisions), or
    None; one round trip."""
    row = await conn.fetchrow(
        f"SELECT c.*, {_TIMELINE.format(decided='case_events', case='$1')} "
        "FROM cases c WHERE complaint_id = $1",
        complaint_id,
    )
    return None if row is None else _view(row)


_VIEWS = (
    f"SELECT c.*, {_TIMELINE.format(decided='case_events', case='c.complaint_id')} "
    "FROM cases c WHERE complaint_id = ANY($1::text[])"
)


async def load_views(conn: Conn, complaint_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """`load_view` for several cases in one round trip, by id (a case missing is not there)."""
    rows = await conn.fetch(_VIEWS, list(complaint_ids))
    return {row["complaint_id"]: _view(row) for row in rows}


def _view(row: asyncpg.Record) -> dict[str, Any]:
    """A case row read with its `_TIMELINE` as the view's parts."""
    case = dict(row)
    entries: list[dict[str, Any]] = case.pop("timeline_entries")
    for entry in entries:  # json carries the time as text in the session's time zone
        entry["at"] = datetime.fromisoformat(entry["at"]).astimezone(UTC)
    return {"case": case, "timeline": entries}


# ---------------------------------------------------------------------- decided cases


# A case row (what a decision and a reader's check need of it) with its decided events after
# the version known already (`{known}`: 0 for all of them) as one json array (type, data,
# event_id), in order.
_CASE_WITH_EVENTS = """SELECT c.complaint_id, c.version, c.chain_head, c.team, c.channel,
        c.staff_involved, {known} AS known, (
        SELECT coalesce(json_agg(json_build_array(type, data, event_id) ORDER BY seq), '[]')
        FROM case_events e WHERE e.complaint_id = c.complaint_id AND e.seq > {known}) AS decided
    FROM {source}"""
# One case, by its id ($1) and the version known ($2). Its own statement, not the batch's with
# one-element arrays: PostgreSQL keeps planning that one afresh on every call (its generic plan,
# sized for unknown arrays, never looks cheaper), which cost three times the CPU of the query.
_ONE_CASE = _CASE_WITH_EVENTS.format(known="$2::int", source="cases c WHERE c.complaint_id = $1")
_ONE_CASE_LOCKED = f"{_ONE_CASE} FOR UPDATE OF c"
_ONE_CASE_SKIP_LOCKED = f"{_ONE_CASE_LOCKED} SKIP LOCKED"
# Several cases, by their ids ($1) and the versions known ($2), skipping those held.
_CASES_SKIP_LOCKED = _CASE_WITH_EVENTS.format(
    known="k.known",
    source="unnest($1::text[], $2::int[]) AS k(complaint_id, known) JOIN cases c USING "
    "(complaint_id) FOR UPDATE OF c SKIP LOCKED",
)
Decided = list[tuple[str, dict[str, Any], str]]


@dataclass(frozen=True)
class CaseRead:
    """A case row and the decided events after version `after`, in order (type, data,
    event_id): the row's version is `after` plus their number."""

    row: asyncpg.Record
    events: Decided
    after: int


async def lock_case_with_events(
    conn: Conn, complaint_id: str, *, known: int = 0, lock: bool = True
) -> CaseRead | None:
    """The case row, locked until the transaction ends (one decision at a time per case;
    without `lock`, a plain read), and its decided events after version `known` (all of them
    when the case is not that far), in one round trip; None when there is no such case."""
    row = await conn.fetchrow(_ONE_CASE_LOCKED if lock else _ONE_CASE, complaint_id, known)
    return None if row is None else await _with_events(conn, row)


async def try_lock_cases_with_events(conn: Conn, known: Mapping[str, int]) -> dict[str, CaseRead]:
    """`lock_case_with_events` for several cases (each with the version known of it) in one
    round trip, never waiting: the ones no other transaction holds, by id (a case missing is
    held, or does not exist). One case is read by its own statement (see `_ONE_CASE`)."""
    if len(known) == 1:
        [(complaint_id, version)] = known.items()
        row = await conn.fetchrow(_ONE_CASE_SKIP_LOCKED, complaint_id, version)
        return {} if row is None else {complaint_id: await _with_events(conn, row)}
    rows = await conn.fetch(_CASES_SKIP_LOCKED, list(known), list(known.values()))
    return {row["complaint_id"]: await _with_events(conn, row) for row in rows}


async def _with_events(conn: Conn, row: asyncpg.Record) -> CaseRead:
    """A row read by `_CASE_WITH_EVENTS` and its events. A statement reads the events as they
    were when it began, so when it had to wait for the row's lock (another decision committed
    meanwhile) they may be older than the row: events are numbered 1, 2, … and the row's
    version is the last one's, so when the count falls short they are read again. A case not
    as far as the version known (a decision that was never committed) is read whole."""
    known: int = row["known"]
    after = known if row["version"] >= known else 0
    decided = [(t, d, i) for t, d, i in row["decided"]] if after == known else []
    if after + len(decided) != row["version"]:
        decided = await case_events(conn, row["complaint_id"], after=after)
        if after + len(decided) != row["version"]:  # a fresh statement sees what the row does
            raise RuntimeError(f"case {row['complaint_id']}: its log does not reach its version")
    return CaseRead(row, decided, after)


async def existing_cases(conn: Conn, complaint_ids: Sequence[str]) -> set[str]:
    """Which of these cases exist."""
    rows = await conn.fetch(
        "SELECT complaint_id FROM cases WHERE complaint_id = ANY($1::text[])", list(complaint_ids)
    )
    return {r["complaint_id"] for r in rows}


async def lock_cases(conn: Conn, complaint_ids: Sequence[str]) -> list[asyncpg.Record]:
    """Several cases' rows, locked until the transaction ends (one decision at a time per
    case), in the order of their ids (as every batch writes them: no deadlock)."""
    return await conn.fetch(
        "SELECT * FROM cases WHERE complaint_id = ANY($1::text[]) ORDER BY complaint_id FOR UPDATE",
        list(complaint_ids),
    )


async def case_events(conn: Conn, complaint_id: str, *, after: int = 0) -> Decided:
    """The case's decided events after version `after`, in order (type, data, event_id)."""
    rows = await conn.fetch(
        """SELECT type, data, event_id FROM case_events
           WHERE complaint_id = $1 AND seq > $2 ORDER BY seq""",
        complaint_id,
        after,
    )
    return [(r["type"], r["data"], r["event_id"]) for r in rows]


# The log's entries are written only beside the case's row: no row, no entries (and no answer;
# the writes joined to it run all the same: `record_decision`).
_RECORD_DECISION = """WITH saved AS (
        UPDATE cases SET status = $10, team = $11, assignee = $12,
            acknowledge_by = coalesce($13, acknowledge_by), resolve_by = $14, remedy = $15,
            pending_approval = $16, staff_involved = $17, waiting_role = $18,
            breached = breached OR $19, decided_outcome = $20, version = $21,
            chain_head = $22, policy_version = $23,
            next_due = coalesce($24, 'infinity'::timestamptz), updated_at = now()
        WHERE complaint_id = $1
        RETURNING *
    ), decided AS (
        INSERT INTO case_events (complaint_id, seq, event_id, type, at, actor, data,
                                 prev_hash, hash)
        SELECT saved.complaint_id, s, i, t, a, who, d::jsonb, p, h
        FROM saved, unnest($2::int[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                           $7::text[], $8::text[], $9::text[]) AS e(s, i, t, a, who, d, p, h)
        RETURNING complaint_id, type, at, actor, data, seq
    )
    SELECT {answer} FROM saved"""
_DECISION_AND_VIEW = _RECORD_DECISION.format(
    # the statement's snapshot predates its own inserts: the new events come from `decided`
    answer="saved.*, "
    + _TIMELINE.format(
        decided="(SELECT complaint_id, type, at, actor, data, seq FROM case_events"
        " UNION ALL SELECT * FROM decided) AS d",
        case="$1",
    )
)
_DECISION_ONLY = _RECORD_DECISION.format(answer="saved.version")


async def record_decision(
    conn: Conn,
    events: Sequence[Event],
    view: Mapping[str, Any],
    *,
    answer: bool,
    also: Sequence[db.Write] = (),
) -> dict[str, Any] | None:
    """Add decided events to the decision log and write the case's read model (what the view
    and the queue show) in one statement, with the writes `also` (the decision's effects) in
    the same round trip; with `answer`, the case's view after it (as `load_view` reads it). A
    version decided twice fails on the log's key. The caller holds the case's row: were it
    missing, `also` would have run all the same (every write of a statement does), so that is
    an error the caller's transaction must roll back."""
    decision = db.Write(
        _DECISION_AND_VIEW if answer else _DECISION_ONLY, _decision_args(events, view)
    )
    statement = db.joined(also, decision) if also else decision
    row = await conn.fetchrow(statement.sql, *statement.args)
    if row is None:
        raise RuntimeError(f"no case {view['complaint_id']} to record a decision on")
    return _view(row) if answer else None


def _decision_args(events: Sequence[Event], view: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        view["complaint_id"],
        [e.seq for e in events],
        [e.event_id for e in events],
        [str(e.type) for e in events],
        [e.at for e in events],
        [e.actor for e in events],
        [json.dumps(e.data()) for e in events],
        [e.prev_hash for e in events],
        [e.hash for e in events],
        view["status"],
        view["team"],
        view["assignee"],
        view["acknowledge_by"],
        view["resolve_by"],
        view["remedy"],
        view["pending_approval"],
        view["staff_involved"],
        view["waiting_role"],
        view["breached"],
        view["outcome"],
        view["version"],
        view["chain_head"],
        view["policy_version"],
        view["next_due"],
    )


async def record_decisions(
    conn: Conn, decided: Sequence[tuple[Sequence[Event], Mapping[str, Any]]]
) -> None:
    """`record_decision` (without an answer) for each `(events, view)` of distinct cases, in
    one round trip; the caller holds each case's row (a case without one records nothing)."""
    await conn.executemany(
        _DECISION_ONLY, [_decision_args(events, view) for events, view in decided]
    )


# An applied remedy's columns and their types (the arrays `remedies_added` unnests).
_REMEDY_COLUMNS = {
    "event_id": "text",
    "complaint_id": "text",
    "customer_id": "text",
    "type": "text",
    "amount": "numeric",
    "currency": "text",
    "percent": "numeric",
    "category": "text",
    "severity": "text",
    "band": "text",
    "proposer": "text",
    "authorized_by": "text",
    "authorized_role": "text",
    "policy_exception": "boolean",
    "justification": "text",
    "policy_version": "integer",
    "at": "timestamptz",
}
_ADD_REMEDIES = (
    f"INSERT INTO remedies ({', '.join(_REMEDY_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(_REMEDY_COLUMNS.values(), 1))
    + ") ON CONFLICT (event_id) DO NOTHING"
)


def remedies_added(rows: Sequence[Mapping[str, Any]]) -> db.Write:
    """Applied remedies to record (caps, consistency samples, the exceptions review), as a
    write to run beside others (`db.joined`)."""
    return db.Write(_ADD_REMEDIES, tuple([row[c] for row in rows] for c in _REMEDY_COLUMNS))


# the roles held in a team's chain, the team and the staff left out at the placeholders given
_HELD_ROLES = """SELECT DISTINCT role FROM staff_directory
           WHERE active AND (team = {team} OR role IN ('manager', 'director'))
             AND staff_id <> ALL({named}::text[])"""
# the caps' locks, the customer's first, then the staff member's; 64-bit keys: two customers
# (or members) rarely share a lock, as 32-bit `hashtext` would
_LOCK_TOTALS = (
    "SELECT pg_advisory_xact_lock(hashtextextended('cap:customer:' || $1, 0)), "
    "pg_advisory_xact_lock(hashtextextended('cap:staff:' || $2, 0))"
)
_LOCK_TOTALS_HELD_ROLES = f"{_LOCK_TOTALS}, ARRAY({_HELD_ROLES.format(team='$3', named='$4')})"
_HELD_ROLES_ALONE = _HELD_ROLES.format(team="$1", named="$2")


async def held_roles(conn: Conn, team: str, named: Sequence[str] = ()) -> frozenset[Role]:
    """Roles someone active holds in the team's chain (its own members, and the managers and
    directors who act on every team), leaving out the staff the complaint names."""
    rows = await conn.fetch(_HELD_ROLES_ALONE, team, list(named))
    return frozenset(Role(r["role"]) for r in rows)


async def lock_totals(
    conn: Conn,
    *,
    customer_id: str,
    staff_id: str,
    held_in: tuple[str, Sequence[str]] | None = None,
) -> frozenset[Role] | None:
    """Serialise decisions that spend under the same customer's or staff member's caps (the
    customer first, then the staff member: one order, no deadlock). With `held_in` (a team and
    the staff a complaint names), also `held_roles` there, in the same round trip.

    The totals must be read by a later statement: a statement reads what was committed when it
    began, before it waited for the locks."""
    if held_in is None:
        await conn.execute(_LOCK_TOTALS, customer_id, staff_id)
        return None
    team, named = held_in
    roles = await conn.fetchval(
        _LOCK_TOTALS_HELD_ROLES,
        customer_id,
        staff_id,
        team,
        list(named),
        column=2,
    )
    return frozenset(Role(r) for r in roles)


# the caps' locks of a batch, by their names in the order given
_LOCK_TOTALS_MANY = (
    "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM unnest($1::text[]) AS k"
)


async def lock_totals_many(
    conn: Conn, *, customer_ids: Collection[str], staff_ids: Collection[str]
) -> None:
    """`lock_totals` for a batch of decisions, in one round trip: every customer's lock, then
    every staff member's, each kind in the order of the ids (the order `lock_totals` follows
    for one of each: no deadlock between batches, nor with a single decision)."""
    names = _cap_locks(customer_ids, staff_ids)
    if names:
        await conn.execute(_LOCK_TOTALS_MANY, names)


def _cap_locks(customer_ids: Collection[str], staff_ids: Collection[str]) -> list[str]:
    """The names of the caps' locks, customers' first, then staff members', each in id order."""
    names = [f"cap:customer:{c}" for c in sorted(set(customer_ids))]
    return names + [f"cap:staff:{s}" for s in sorted(set(staff_ids))]


_TRY_LOCK_TOTALS = (
    "SELECT k FROM unnest($1::text[]) AS k"
    " WHERE NOT pg_try_advisory_xact_lock(hashtextextended(k, 0))"
)


async def try_lock_totals_many(
    conn: Conn, *, customer_ids: Collection[str], staff_ids: Collection[str]
) -> tuple[set[str], set[str]]:
    """`lock_totals_many` without waiting: the customers and the staff members whose caps'
    locks another transaction holds (the others are locked until this transaction ends)."""
    names = _cap_locks(customer_ids, staff_ids)
    if not names:
        return set(), set()
    busy = [r["k"] for r in await conn.fetch(_TRY_LOCK_TOTALS, names)]
    return (
        {k.removeprefix("cap:customer:") for k in busy if k.startswith("cap:customer:")},
        {k.removeprefix("cap:staff:") for k in busy if k.startswith("cap:staff:")},
    )


@dataclass(frozen=True)
class Similar:
    """Which remedies count as granted for similar complaints (see `money_applied`)."""

    category: str
    severity: str
    band: str
    type_: str
    currency: str
    since: datetime


@dataclass(frozen=True)
class Applied:
    """Money remedies applied, per currency, to a customer and by a staff member; and, when
    asked for, how many remedies were granted for similar complaints and their median."""

    customer: dict[str, Decimal]
    own: dict[str, Decimal]
    similar_count: int | None = None
    similar_median: Decimal | None = None


_MONEY_APPLIED = """
    SELECT 'customer' AS what, currency, sum(amount) AS amount, NULL::bigint AS n FROM remedies
    WHERE customer_id = $1 AND at >= $2 AND amount IS NOT NULL
    GROUP BY currency
    UNION ALL
    SELECT 'own', currency, sum(amount), NULL FROM remedies
    WHERE authorized_by = $3 AND at >= $4 AND amount IS NOT NULL
    GROUP BY currency"""

# The similar remedies' count and median (the middle amount, or the mean of the two middle
# ones, as `statistics.median` has it), computed where the rows are, in one ordered pass: a
# proposal's cost must not include every remedy granted in the window shipped to Python.
# `percentile_disc(f)` is the amount at position ceil(f * n) of the n in order: at 0.5 the
# lower middle one, at 0.5 + 10^-12 the upper (the same one when n is odd), for n < 5 * 10^11.
# Their mean is exact: the contract's amounts have at most 12 digits before the point, and
# numeric division keeps at least 8 after it. `trim_scale` only tidies it (it is compared,
# never shown, and a Decimal's scale does not change a comparison).
_MONEY_APPLIED_SIMILAR = (
    _MONEY_APPLIED
    + """
    UNION ALL
    SELECT 'similar', NULL, trim_scale((middle[1] + middle[2]) / 2), n FROM (
        SELECT count(*) AS n,
               percentile_disc(ARRAY[0.5, 0.500000000001]) WITHIN GROUP (ORDER BY amount)
                   AS middle
        FROM remedies
        WHERE category = $5 AND severity = $6 AND band = $7 AND type = $8
          AND currency = $9 AND at >= $10 AND amount IS NOT NULL) AS alike"""
)


async def money_applied(
    conn: Conn,
    *,
    customer_id: str,
    customer_since: datetime,
    authorized_by: str | None,
    staff_since: datetime,
    similar: Similar | None = None,
) -> Applied:
    """Money remedies applied, per currency: to one customer since `customer_since`, and
    authorised by one staff member (none: nobody) since `staff_since`; with `similar`, the
    count and median of the remedies of that type and currency granted for similar
    complaints. One round trip."""
    args: list[Any] = [customer_id, customer_since, authorized_by, staff_since]
    if similar is None:
        rows = await conn.fetch(_MONEY_APPLIED, *args)
    else:
        args += [
            similar.category,
            similar.severity,
            similar.band,
            similar.type_,
            similar.currency,
            similar.since,
        ]
        rows = await conn.fetch(_MONEY_APPLIED_SIMILAR, *args)
    sample = [r for r in rows if r["what"] == "similar"]  # one row, when asked for
    return Applied(
        customer={r["currency"]: r["amount"] for r in rows if r["what"] == "customer"},
        own={r["currency"]: r["amount"] for r in rows if r["what"] == "own"},
        similar_count=sample[0]["n"] if sample else None,
        similar_median=sample[0]["amount"] if sample else None,
    )


async def saved_answers(
    conn: Conn, keys: Collection[tuple[str, str, str]]
) -> dict[tuple[str, str, str], asyncpg.Record]:
    """The answers given to earlier actions with these Idempotency-Keys, each
    `(complaint_id, actor, key)`, by key, in one round trip."""
    if not keys:
        return {}
    complaint_ids, actors, idempotency_keys = (list(column) for column in zip(*keys, strict=True))
    rows = await conn.fetch(
        """SELECT a.complaint_id, a.actor, a.idempotency_key, a.status, a.body, a.request_sha256
           FROM unnest($1::text[], $2::text[], $3::text[]) AS k(complaint_id, actor, key)
           JOIN action_requests a ON a.complaint_id = k.complaint_id AND a.actor = k.actor
                                 AND a.idempotency_key = k.key""",
        complaint_ids,
        actors,
        idempotency_keys,
    )
    return {(r["complaint_id"], r["actor"], r["idempotency_key"]): r for r in rows}


async def save_answers(conn: Conn, answers: Sequence[tuple[str, str, str, str, int, Any]]) -> None:
    """Keep the answers to actions sent with Idempotency-Keys, each `(complaint_id, actor,
    key, request, status, body)` (`request`: the action's digest), in one round trip; a key
    answered already keeps its first answer."""
    if not answers:
        return
    columns = list(zip(*answers, strict=True))
    await conn.execute(
        """INSERT INTO action_requests
               (complaint_id, actor, idempotency_key, request_sha256, status, body)
           SELECT c, a, k, r, s, b::jsonb
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[])
               AS t(c, a, k, r, s, b)
           ON CONFLICT DO NOTHING""",
        *(list(column) for column in columns[:5]),
        [json.dumps(body) for body in columns[5]],
    )


@dataclass(frozen=True)
class QueueFilters:
    status: str | None = None
    team: str | None = None
    assignee: str | None = None
    breached: bool | None = None
    waiting_for_me: bool = False


async def queue(
    conn: Conn,
    *,
    reader: directory.Member,
    filters: QueueFilters,
    limit: int,
    after: tuple[datetime, str],
) -> list[asyncpg.Record]:
    """The cases `reader` may see (their team's and those naming them; every team's for
    managers and directors) matching `filters`, nearest deadline first, after the cursor."""
    # Only the conditions that apply are written, each query shape its own prepared statement:
    # written as `$n IS NULL OR …` for every filter, one generic plan served every shape and
    # read (and sorted) every queued case for a page of 50.
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    due_after, id_after = after
    where = ["version > 0", f"(next_due, complaint_id) > ({arg(due_after)}, {arg(id_after)})"]
    if not reader.role.every_team:
        named = f"jsonb_build_array(jsonb_build_object('staff_id', {arg(reader.staff_id)}::text))"
        team = arg(reader.team)
        where.append(f"(team = {team} OR staff_involved @> {named})")
    if filters.status is not None:
        where.append(f"status = {arg(filters.status)}")
    if filters.team is not None:
        where.append(f"team = {arg(filters.team)}")
    if filters.assignee is not None:
        where.append(f"assignee = {arg(filters.assignee)}")
    if filters.breached is not None:
        where.append(f"breached = {arg(filters.breached)}")
    if filters.waiting_for_me:
        # an approval waits for a role, in the team's chain: the reader's team, or every team
        scope = "" if reader.role.every_team else f" AND team = {arg(reader.team)}"
        where.append(f"status = 'awaiting_approval' AND waiting_role = {arg(reader.role.value)}")
        where[-1] += scope
    return await conn.fetch(
        f"""SELECT complaint_id, status, team, assignee, severity, category, acknowledge_by,
                   resolve_by, next_due, breached, waiting_role, version
            FROM cases WHERE {" AND ".join(where)}
            ORDER BY next_due, complaint_id
            LIMIT {arg(limit)}""",
        *args,
    )


def queue_cursor(row: Any) -> str:
    """Where the next page starts: after this row."""
    due = next_due(row)
    return f"{due.isoformat() if due else 'infinity'}|{row['complaint_id']}"


def next_due(row: Any) -> datetime | None:
    """The case's nearest running deadline; None when no clock runs ('infinity' in the row)."""
    due: datetime = row["next_due"]
    return None if due.year == datetime.max.year else due


def parse_cursor(after: str | None) -> tuple[datetime, str]:
    """The position a `queue_cursor` names (the start for None); ValueError when malformed."""
    if not after:
        return datetime.min.replace(tzinfo=UTC), ""
    due, _, complaint_id = after.partition("|")
    if due == "infinity":
        return datetime.max.replace(tzinfo=UTC), complaint_id
    try:  # an offset can push a time at the calendar's edge out of range
        return parse_rfc3339(due).astimezone(UTC), complaint_id
    except OverflowError:
        raise ValueError("a time out of range") from None
