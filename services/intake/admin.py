"""Intake's administration as use cases: channel keys, the staff directory, the routing table.

The CLI calls these; each opens its own connection and transaction. Events they cause (a
reassignment) go to intake's outbox, which a running intake publishes.
"""

from __future__ import annotations

import math
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from services.intake import handlers, repository
from shared import auth, directory, outbox, topics
from shared.db import Conn, admin_transaction
from shared.events import Channel, ChannelKeyData, EventType, Role, new_event, utcnow
from shared.settings import Settings

ROLES = tuple(Role)


class AdminError(Exception):
    """A request the directory cannot carry out, in words for the operator."""


def _transaction(settings: Settings) -> AbstractAsyncContextManager[asyncpg.Connection]:
    return admin_transaction(settings.require_database_url(), "intake")


async def create_key(
    settings: Settings, channel: str, *, rate_per_s: float | None = None, burst: int | None = None
) -> str:
    """A new key for `channel`, with its own limit where given (else the default); only its
    hash is stored."""
    if rate_per_s is not None and not (rate_per_s > 0 and math.isfinite(rate_per_s)):
        raise AdminError("rate must be a number of requests a second above zero")
    if burst is not None and burst < 1:
        raise AdminError("burst must be one or more")
    key = auth.new_channel_key(channel)
    digest = auth.hash_key(key)
    async with _transaction(settings) as conn:
        await repository.add_channel_key(
            conn,
            key_id=digest[:12],
            channel=channel,
            key_hash=digest,
            rate_per_s=rate_per_s,
            burst=burst,
        )
        await _key_event(conn, EventType.CHANNEL_KEY_CREATED, digest[:12], channel, digest)
    return key


async def channel_of(settings: Settings, key: str) -> str | None:
    async with _transaction(settings) as conn:
        return await directory.channel_for_key(conn, auth.hash_key(key))


async def list_keys(settings: Settings) -> list[dict[str, Any]]:
    """Every key with its limit in force (`rate_is_default`, `burst_is_default`: none of its
    own, so the configured default applies)."""
    async with _transaction(settings) as conn:
        rows = await repository.list_channel_keys(conn)
    return [
        {
            **dict(r),
            "rate_per_s": settings.key_rate_per_s if r["rate_per_s"] is None else r["rate_per_s"],
            "burst": settings.key_burst if r["burst"] is None else r["burst"],
            "rate_is_default": r["rate_per_s"] is None,
            "burst_is_default": r["burst"] is None,
        }
        for r in rows
    ]


async def revoke_key(settings: Settings, key_id: str) -> bool:
    async with _transaction(settings) as conn:
        revoked = await repository.revoke_channel_key(conn, key_id)
        if revoked is None:
            return False
        await _key_event(conn, EventType.CHANNEL_KEY_REVOKED, key_id, *revoked)
        return True


async def _key_event(conn: Conn, type_: EventType, key_id: str, channel: str, digest: str) -> None:
    """Tell the other services about a key (its hash only), through intake's outbox."""
    data = ChannelKeyData(key_id=key_id, channel=Channel(channel), key_hash=digest, at=utcnow())
    event = new_event(type=type_, source=handlers.SOURCE, subject=key_id, data=data)
    await outbox.enqueue(conn, [outbox.Message(topics.CHANNEL_KEYS, key_id, event)])


def _check_member(role: str | None, languages: list[str] | None, capacity: int | None) -> None:
    if role is not None and role not in ROLES:
        raise AdminError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if capacity is not None and capacity < 0:
        raise AdminError("capacity must be zero or more")
    if languages is not None and not all(
        lang.isalpha() and 2 <= len(lang) <= 3 for lang in languages
    ):
        raise AdminError("languages must be two- or three-letter codes, e.g. en,tr,nl")


