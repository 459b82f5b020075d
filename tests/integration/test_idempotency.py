"""The same (channel, external_id) makes one complaint and one receipt, even 20 at once."""

from __future__ import annotations

import asyncio

from tests.conftest import Running
from tests.support import eventually, submission


async def _events_of(running: Running, complaint_id: str, type_: str) -> int:
    rows = await running.sql(
        "SELECT count(*) AS n FROM notify.stream_events WHERE complaint_id = $1 AND type = $2",
        complaint_id,
        type_,
    )
    return rows[0]["n"]


async def test_twice_in_a_row_returns_the_same_complaint(running):
    key = await running.channel_key("web")
    data = submission("web")
    headers = {"Authorization": f"Bearer {key}"}

    first = await running.http.post("/v1/complaints", json=data, headers=headers)
    second = await running.http.post("/v1/complaints", json=data, headers=headers)

    assert first.status_code == second.status_code == 202
    assert first.json()["complaint_id"] == second.json()["complaint_id"]
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)


async def test_twenty_concurrent_duplicates_make_one_complaint_and_one_receipt(running, smtp):
    key = await running.channel_key("web")
    data = submission("web")
    headers = {"Authorization": f"Bearer {key}"}

    answers = await asyncio.gather(
        *(running.http.post("/v1/complaints", json=data, headers=headers) for _ in range(20))
    )

    assert {a.status_code for a in answers} == {202}
    ids = {a.json()["complaint_id"] for a in answers}
    assert len(ids) == 1
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    complaint_id = ids.pop()

    async def sent():
        return await _events_of(running, complaint_id, "notification.sent")

    await eventually(sent, what="notification.sent")
    await asyncio.sleep(1.5)  # room for any duplicate to show up
    assert len(smtp.to(data["customer"]["email"])) == 1
    assert await _events_of(running, complaint_id, "complaint.received") == 1
    assert await _events_of(running, complaint_id, "notification.sent") == 1
    rows = await running.sql(
        "SELECT count(*) AS n FROM intake.complaints WHERE channel = 'web' AND external_id = $1",
        data["external_id"],
    )
    assert rows[0]["n"] == 1
