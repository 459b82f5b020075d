"""Staff credentials are checked against the directory (read again at most a second after a
member was admitted): a token must name an active member, live no longer than the maximum,
and be issued after the member's last revocation; removal and revocation take effect on the
replicas within seconds. Readers see
only their team's cases (managers every team's)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.intake import admin
from shared import auth
from tests.support import eventually, submission


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status(running, token: str, path: str = "/v1/complaints/nope") -> int:
    answer = await running.http.get(path, headers=_headers(token))
    return answer.status_code


async def _refused_within(running, token: str, seconds: float = 10) -> float:
    """Seconds until `token` gets a 401 (polling every 50 ms)."""
    started = asyncio.get_running_loop().time()
    while await _status(running, token) != 401:
        waited = asyncio.get_running_loop().time() - started
        assert waited < seconds, f"still accepted after {seconds}s"
        await asyncio.sleep(0.05)
    return asyncio.get_running_loop().time() - started


async def test_a_token_for_nobody_in_the_directory_is_refused(running) -> None:
    answer = await running.http.get(
        "/v1/complaints/nope", headers=_headers(running.staff_token("nobody-by-this-id"))
    )
    assert answer.status_code == 401
    assert "names no member" in answer.json()["detail"]


async def test_expired_and_overlong_tokens_are_refused(running) -> None:
    expired = auth.issue_token(
        running.secret, kind=auth.STAFF, subject="manager-1", ttl_s=60, now=1_000_000
    )
    overlong = auth.issue_token(
        running.secret, kind=auth.STAFF, subject="manager-1", ttl_s=100 * 365 * 86400
    )
    assert await _status(running, expired) == 401
    assert await _status(running, overlong) == 401
    assert await _status(running, running.staff_token()) == 404  # a good one gets through


async def test_revoked_tokens_are_refused_and_new_ones_work(running) -> None:
    staff_id = f"rev-{uuid.uuid4().hex[:6]}"
    await running.add_member(staff_id)
    before = running.staff_token(staff_id)
    assert await _status(running, before) == 404
    # admitted, so kept for the recheck time: the revocation must still be enforced
    assert running.services["resolution"].members.get(staff_id) is not None
    await asyncio.sleep(0.01)  # the revocation comes after the token's issue time
    await admin.revoke_tokens(running.settings, staff_id)
    waited = await _refused_within(running, before)
    assert waited < 5
    after = running.staff_token(staff_id)
    assert await _status(running, after) == 404
    # notify keeps its own replica of the directory: it refuses the stream within seconds too
    started = asyncio.get_running_loop().time()
    while (
        await running.http.get("/v1/stream", params={"access_token": before})
    ).status_code != 401:
        assert asyncio.get_running_loop().time() - started < 5, "the stream still accepts it"
        await asyncio.sleep(0.05)


async def test_a_removed_member_is_refused_and_cannot_get_a_token(running) -> None:
    staff_id = f"gone-{uuid.uuid4().hex[:6]}"
    await running.add_member(staff_id)
    token = running.staff_token(staff_id)
    assert await _status(running, token) == 404
    await admin.remove_staff(running.settings, staff_id)
    assert await _refused_within(running, token) < 5
    with pytest.raises(admin.AdminError, match="was removed"):
        await admin.token_for(running.settings, running.secret, staff_id, ttl_s=60)
    with pytest.raises(admin.AdminError, match="no staff member"):
        await admin.token_for(running.settings, running.secret, "nobody-at-all", ttl_s=60)
    # taken back: a new token works, the old one stays refused
    await running.add_member(staff_id)
    fresh = await admin.token_for(running.settings, running.secret, staff_id, ttl_s=60)
    assert await _status(running, fresh) == 404
    assert await _status(running, token) == 401


async def test_staff_read_their_teams_cases_managers_every_teams(running) -> None:
    answer = await running.http.post(
        "/v1/complaints",
        json=submission("web", description="The checkout page crashed and charged me twice."),
        headers=_headers(running.web_key),
    )
    assert answer.status_code == 202, answer.text
    complaint_id = answer.json()["complaint_id"]
    path = f"/v1/complaints/{complaint_id}"
    view = await eventually(
        lambda: _json_if_ok(running, path, running.staff_token()), what="the routed view"
    )
    team = view["team"]
    inside, outside = f"in-{uuid.uuid4().hex[:6]}", f"out-{uuid.uuid4().hex[:6]}"
    await running.add_member(inside, team=team)
    await running.add_member(outside, team=f"not-{team}")
    assert await _status(running, running.staff_token(inside), path) == 200
    assert await _status(running, running.staff_token(outside), path) == 404


async def _json_if_ok(running, path: str, token: str):
    answer = await running.http.get(path, headers=_headers(token))
    return answer.json() if answer.status_code == 200 else None
