"""Notify's HTTP edge: `GET /v1/stream`, server-sent events of the domain, resumable."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from services.notify import repository
from shared import auth
from shared.service import Service
from shared.web import Problem, bearer


class StreamSignal:
    """Wakes this process's stream readers when new events are committed (a broadcast)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)


def install(service: Service, router: APIRouter, signal: StreamSignal) -> None:
    """Add notify's routes to `router`."""

    @router.get(
        "/v1/stream",
        response_class=EventSourceResponse,
        responses={401: {"description": "no or bad staff token"}},
        summary="Live domain events (server-sent events), resumable with Last-Event-ID",
    )
    async def stream(request: Request) -> EventSourceResponse:
        token = request.query_params.get("access_token") or bearer(request)
        async with service.pool.acquire() as conn:
            await service.staff_or_401(conn, token)
        resume = request.headers.get("last-event-id", "").strip()
        if resume and not resume.isdigit():
            raise Problem(
                422, "Invalid request", "Last-Event-ID must be an event id from this stream"
            )
        async with service.pool.acquire() as conn:
            start = int(resume) if resume else await repository.stream_head(conn)
        return EventSourceResponse(_events(service, request, signal, start, token), ping=15)


# How often an open stream checks its token again: a removed member's or a revoked token's
# stream ends within this, plus the directory's recheck time (`COMPLAINTS_STAFF_RECHECK_S`)
# and the replica's learning it.
RECHECK_S = 2.0


async def _events(
    service: Service, request: Request, signal: StreamSignal, after: int, token: str
) -> AsyncIterator[ServerSentEvent]:
    """The events of the member's team (every team for managers and directors) after `after`,
    as they come, for as long as the token stays valid."""
    checked_at = -RECHECK_S
    teams: list[str] | None = None
    loop = asyncio.get_running_loop()
    while not await request.is_disconnected():
        async with service.pool.acquire() as conn:
            if loop.time() - checked_at >= RECHECK_S:
                try:
                    member = await service.staff_member(conn, token)
                except auth.InvalidToken:
                    return
                checked_at = loop.time()
                teams = None if member.role.every_team else [member.team]
            rows = await repository.stream_after(conn, after, teams=teams)
        for row in rows:
            after = row["id"]
            event: dict[str, Any] = row["event"]
            yield ServerSentEvent(data=json.dumps(event), event=row["type"], id=str(row["id"]))
        if not rows:
            await signal.wait(1.0)
