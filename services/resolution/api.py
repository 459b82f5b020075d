"""Resolution's HTTP edge: the complaint view, for staff and for the channel that submitted it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.resolution import repository
from shared import auth, directory
from shared.db import Conn
from shared.events import Role
from shared.service import Service
from shared.web import Problem, bearer

# What a channel may see of its own complaint's timeline (no internal notes or assignments).
CHANNEL_TIMELINE = {
    "complaint.received",
    "complaint.routed",
    "complaint.acknowledged",
    "complaint.resolved",
    "complaint.reopened",
    "complaint.closed",
    "notification.sent",
    "notification.failed",
}


def _deadlines(case: dict[str, Any]) -> dict[str, str] | None:
    if case["acknowledge_by"] is None:
        return None
    return {
        "acknowledge_by": case["acknowledge_by"].isoformat(),
        "resolve_by": case["resolve_by"].isoformat(),
    }


def _timeline(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"type": e["type"], "at": e["at"].isoformat(), "actor": e["actor"], "detail": e["detail"]}
        for e in entries
    ]


def staff_view(found: dict[str, Any]) -> dict[str, Any]:
    """The contract's complaint view with everything staff need, reasons included."""
    case = found["case"]
    return {
        "complaint_id": case["complaint_id"],
        "status": case["status"],
        "channel": case["channel"],
        "external_id": case["external_id"],
        "category": case["category"],
        "category_reason": case["category_reason"],
        "severity": case["severity"],
        "severity_score": case["severity_score"],
        "severity_reasons": case["severity_reasons"],
        "team": case["team"],
        "team_reason": case["team_reason"],
        "assignee": case["assignee"],
        "assignment_reason": case["assignment_reason"],
        "flags": case["flags"],
        "review_by": case["review_by"],
        "customer_history": case["customer_history"],
        "deadlines": _deadlines(case),
        "remedy": case["remedy"],
        "pending_approval": case["pending_approval"],
        "staff_involved": case["staff_involved"],
        "timeline": _timeline(found["timeline"]),
    }


CHANNEL_FIELDS = (
    "complaint_id",
    "status",
    "channel",
    "external_id",
    "category",
    "deadlines",
    "remedy",
)


def channel_view(found: dict[str, Any]) -> dict[str, Any]:
    """What the submitting channel sees: state and clocks, no staff-only detail."""
    full = staff_view(found)
    view = {name: full[name] for name in CHANNEL_FIELDS}
    view["timeline"] = [
        {k: v for k, v in entry.items() if k != "detail"}
        for entry in full["timeline"]
        if entry["type"] in CHANNEL_TIMELINE
    ]
    return view


def install(service: Service, router: APIRouter) -> None:
    """Add resolution's routes to `router`."""

    @router.get(
        "/v1/complaints/{complaint_id}",
        responses={
            401: {"description": "no token, or neither a staff token nor a live channel key"},
            404: {"description": "unknown, or not submitted by the calling channel"},
        },
        summary="A complaint's state, routing, deadlines and timeline",
    )
    async def get_complaint(complaint_id: str, request: Request) -> dict[str, Any]:
        token = bearer(request)
        async with service.pool.acquire() as conn:
            member, channel = await _caller(service, conn, token)
            found = await repository.load_view(conn, complaint_id)
        # nobody learns of complaints they may not see, not even that they exist
        if found is None or not _may_read(found["case"], member, channel):
            raise Problem(404, "Not found", f"no complaint {complaint_id}")
        return staff_view(found) if member is not None else channel_view(found)


async def _caller(
    service: Service, conn: Conn, token: str
) -> tuple[directory.Member | None, str | None]:
    """Who is asking: an active staff member, or the channel of a live key; else a 401."""
    try:
        return await service.staff_member(conn, token), None
    except auth.InvalidToken as refused:
        channel = await directory.channel_for_key(conn, auth.hash_key(token))
        if channel is None:
            raise Problem(
                401,
                "Unauthorized",
                f"neither a live channel key nor a valid staff token ({refused})",
            ) from None
        return None, channel


def _may_read(case: dict[str, Any], member: directory.Member | None, channel: str | None) -> bool:
    """Staff read their team's cases (managers and directors every team's) and cases that name
    them; a channel reads the complaints it submitted."""
    if member is None:
        return bool(case["channel"] == channel)
    if member.role in (Role.MANAGER, Role.DIRECTOR) or member.team == case["team"]:
        return True
    named: list[dict[str, Any]] = case["staff_involved"] or []
    return any(entry.get("staff_id") == member.staff_id for entry in named)
