"""Intake's HTTP edge: `POST /v1/complaints` for channels holding a key."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from services.intake import handlers, repository
from shared import auth, db, jsonsafe, quota, quotas
from shared.batcher import Batcher
from shared.events import CloudEvent, EventType, SubmittedData, utcnow
from shared.service import Service
from shared.telemetry import inject_headers
from shared.web import Problem, bearer, problem_response, validation_problem

MAX_BODY_BYTES = 256 * 1024


class Accepted(BaseModel):
    complaint_id: str
    status_url: str
    duplicate: bool


_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SubmittedData"}},
            "application/cloudevents+json": {
                "schema": {"$ref": "#/components/schemas/SubmittedEvent"}
            },
        },
    }
}

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no channel key, or an unknown or revoked one"},
    403: {"description": "the key belongs to another channel than the submission names"},
    413: {"description": "the body is larger than 256 KiB"},
    422: {"description": "malformed body; `errors` names each bad field"},
    429: {
        "description": "the key's submission limit is spent (a rate and a burst, per key, "
        "across every replica); retry after `Retry-After` seconds",
        "headers": {
            "Retry-After": {
                "description": "whole seconds until a submission can be accepted again",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    },
}


def install(service: Service, router: APIRouter) -> Submissions:
    """Add intake's routes to `router`; the returned submissions must be closed on stop."""
    submissions = Submissions(service)

    @router.post(
        "/v1/complaints",
        status_code=202,
        response_model=Accepted,
        openapi_extra=_BODY_DOC,
        responses=PROBLEM_RESPONSES,
        summary="Submit a complaint (its data, or a whole complaint.submitted CloudEvent)",
    )
    async def submit(request: Request) -> JSONResponse:
        caller = await submissions.caller(bearer(request))
        if caller is None:
            raise Problem(401, "Unauthorized", "unknown or revoked channel key")
        wait = await submissions.quotas.spend(caller.key_id, caller.limit)
        if wait is not None:
            return _too_many(request, caller.limit, wait)
        channel = caller.channel
        body = await _read_body(request)
        data, source = _parse(body, channel)
        if data.channel.value != channel:
            raise Problem(
                403,
                "Forbidden",
                f"this key belongs to channel {channel!r}, not {data.channel.value!r}",
            )
        item = handlers.Submission(data, source, inject_headers())
        complaint_id, created = await submissions.batcher.submit(item)
        trace.get_current_span().set_attribute("complaint.id", complaint_id)
        status_url = f"{service.settings.base_url()}/v1/complaints/{complaint_id}"
        answer = Accepted(complaint_id=complaint_id, status_url=status_url, duplicate=not created)
        return JSONResponse(
            answer.model_dump(),
            status_code=202,
            headers={"Location": f"/v1/complaints/{complaint_id}"},
        )

    return submissions


KEY_CACHE_S = 5.0  # a revoked key stops working within this long


@dataclass(frozen=True)
class Caller:
    """An authenticated channel key: its id, channel and submission limit."""

    key_id: str
    channel: str
    limit: quota.Limit


class Submissions:
    """HTTP submissions written together (group commit) and channel keys remembered briefly."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self.batcher: Batcher[handlers.Submission, tuple[str, bool]] = Batcher(self._write)
        self.quotas = quotas.Quotas(lambda: service.pool)
        self._keys: dict[str, tuple[Caller | None, float]] = {}

    async def _write(self, items: Sequence[handlers.Submission]) -> list[tuple[str, bool]]:
        """One transaction for the batch, retried when PostgreSQL broke a lock cycle (e.g. with
        a consumer batch assigning in the same team)."""
        return await db.retried_transaction(
            self._service.pool, lambda conn: handlers.accept_many(conn, items, now=utcnow())
        )

    async def caller(self, key: str) -> Caller | None:
        """Who holds `key` (None: unknown or revoked), remembered for `KEY_CACHE_S`."""
        digest = auth.hash_key(key)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with self._service.pool.acquire() as conn:
            found = await repository.live_key(conn, digest)
        caller = None
        if found is not None:
            settings = self._service.settings
            limit = quota.limit_for(
                found.rate_per_s,
                found.burst,
                default_rate=settings.key_rate_per_s,
                default_burst=settings.key_burst,
            )
            caller = Caller(found.key_id, found.channel, limit)
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (caller, now + KEY_CACHE_S)
        return caller


def _too_many(request: Request, limit: quota.Limit, wait: float) -> JSONResponse:
    """429 with `Retry-After` in whole seconds and a problem document."""
    seconds = quota.retry_after(wait)
    problem = Problem(
        429,
        "Too many requests",
        f"this channel key may submit {limit.rate_per_s:g} complaints a second and "
        f"{limit.burst} at once; retry in {seconds} s",
    )
    return problem_response(problem, request.url.path, {"Retry-After": str(seconds)})


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Problem(413, "Content too large", f"the limit is {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise Problem(413, "Content too large", f"the limit is {MAX_BODY_BYTES} bytes")
    return body


def _parse(body: bytes, channel: str) -> tuple[SubmittedData, str]:
    try:
        doc = jsonsafe.loads(body)
    except jsonsafe.JsonRejected as exc:
        rule = "json_too_deep" if exc.code == "too_deep" else "json_invalid"
        raise Problem(
            422,
            "Invalid request",
            f"the body is {exc.message}" if exc.code == "too_deep" else "the body is not JSON",
            errors=[{"field": "(body)", "rule": rule, "message": exc.message}],
        ) from None
    if not isinstance(doc, dict):
        raise Problem(
            422,
            "Invalid request",
            "the body must be a JSON object",
            errors=[{"field": "(body)", "rule": "object_type", "message": "not an object"}],
        )
    source = f"{channel}/http"
    prefix: tuple[str, ...] = ()
    if "specversion" in doc:
        try:
            event = CloudEvent.model_validate(doc)
        except ValidationError as exc:
            raise validation_problem(exc) from None
        if event.type != EventType.SUBMITTED:
            raise Problem(
                422,
                "Invalid request",
                "type must be complaint.submitted",
                errors=[
                    {
                        "field": "type",
                        "rule": "literal_error",
                        "message": "must be complaint.submitted",
                    }
                ],
            )
        doc, source, prefix = event.data, event.source, ("data",)
    try:
        return SubmittedData.model_validate(doc), source
    except ValidationError as exc:
        raise validation_problem(exc, prefix=prefix) from None
