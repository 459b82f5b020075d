"""The staff directory and the channel keys, as every service learns them from intake.

Intake owns both. It announces each member's full state on the internal staff topic whenever
it changes (and, when it starts, whatever it has not announced yet), and each channel key's
creation and revocation (hashes only) on the channel-keys topic. A service that checks
credentials or authority keeps a replica, learnt through its routers (`learn_staff`,
`learn_keys`): the newest version of a member wins, so a redelivered or late event never
undoes a later change. Staff tokens are checked against the replica (a member admitted is read
again at most `COMPLAINTS_STAFF_RECHECK_S` later, `Recent`): a token must name an active member
and be issued after the member's last revocation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pydantic import BaseModel

from shared import auth, outbox, topics
from shared.db import Conn
from shared.events import ChannelKeyData, EventType, Role, new_event
from shared.routing import Delivery, EventRouter


class Member(BaseModel):
    """A member's full state as announced (`staff.changed`) and as a replica keeps it."""

    staff_id: str
    name: str
    team: str
    role: Role
    languages: list[str]
    available: bool  # on shift: offered new cases
    active: bool  # a member at all: may sign in and act
    tokens_valid_after: datetime | None = None
    version: int
    at: datetime


def member_message(member: Member, *, source: str) -> outbox.Message:
    """The event announcing `member`'s state, keyed by staff id (one member's changes keep
    their order)."""
    event = new_event(
        type=EventType.STAFF_CHANGED, source=source, subject=member.staff_id, data=member
    )
    return outbox.Message(topics.STAFF, member.staff_id, event)


_COLUMNS = "staff_id, name, team, role, languages, available, active, tokens_valid_after, version"


async def learn_member(conn: Conn, member: Member) -> None:
    """Keep `member` in this service's replica unless it already has a newer version."""
    await conn.execute(
        f"""INSERT INTO staff_directory ({_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (staff_id) DO UPDATE SET
                name = EXCLUDED.name, team = EXCLUDED.team, role = EXCLUDED.role,
                languages = EXCLUDED.languages, available = EXCLUDED.available,
                active = EXCLUDED.active, tokens_valid_after = EXCLUDED.tokens_valid_after,
                version = EXCLUDED.version, learnt_at = now()
            WHERE staff_directory.version < EXCLUDED.version""",
        member.staff_id,
        member.name,
        member.team,
        member.role.value,
        member.languages,
        member.available,
        member.active,
        member.tokens_valid_after,
        member.version,
    )


async def find_member(conn: Conn, staff_id: str) -> Member | None:
    """The member with this id as this service knows them, or None."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, learnt_at AS at FROM staff_directory WHERE staff_id = $1", staff_id
    )
    return None if row is None else Member.model_validate(dict(row))


async def admit(
    principal: auth.Principal,
    recent: Recent,
    read: Callable[[str], Awaitable[Member | None]],
) -> Member:
    """The active member a verified staff token names: the one `recent` kept, else the one
    `read` gives from the directory (kept if the token admits them: a refusal is never kept);
    `auth.InvalidToken` when nobody by that id is known, they were removed, or their tokens
    were revoked after this one was issued (`admitted`)."""
    member = recent.get(principal.subject)
    if member is not None:
        return admitted(member, principal)
    read_at = recent.now()  # the entry's age counts from before the read
    member = admitted(await read(principal.subject), principal)
    recent.keep(member, read_at)
    return member


def admitted(member: Member | None, principal: auth.Principal) -> Member:
    """`member`, the directory's entry for a verified staff token's subject, if the token
    admits them (see `admit`)."""
    if member is None:
        raise auth.InvalidToken("it names no member of the staff directory")
    if not member.active:
        raise auth.InvalidToken("it names a member who was removed")
    revoked = member.tokens_valid_after
    if revoked is not None and datetime.fromtimestamp(principal.issued_at, UTC) < revoked:
        raise auth.InvalidToken("revoked")
    return member


class Recent:
    """The active members this process admitted lately, each for `ttl_s` after it read them
    from the directory: a token check within that time costs no round trip to the database.
    The price: a removal, a revocation, or a change of role or team reaches this process's
    checks up to `ttl_s` after its replica of the directory learnt it (at once on the replica
    that learns it, which `clear`s). Only admitted members are kept, so a token naming nobody
    is looked up every time; the oldest entries go when `max_members` are kept."""

    def __init__(
        self,
        ttl_s: float,
        *,
        max_members: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_members
        self.now = clock
        self._kept: dict[str, tuple[float, Member]] = {}

    def get(self, staff_id: str) -> Member | None:
        """The member as read less than `ttl_s` ago, or None."""
        found = self._kept.get(staff_id)
        if found is None:
            return None
        if self.now() - found[0] >= self._ttl_s:
            del self._kept[staff_id]
            return None
        return found[1]

    def keep(self, member: Member, read_at: float) -> None:
        """Remember `member`, read from the directory at `read_at` (by this clock)."""
        if self._ttl_s <= 0:
            return
        self._kept.pop(member.staff_id, None)
        if len(self._kept) >= self._max:
            del self._kept[next(iter(self._kept))]  # the oldest read
        self._kept[member.staff_id] = (read_at, member)

    def clear(self) -> None:
        """Forget every member (this replica just learnt changes to the directory)."""
        self._kept.clear()


def learn_staff(router: EventRouter) -> None:
    """Route the staff topic's events to this service's replica."""

    @router.on(EventType.STAFF_CHANGED, model=Member)
    async def staff_changed(conn: Conn, member: Member, _: Delivery) -> None:
        await learn_member(conn, member)


def learn_keys(router: EventRouter) -> None:
    """Route the channel-keys topic's events to this service's replica (hashes only)."""

    @router.on(EventType.CHANNEL_KEY_CREATED, EventType.CHANNEL_KEY_REVOKED, model=ChannelKeyData)
    async def key_changed(conn: Conn, key: ChannelKeyData, delivery: Delivery) -> None:
        revoked = delivery.event.type == EventType.CHANNEL_KEY_REVOKED
        await learn_key(conn, key, revoked=revoked)


async def learn_key(conn: Conn, key: ChannelKeyData, *, revoked: bool) -> None:
    """Remember a key's hash and channel; a revocation is final, whatever arrives after it."""
    await conn.execute(
        """INSERT INTO channel_keys (key_hash, key_id, channel, revoked_at)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (key_hash) DO UPDATE
           SET revoked_at = coalesce(channel_keys.revoked_at, EXCLUDED.revoked_at)""",
        key.key_hash,
        key.key_id,
        key.channel.value,
        key.at if revoked else None,
    )


async def channel_for_key(conn: Conn, key_hash: str) -> str | None:
    """The channel a live key (by its hash) belongs to, or None for unknown and revoked keys."""
    found = await conn.fetchval(
        "SELECT channel FROM channel_keys WHERE key_hash = $1 AND revoked_at IS NULL", key_hash
    )
    return None if found is None else str(found)
