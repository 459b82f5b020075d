"""Case clocks on the shared timers, against the real broker and database: under a policy of
seconds, a case's acknowledge and resolve clocks warn at each fraction and breach once each,
the breach escalating; a policy version loaded and activated reaches the running service
within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.resolution import admin
from shared import topics
from tests.support import activate_policy, clocks_in_seconds, eventually, read_topic, submission

CACHE_S = 2.5  # a replica re-reads the active policy at most every 2 s
TRACE_ID = "5b8efff798038103d269b633813fc60c"
TRACEPARENT = f"00-{TRACE_ID}-eee19b7ec3c1b174-01"


@contextlib.asynccontextmanager
async def policy_of_seconds(running, tmp_path: Path) -> AsyncIterator[int]:
    """The default policy with every clock in seconds, active for the block, then the one
    before it again."""
    before = (await admin.show_policy(running.settings)).policy.version
    version = await activate_policy(running.settings, tmp_path, clocks_in_seconds("2s", "4s"))
    await asyncio.sleep(CACHE_S)
    try:
        yield version
    finally:
        await admin.activate_policy(running.settings, before)
        await asyncio.sleep(CACHE_S)


@pytest.mark.timeout(120)
async def test_warnings_and_breaches_fire_once_each_and_escalate(running, tmp_path) -> None:
    async with policy_of_seconds(running, tmp_path) as version:
        answer = await running.http.post(
            "/v1/complaints",
            json=submission("web"),
            headers={"Authorization": f"Bearer {running.web_key}", "traceparent": TRACEPARENT},
        )
        assert answer.status_code == 202, answer.text
        complaint_id = answer.json()["complaint_id"]
        headers = {"Authorization": f"Bearer {running.staff_token()}"}

        async def breached_twice() -> list[dict[str, Any]] | None:
            view = (
                await running.http.get(f"/v1/complaints/{complaint_id}", headers=headers)
            ).json()
            timeline = view.get("timeline", [])
            breaches = [e for e in timeline if e["type"] == "complaint.sla_breached"]
            return timeline if len(breaches) >= 2 else None

        timeline = await eventually(breached_twice, timeout_s=40, what="both clocks breached")
        await asyncio.sleep(1.5)  # room for any duplicate to show
        view = (await running.http.get(f"/v1/complaints/{complaint_id}", headers=headers)).json()
    timeline = view["timeline"]
    fired = Counter(
        (e["type"], e["detail"].get("clock"), e["detail"].get("what"))
        for e in timeline
        if e["type"] in ("complaint.sla_warning", "complaint.sla_breached", "complaint.escalated")
    )
    assert view["breached"] is True
    assert view["policy_version"] == version
    for clock in ("acknowledge", "resolve"):
        warnings = {
            k: n for k, n in fired.items() if k[0] == "complaint.sla_warning" and k[1] == clock
        }
        assert len(warnings) == 2 and set(warnings.values()) == {1}, fired
        assert fired[("complaint.sla_breached", clock, "breach")] == 1, fired
    # each breach escalates once, to the next role someone holds in the team's chain above
    # the last one (none when nobody above is left)
    escalations = {k: n for k, n in fired.items() if k[0] == "complaint.escalated"}
    assert escalations and set(escalations.values()) == {1}, fired

    # every warning, breach and escalation continues the complaint's trace (the clocks were
    # armed in it), as the events of its submission and routing do
    traces: dict[str, set[str]] = {}
    for record in await read_topic(running.settings.kafka_bootstrap, topics.EVENTS):
        if record.key != complaint_id.encode():
            continue
        parent = dict(record.headers).get("traceparent", b"").decode()
        traces.setdefault(json.loads(record.value)["type"], set()).add(parent.split("-")[1])
    timed = ("complaint.sla_warning", "complaint.sla_breached", "complaint.escalated")
    assert all(t in traces for t in (*timed, "complaint.routed")), traces
    assert set().union(*traces.values()) == {TRACE_ID}, traces
