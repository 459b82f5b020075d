"""Resolution's HTTP edge: the complaint view."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from services.resolution import repository
from shared.service import Service
from shared.web import Problem, staff_principal


def complaint_view(found: dict[str, Any]) -> dict[str, Any]:
    """The contract's complaint view of a case and its timeline."""
    case = found["case"]
    deadlines = None
    if case["acknowledge_by"] is not None:
        deadlines = {
            "acknowledge_by": case["acknowledge_by"].isoformat(),
            "resolve_by": case["resolve_by"].isoformat(),
        }
    return {
        "complaint_id": case["complaint_id"],
        "status": case["status"],
        "channel": case["channel"],
        "external_id": case["external_id"],
        "category": case["category"],
        "severity": case["severity"],
        "severity_reasons": case["severity_reasons"],
        "team": case["team"],
        "assignee": case["assignee"],
        "deadlines": deadlines,
        "remedy": case["remedy"],
        "pending_approval": case["pending_approval"],
        "staff_involved": case["staff_involved"],
        "timeline": [
            {
                "type": e["type"],
                "at": e["at"].isoformat(),
                "actor": e["actor"],
                "detail": e["detail"],
            }
            for e in found["timeline"]
        ],
    }


def install(service: Service, router: APIRouter) -> None:
    """Add resolution's routes to `router`."""

    @router.get(
        "/v1/complaints/{complaint_id}",
        responses={401: {"description": "no or bad staff token"}, 404: {"description": "unknown"}},
        summary="A complaint's state, routing, deadlines and timeline",
    )
    async def get_complaint(complaint_id: str, request: Request) -> dict[str, Any]:
        staff_principal(service.secret, request)
        async with service.pool.acquire() as conn:
            found = await repository.load_view(conn, complaint_id)
        if found is None:
            raise Problem(404, "Not found", f"no complaint {complaint_id}")
        return complaint_view(found)
