"""Resolution's HTTP edge: the complaint view, for staff and for the channel that submitted it."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from services.resolution import action_batches, actions, cases, repository
from services.resolution.action_limit import ActionLimit
from services.resolution.case import Actor, ActorKind, Refusal
from services.resolution.policy import Remaining, remaining
from services.resolution.states import States
from shared import auth, directory
from shared.db import Conn
from shared.events import no_nul, utcnow
from shared.service import Service
from shared.web import Problem, bearer, problem_response

# What a channel may see of its own complaint's timeline (no internal notes or assignments).
CHANNEL_TIMELINE = {
    "complaint.received",
    "complaint.routed",
    "complaint.acknowledged",
    "complaint.information_requested",
    "complaint.customer_replied",
    "complaint.resolved",
    "complaint.reopened",
    "complaint.closed",
    "notification.sent",
    "notification.failed",
}


def _deadlines(case: dict[str, Any]) -> dict[str, str | None] | None:
    """Acknowledge-by and resolve-by as resolution's clocks set them (resolve-by is null while
    the clock is paused, waiting on the customer); None before the case is opened."""
    ack, resolve = case["acknowledge_by"], case["resolve_by"]
    if ack is None and resolve is None:
        return None
    return {
        "acknowledge_by": ack.isoformat() if ack else None,
        "resolve_by": resolve.isoformat() if resolve else None,
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
        "outcome": case["decided_outcome"],
        "breached": case["breached"],
        "version": case["version"],
        "policy_version": case["policy_version"],
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
    "outcome",
)


REMEDY_FIELDS = ("type", "amount", "percent", "at")

# What a channel sees of an entry's detail: what it must tell the customer, nothing more.
CHANNEL_DETAIL = {
    "complaint.information_requested": ("question",),
    "complaint.resolved": ("outcome", "message", "remedy"),
}


def _public_actor(actor: str) -> str:
    """Who acted, as the customer's channel may know it: the system, the customer, or staff."""
    return actor if actor == "system" or actor.startswith("customer:") else "staff"


def channel_view(found: dict[str, Any]) -> dict[str, Any]:
    """What the submitting channel sees: state and clocks, no staff-only detail."""
    full = staff_view(found)
    view = {name: full[name] for name in CHANNEL_FIELDS}
    if view["remedy"] is not None:  # what the customer was given, not who authorised it
        view["remedy"] = {k: v for k, v in view["remedy"].items() if k in REMEDY_FIELDS}
    view["timeline"] = [
        {
            **{k: v for k, v in entry.items() if k not in ("detail", "actor")},
            "actor": _public_actor(entry["actor"]),
            "detail": {
                k: entry["detail"][k]
                for k in CHANNEL_DETAIL.get(entry["type"], ())
                if k in entry["detail"]
            },
        }
        for entry in full["timeline"]
        if entry["type"] in CHANNEL_TIMELINE
    ]
    return view


