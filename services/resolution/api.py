"""Resolution's HTTP edge: the complaint view, for staff and for the channel that submitted it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.resolution import repository
from shared import auth
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
        staff = True
        try:
            auth.verify_token(service.secret, token, kind=auth.STAFF)
        except auth.InvalidToken:
            staff = False
        async with service.pool.acquire() as conn:
            channel = (
                None if staff else await repository.channel_for_key(conn, auth.hash_key(token))
            )
            if not staff and channel is None:
                raise Problem(401, "Unauthorized", "send a staff token or a live channel key")
            found = await repository.load_view(conn, complaint_id)
        # a channel learns nothing of other channels' complaints, not even that they exist
        if found is None or (channel is not None and found["case"]["channel"] != channel):
            raise Problem(404, "Not found", f"no complaint {complaint_id}")
        return staff_view(found) if staff else channel_view(found)
