"""The periodic review of policy exceptions: remedies granted outside the policy, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.db import Conn

FIELDS = (
    "event_id",
    "complaint_id",
    "type",
    "amount",
    "currency",
    "percent",
    "category",
    "severity",
    "band",
    "proposer",
    "authorized_by",
    "authorized_role",
    "justification",
    "policy_version",
    "at",
)


def _json_ready(row: Any) -> dict[str, Any]:
    out = {name: row[name] for name in FIELDS}
    for name in ("amount", "percent"):
        out[name] = None if out[name] is None else str(out[name])
    out["at"] = row["at"].isoformat()
    return out


async def exceptions(
    conn: Conn,
    *,
    since: datetime | None = None,
    before: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Remedies applied as policy exceptions (JSON-ready), newest first: at or after `since`,
    after the one whose event id is `before` in that order, at most `limit`."""
    rows = await conn.fetch(
        f"""SELECT {", ".join(FIELDS)} FROM remedies
            WHERE policy_exception
              AND ($1::timestamptz IS NULL OR at >= $1)
              AND ($2::text IS NULL OR (at, event_id) <
                   (SELECT at, event_id FROM remedies WHERE event_id = $2))
            ORDER BY at DESC, event_id DESC
            LIMIT $3""",
        since,
        before,
        limit,
    )
    return [_json_ready(r) for r in rows]