async def add_staff(
    settings: Settings,
    *,
    staff_id: str,
    name: str,
    team: str,
    role: str,
    languages: list[str],
    capacity: int,
    available: bool = True,
) -> None:
    """Add a member to the directory; a removed member is taken back with these details (their
    tokens from before stay revoked)."""
    _check_member(role, languages, capacity)
    member = {
        "name": name,
        "team": team,
        "role": role,
        "languages": [lang.lower() for lang in languages],
        "capacity": capacity,
        "available": available,
    }
    try:
        async with _transaction(settings) as conn:
            before = await repository.update_staff(conn, staff_id)
            if before is not None and before["active"]:
                raise AdminError(f"staff {staff_id} already exists; use `staff set`")
            if before is None:
                await repository.add_staff(conn, staff_id=staff_id, **member)
            else:
                await repository.update_staff(conn, staff_id, active=True, **member)
            await announce_staff(conn)
    except asyncpg.UniqueViolationError:  # added meanwhile by someone else
        raise AdminError(f"staff {staff_id} already exists; use `staff set`") from None


async def announce_staff(conn: Conn) -> int:
    """Announce every member changed since their last announcement to the services that learn
    the directory, in the caller's transaction; how many. Every change to the directory calls
    it, and so does intake when it starts (a change made while no intake ran, a migration)."""
    changed = await repository.take_unannounced(conn)
    now = utcnow()
    await outbox.enqueue(
        conn,
        [
            directory.member_message(
                directory.Member.model_validate({**dict(r), "at": now}), source=handlers.SOURCE
            )
            for r in changed
        ],
    )
    return len(changed)


async def remove_staff(settings: Settings, staff_id: str) -> list[str]:
    """Deactivate a member: no new cases, their unacknowledged ones reassigned, every token of
    theirs refused. Returns the complaint ids moved."""
    async with _transaction(settings) as conn:
        await repository.lock_member_teams(conn, staff_id)
        before = await repository.update_staff(conn, staff_id, active=False, available=False)
        if before is None:
            raise AdminError(f"no staff member {staff_id}")
        await repository.revoke_tokens(conn, staff_id)
        moved = await handlers.reassign_from(
            conn, staff_id, reason="assignee removed", now=utcnow()
        )
        await announce_staff(conn)
        return moved


async def revoke_tokens(settings: Settings, staff_id: str) -> None:
    """Refuse every token issued to a member until now (they may sign in again)."""
    async with _transaction(settings) as conn:
        if not await repository.revoke_tokens(conn, staff_id):
            raise AdminError(f"no staff member {staff_id}")
        await announce_staff(conn)


async def token_for(settings: Settings, secret: bytes, staff_id: str, *, ttl_s: int) -> str:
    """A bearer token for an active member, living `ttl_s` seconds (at most the configured
    maximum)."""
    longest = settings.staff_token_max_lifetime_s
    if not 0 < ttl_s <= longest:
        raise AdminError(
            f"a token lives between 1 and {longest} seconds (COMPLAINTS_STAFF_TOKEN_MAX_LIFETIME_S)"
        )
    async with _transaction(settings) as conn:
        # the issue time by the database's clock, which also dates revocations
        member = await conn.fetchrow(
            "SELECT active, extract(epoch FROM clock_timestamp())::float8 AS now "
            "FROM staff WHERE staff_id = $1",
            staff_id,
        )
    if member is None:
        raise AdminError(f"no staff member {staff_id}")
    if not member["active"]:
        raise AdminError(f"staff member {staff_id} was removed")
    return auth.issue_token(
        secret, kind=auth.STAFF, subject=staff_id, ttl_s=ttl_s, now=member["now"]
    )


async def set_staff(settings: Settings, staff_id: str, **changes: Any) -> list[str]:
    """Change a member; when they become unavailable (or leave a team), their unacknowledged
    cases are reassigned. Returns the complaint ids moved."""
    changes = {k: v for k, v in changes.items() if v is not None}
    _check_member(changes.get("role"), changes.get("languages"), changes.get("capacity"))
    async with _transaction(settings) as conn:
        return await change_staff(conn, staff_id, **changes)


async def change_staff(conn: Conn, staff_id: str, **changes: Any) -> list[str]:
    """`set_staff`'s change (checked values, None left out), in the caller's transaction."""
    if changes.get("available") is False or "team" in changes:  # may reassign their cases
        await repository.lock_member_teams(conn, staff_id, joining=changes.get("team"))
    before = await repository.update_staff(conn, staff_id, **changes)
    if before is None:
        raise AdminError(f"no staff member {staff_id}")
    if not before["active"]:
        raise AdminError(f"staff member {staff_id} was removed")
    await announce_staff(conn)
    leaving = (before["available"] and changes.get("available") is False) or (
        "team" in changes and changes["team"] != before["team"]
    )
    if not leaving:
        return []
    why = "assignee unavailable" if changes.get("available") is False else "assignee moved team"
    return await handlers.reassign_from(conn, staff_id, reason=why, now=utcnow())


