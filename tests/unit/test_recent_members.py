"""Token checks read a member from the directory again once their entry is `ttl_s` old, and
a cached entry admits a token only as the directory's entry would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared import auth
from shared.directory import Member, Recent, admitted
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
    recent.keep(_member())
    clock.now += 0.99
    assert recent.get("agent-1") == _member()
    clock.now += 0.01
    assert recent.get("agent-1") is None  # read again from the directory
    assert recent.get("agent-1") is None


def test_a_recheck_time_of_zero_keeps_nobody() -> None:
    recent = Recent(0.0, clock=_Clock())
    recent.keep(_member())
    assert recent.get("agent-1") is None


def test_the_oldest_read_goes_first_when_full() -> None:
    clock = _Clock()
    recent = Recent(10.0, max_members=2, clock=clock)
    recent.keep(_member("a"))
    recent.keep(_member("b"))
    recent.keep(_member("a"))  # read again: now the newest
    recent.keep(_member("c"))
    assert recent.get("b") is None
    assert recent.get("a") is not None
    assert recent.get("c") is not None


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
