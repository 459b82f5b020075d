"""The review of policy exceptions over HTTP, for managers and directors."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from services.resolution import review
from shared import directory
from shared.db import Conn
from shared.events import Role
from shared.service import Service
from shared.web import Problem, bearer

REVIEWERS = (Role.MANAGER, Role.DIRECTOR)


async def _reviewer(service: Service, conn: Conn, token: str) -> directory.Member:
    """The active manager or director the token names; else a 401 or 403 problem."""
    member = await service.staff_or_401(conn, token)
    if member.role not in REVIEWERS:
        raise Problem(
            403,
            "Forbidden",
            "policy exceptions are reviewed by managers and directors",
            required_role=Role.MANAGER.value,
        )
    return member


def install(service: Service, router: APIRouter) -> None:
    """Add the exceptions review to `router`."""

    @router.get(
        "/v1/exceptions",
        responses={
            401: {"description": "no staff token, or one no longer valid"},
            403: {"description": "the caller is neither a manager nor a director"},
        },
        summary="Remedies granted as policy exceptions, newest first (paged)",
    )
    async def list_exceptions(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[
            str | None, Query(max_length=200, description="`next_before` of the previous page")
        ] = None,
    ) -> dict[str, Any]:
        token = bearer(request)
        async with service.pool.acquire() as conn:
            await _reviewer(service, conn, token)
            rows = await review.exceptions(conn, before=before, limit=limit)
        full = len(rows) == limit
        return {"exceptions": rows, "next_before": rows[-1]["event_id"] if full else None}