async def list_staff(settings: Settings) -> list[dict[str, Any]]:
    async with _transaction(settings) as conn:
        return [
            {**dict(r), "id": r["staff_id"], "languages": list(r["languages"])}
            for r in await repository.list_staff(conn)
        ]


# The member `complaints up` prints a token for: a manager (sees every team) who is offered
# no cases (capacity 0).
CONSOLE_MEMBER = "demo-manager"


async def ensure_console_member(settings: Settings) -> None:
    """Add the console's manager to the directory unless they are there already."""
    async with _transaction(settings) as conn:
        if await conn.fetchval("SELECT 1 FROM staff WHERE staff_id = $1", CONSOLE_MEMBER):
            return
    await add_staff(
        settings,
        staff_id=CONSOLE_MEMBER,
        name="Demo Manager",
        team="customer-care",
        role=Role.MANAGER,
        languages=["en"],
        capacity=0,
    )


async def seed_demo_staff(settings: Settings) -> int:
    """A small directory for the demo, when the directory is empty; returns members added."""
    async with _transaction(settings) as conn:
        if await repository.staff_count(conn):
            return 0
    members = [
        ("ana", "Ana Lopes", "customer-care", "agent", ["en", "nl"], 12),
        ("burak", "Burak Şahin", "customer-care", "agent", ["tr", "en"], 12),
        ("claire", "Claire Dubois", "customer-care", "supervisor", ["en"], 6),
        ("daan", "Daan Visser", "product-quality", "agent", ["nl", "en"], 12),
        ("elif", "Elif Arslan", "product-quality", "senior_agent", ["tr", "en"], 10),
        ("femke", "Femke de Boer", "store-operations", "agent", ["nl"], 12),
        ("gokhan", "Gökhan Çelik", "store-operations", "agent", ["tr"], 12),
        ("hannah", "Hannah Price", "conduct-review", "manager", ["en", "nl", "tr"], 8),
        ("ivo", "Ivo Jansen", "marketing", "agent", ["nl", "en"], 12),
        ("jale", "Jale Demir", "digital", "agent", ["tr", "en"], 12),
    ]
    for staff_id, name, team, role, languages, capacity in members:
        await add_staff(
            settings,
            staff_id=staff_id,
            name=name,
            team=team,
            role=role,
            languages=languages,
            capacity=capacity,
        )
    return len(members)


ROUTE_FIELDS = ("category", "channel", "language", "severity", "tier")


async def list_routes(settings: Settings) -> list[dict[str, Any]]:
    async with _transaction(settings) as conn:
        rules = await repository.routing_rules(conn)
    ordered = sorted(rules, key=lambda r: (r.priority, -r.specificity, r.rule_id))
    return [
        {
            "rule_id": r.rule_id,
            "priority": r.priority,
            "team": r.team,
            **{f: getattr(r, f) for f in ROUTE_FIELDS},
        }
        for r in ordered
    ]


async def add_route(settings: Settings, *, team: str, priority: int, **match: str | None) -> int:
    """Add a routing rule; fields left out match anything."""
    from shared.events import Category, Channel, Severity

    allowed = {"category": Category, "channel": Channel, "severity": Severity}
    for name, enum in allowed.items():
        value = match.get(name)
        if value is not None and value not in {m.value for m in enum}:
            raise AdminError(f"{name} must be one of {', '.join(m.value for m in enum)}")
    fields = {k: v for k, v in match.items() if k in ROUTE_FIELDS and v is not None}
    async with _transaction(settings) as conn:
        return await repository.add_routing_rule(conn, team=team, priority=priority, **fields)


async def remove_route(settings: Settings, rule_id: int) -> bool:
    async with _transaction(settings) as conn:
        return await repository.remove_routing_rule(conn, rule_id)
