"""Token checks read a member from the directory again once their entry is `ttl_s` old, a
kept entry admits a token only as the directory's entry would, and a refusal is never kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared import auth
from shared.directory import Member, Recent, admit, admitted
from shared.events import Role

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _member(staff_id: str = "agent-1", **changes: object) -> Member:
    fields: dict[str, object] = {
        "staff_id": staff_id,
        "name": "Ayşe",
        "team": "customer-care",
        "role": Role.AGENT,
        "languages": ["tr"],
        "available": True,
        "active": True,
        "version": 3,
        "at": NOW,
    }
    return Member.model_validate(fields | changes)


def test_a_member_is_kept_for_the_recheck_time_only() -> None:
    clock = _Clock()
    recent = Recent(1.0, clock=clock)
    assert recent.get("agent-1") is None
    recent.keep(_member(), clock())
    clock.now += 0.99
    assert recent.get("agent-1") == _member()
    clock.now += 0.01
    assert recent.get("agent-1") is None  # read again from the directory
    assert recent.get("agent-1") is None


def test_a_recheck_time_of_zero_keeps_nobody() -> None:
    clock = _Clock()
    recent = Recent(0.0, clock=clock)
    recent.keep(_member(), clock())
    assert recent.get("agent-1") is None


def test_the_oldest_read_goes_first_when_full() -> None:
    clock = _Clock()
    recent = Recent(10.0, max_members=2, clock=clock)
    recent.keep(_member("a"), clock())
    recent.keep(_member("b"), clock())
    recent.keep(_member("a"), clock())  # read again: now the newest
    recent.keep(_member("c"), clock())
    assert recent.get("b") is None
    assert recent.get("a") is not None
    assert recent.get("c") is not None


def test_clear_forgets_everyone() -> None:
    clock = _Clock()
    recent = Recent(10.0, clock=clock)
    recent.keep(_member(), clock())
    recent.clear()
    assert recent.get("agent-1") is None


def _principal(issued: datetime) -> auth.Principal:
    token = auth.issue_token(
        b"secret", kind=auth.STAFF, subject="agent-1", ttl_s=600, now=issued.timestamp()
    )
    return auth.verify_token(
        b"secret", token, kind=auth.STAFF, max_lifetime_s=3600, now=issued.timestamp() + 1
    )


@pytest.mark.parametrize(
    ("member", "refusal"),
    [
        (None, "names no member"),
        (_member(active=False), "removed"),
        (_member(tokens_valid_after=NOW + timedelta(seconds=1)), "revoked"),
    ],
)
def test_an_entry_admits_a_token_only_as_the_directory_would(
    member: Member | None, refusal: str
) -> None:
    with pytest.raises(auth.InvalidToken, match=refusal):
        admitted(member, _principal(NOW))


def test_a_token_issued_after_the_revocation_is_admitted() -> None:
    member = _member(tokens_valid_after=NOW)
    assert admitted(member, _principal(NOW + timedelta(seconds=5))) == member


class _Directory:
    """The replica as `admit` reads it, counting the reads."""

    def __init__(self, member: Member | None) -> None:
        self.member = member
        self.reads = 0

    async def read(self, staff_id: str) -> Member | None:
        self.reads += 1
        return self.member


async def test_an_admitted_member_is_read_once_per_recheck_time() -> None:
    clock = _Clock()
    recent = Recent(1.0, clock=clock)
    directory = _Directory(_member())
    for _ in range(3):
        assert await admit(_principal(NOW), recent, directory.read) == _member()
    assert directory.reads == 1
    clock.now += 1.0
    await admit(_principal(NOW), recent, directory.read)
    assert directory.reads == 2


async def test_a_kept_member_still_refuses_a_token_issued_before_their_revocation() -> None:
    clock = _Clock()
    recent = Recent(10.0, clock=clock)
    revoked_at = NOW + timedelta(minutes=1)
    directory = _Directory(_member(tokens_valid_after=revoked_at))
    await admit(_principal(revoked_at + timedelta(seconds=1)), recent, directory.read)
    with pytest.raises(auth.InvalidToken, match="revoked"):
        await admit(_principal(NOW), recent, directory.read)
    assert directory.reads == 1  # refused on the kept entry


@pytest.mark.parametrize("member", [None, _member(active=False)])
async def test_a_refusal_is_never_kept(member: Member | None) -> None:
    clock = _Clock()
    recent = Recent(10.0, clock=clock)
    directory = _Directory(member)
    for _ in range(2):
        with pytest.raises(auth.InvalidToken):
            await admit(_principal(NOW), recent, directory.read)
    assert directory.reads == 2
    assert recent.get("agent-1") is None


async def test_the_recheck_time_counts_from_before_the_read() -> None:
    clock = _Clock()
    recent = Recent(1.0, clock=clock)

    async def slow_read(staff_id: str) -> Member | None:
        clock.now += 0.6  # the read took a while
        return _member()

    await admit(_principal(NOW), recent, slow_read)
    clock.now += 0.5
    assert recent.get("agent-1") is None  # 1.1 s after the read began