def install(
    service: Service,
    router: APIRouter,
    policy: cases.PolicySource,
    limit: ActionLimit,
    known: States,
    staff_actions: action_batches.StaffActions,
) -> None:
    """Add resolution's routes to `router`; decisions use the active `policy` and go on from
    the case states `known` to this replica, and staff actions spend the member's rate
    `limit` and are kept in `staff_actions`' batches."""

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
            found = await repository.load_view(conn, _case_id(complaint_id))
        # nobody learns of complaints they may not see, not even that they exist
        if found is None or not _may_read(found["case"], member, channel):
            raise Problem(404, "Not found", f"no complaint {complaint_id}")
        return staff_view(found) if member is not None else channel_view(found)

    @router.post(
        "/v1/complaints/{complaint_id}/actions",
        responses={
            401: {"description": "no or bad staff token"},
            403: {
                "description": "the caller may not do this (`required_role` where a higher "
                "role could)"
            },
            404: {"description": "no such complaint"},
            409: {
                "description": "the case's state does not allow it (`state`, `missing`), or "
                "the `version` sent is stale (`current_version`)"
            },
            422: {"description": "a malformed action (the field is named)"},
            429: {
                "description": "the member's action limit is spent (a rate and a burst, per "
                "member, across every replica, with the command topic); retry after "
                "`Retry-After` seconds",
                "headers": {
                    "Retry-After": {
                        "description": "whole seconds until the member may act again",
                        "schema": {"type": "integer", "minimum": 1},
                    }
                },
            },
        },
        summary="A staff action on a complaint; authority is checked here, never trusted",
    )
    async def post_action(
        complaint_id: str,
        action: actions.Action,
        request: Request,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> Any:
        member = await service.staff_or_401(None, bearer(request))
        # with no connection held: a draw from the member's bucket may wait for another's,
        # and one waiting while holding a connection could leave none for the draw itself
        limited = await limit.check(member.staff_id)
        if limited is not None:
            return _too_many(limited, request.url.path)
        status, body = await staff_actions.act(
            action_batches.Request(
                _case_id(complaint_id), action, member, request.url.path, idempotency_key
            )
        )
        return _replayed(status, body, response)

    @router.post(
        "/v1/complaints/{complaint_id}/replies",
        responses={
            401: {"description": "no live channel key"},
            404: {"description": "unknown, or not submitted by the calling channel"},
            409: {"description": "nothing was asked of the customer, or the appeal window is over"},
            422: {"description": "a malformed reply"},
        },
        summary="The customer's answer to a request for information, or an appeal",
    )
    async def post_reply(
        complaint_id: str, reply: actions.Reply, request: Request, response: Response
    ) -> Any:
        async with service.pool.acquire() as conn, conn.transaction():
            channel = await directory.channel_for_key(conn, auth.hash_key(bearer(request)))
            if channel is None:
                raise Problem(401, "Unauthorized", "send the submitting channel's live key")
            found = await cases.load(conn, _case_id(complaint_id), known=known)
            if found is None or found.state.channel.value != channel:
                raise Problem(404, "Not found", f"no complaint {complaint_id}")
            result = await cases.act(
                conn,
                found,
                actions.reply_command(reply),
                Actor(id=f"customer:{channel}", kind=ActorKind.CUSTOMER),
                policy=await policy(conn, None),
                now=utcnow(),
                known=known,
                answer=True,
            )
            status, body = await _answer(
                conn, complaint_id, result, staff=False, instance=request.url.path
            )
        return _replayed(status, body, response)

    @router.get(
        "/v1/complaints/{complaint_id}/authority",
        responses={401: {"description": "no or bad staff token"}, 404: {"description": "none"}},
        summary="What the caller may still offer on this case, after limits and caps",
    )
    async def get_authority(complaint_id: str, request: Request) -> dict[str, Any]:
        async with service.pool.acquire() as conn:
            member = await service.staff_or_401(conn, bearer(request))
            loaded = await cases.load(conn, _case_id(complaint_id), known=known, lock=False)
            if loaded is None or not _may_read(dict(loaded.row), member, None):
                raise Problem(404, "Not found", f"no complaint {complaint_id}")
            active = await policy(conn, None)
            actor = cases.staff_actor(member, loaded.state)
            usage = await cases.usage(conn, loaded.state, actor, active, utcnow())
        # staff the complaint names may only give their account: they may offer nothing
        left = NOTHING if actor.named_in_case else remaining(active, member.role, usage)
        return {"role": member.role.value, "policy_version": active.version, **left.to_json()}

    @router.get(
        "/v1/complaints",
        responses={401: {"description": "no or bad staff token"}},
        summary="The queue: cases the caller may see, nearest deadline first, paged",
    )
    async def get_queue(
        request: Request,
        status: str | None = None,
        team: str | None = None,
        assignee: str | None = None,
        breached: bool | None = None,
        awaiting_approval_by: Annotated[str | None, Query(pattern="^me$")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        after: Annotated[str | None, Query(max_length=300)] = None,
    ) -> dict[str, Any]:
        async with service.pool.acquire() as conn:
            member = await service.staff_or_401(conn, bearer(request))
            try:
                cursor = repository.parse_cursor(after)
            except ValueError:
                raise Problem(
                    422, "Invalid request", "after: not a cursor from this queue"
                ) from None
            rows = await repository.queue(
                conn,
                reader=member,
                filters=repository.QueueFilters(
                    status=status,
                    team=team,
                    assignee=assignee,
                    breached=breached,
                    waiting_for_me=awaiting_approval_by == "me",
                ),
                limit=limit,
                after=cursor,
            )
        items = [_queue_item(r) for r in rows]
        next_page = repository.queue_cursor(rows[-1]) if len(rows) == limit else None
        return {"items": items, "next": next_page}


async def _answer(
    conn: Conn,
    complaint_id: str,
    result: cases.Kept | Refusal,
    *,
    staff: bool,
    instance: str,
) -> tuple[int, dict[str, Any]]:
    """The status and body an action's outcome answers with: the case's view (as the decision
    wrote it, or read when nothing was decided), or the refusal as a problem document."""
    if isinstance(result, Refusal):
        return result.status, refusal_document(result, instance)
    found = result.view or await repository.load_view(conn, complaint_id)
    assert found is not None
    return 200, staff_view(found) if staff else channel_view(found)


TITLES = {403: "Forbidden", 409: "Conflict", 422: "Invalid action", 429: "Too many requests"}
NOTHING = Remaining(
    money={},
    any_other_currency=False,
    discount_percent=Decimal(0),
    reserve_and_notify=False,
    apology_only=False,
)


def refusal_document(refusal: Refusal, instance: str) -> dict[str, Any]:
    return _refusal_problem(refusal).document(instance)


def _refusal_problem(refusal: Refusal) -> Problem:
    extra: dict[str, Any] = {"code": refusal.code}
    if refusal.required_role:
        extra["required_role"] = refusal.required_role
    if refusal.missing:
        extra["missing"] = refusal.missing
    if refusal.state:
        extra["state"] = refusal.state
    if refusal.current_version is not None:
        extra["current_version"] = refusal.current_version
    title = TITLES.get(refusal.status, "Refused")
    return Problem(refusal.status, title, refusal.reason, **extra)


def _too_many(refusal: Refusal, instance: str) -> JSONResponse:
    """429 with `Retry-After` in whole seconds and a problem document."""
    return problem_response(
        _refusal_problem(refusal), instance, {"Retry-After": str(refusal.retry_after)}
    )


def _replayed(status: int, body: dict[str, Any], response: Response) -> Any:
    """`body` with `status`: a view as is, a refusal as a problem document."""
    if status == 200:
        return body
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _iso(at: Any) -> str | None:
    return at.isoformat() if at is not None else None


def _queue_item(row: Any) -> dict[str, Any]:
    return {
        "complaint_id": row["complaint_id"],
        "status": row["status"],
        "team": row["team"],
        "assignee": row["assignee"],
        "severity": row["severity"],
        "category": row["category"],
        "deadlines": _deadlines(dict(row)),
        "next_due": _iso(repository.next_due(row)),
        "breached": row["breached"],
        "waiting_role": row["waiting_role"],
        "version": row["version"],
    }


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


def _case_id(complaint_id: str) -> str:
    """The path's complaint id; 404 for one that can name no complaint (text PostgreSQL cannot
    hold, which would otherwise fail the statement reading it)."""
    try:
        return no_nul(complaint_id)
    except ValueError:
        raise Problem(404, "Not found", "no such complaint") from None


def _may_read(case: dict[str, Any], member: directory.Member | None, channel: str | None) -> bool:
    """Staff read their team's cases (managers and directors every team's) and cases that name
    them; a channel reads the complaints it submitted."""
    if member is None:
        return bool(case["channel"] == channel)
    if member.role.every_team or member.team == case["team"]:
        return True
    named: list[dict[str, Any]] = case["staff_involved"] or []
    return any(entry.get("staff_id") == member.staff_id for entry in named)
