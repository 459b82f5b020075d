"""Two resolution processes share 2,000 cases whose clocks run out within seconds; one is
SIGKILLed mid-run and restarted. Every warning and every breach of every case fires exactly
once: none lost to the kill, none doubled by the two replicas."""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncpg
import pytest

from complaints import system
from shared import devinfra
from shared.settings import Settings
from tests.conftest import SECRET, isolated_parts
from tests.support import (
    activate_policy,
    clocks_in_seconds,
    eventually,
    produce_submissions,
    service_process_env,
    submission,
)

CASES = 2000
# per case: two warnings and a breach for each of the acknowledge and resolve clocks
FIRINGS_PER_CASE = 6


async def _resolution(settings: Settings) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "complaints",
        "serve",
        "resolution",
        env=service_process_env(settings, COMPLAINTS_HTTP_PORT=str(devinfra.free_port())),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


@pytest.mark.timeout(420)
async def test_two_replicas_fire_every_warning_and_breach_once_across_a_kill(smtp, tmp_path):
    async with isolated_parts(smtp, services=("intake", "resolution")) as settings:
        await activate_policy(settings, tmp_path, clocks_in_seconds("20s", "30s"))
        intake = system.build_services(settings, ["intake"], secret=SECRET)[0]
        await intake.start()
        replicas = [await _resolution(settings), await _resolution(settings)]
        conn = await asyncpg.connect(settings.require_database_url())
        try:
            await produce_submissions(
                settings.kafka_bootstrap, [submission("phone") for _ in range(CASES)]
            )

            async def half_opened() -> bool:
                opened = await conn.fetchval(
                    "SELECT count(*) FROM resolution.cases WHERE version > 0"
                )
                return bool(opened >= CASES // 2)

            await eventually(half_opened, timeout_s=120, what="half the cases opened")
            replicas[0].send_signal(signal.SIGKILL)  # mid-run: opening cases, firing clocks
            await replicas[0].wait()
            replicas[0] = await _resolution(settings)

            async def all_fired() -> bool:
                fired = await conn.fetchval(
                    "SELECT count(*) FROM resolution.case_events "
                    "WHERE type IN ('complaint.sla_warning', 'complaint.sla_breached')"
                )
                return bool(fired >= CASES * FIRINGS_PER_CASE)

            await eventually(all_fired, timeout_s=300, interval_s=1, what="every clock fired")
            await asyncio.sleep(3)  # room for a duplicate to show
            rows = await conn.fetch(
                """SELECT complaint_id, type, data->>'clock' AS clock, data->>'what' AS what,
                          count(*) AS n
                   FROM resolution.case_events
                   WHERE type IN ('complaint.sla_warning', 'complaint.sla_breached')
                   GROUP BY 1, 2, 3, 4"""
            )
            cases = await conn.fetchval("SELECT count(*) FROM resolution.cases WHERE version > 0")
        finally:
            await conn.close()
            for proc in replicas:
                if proc.returncode is None:
                    proc.terminate()
            await asyncio.gather(*(p.wait() for p in replicas))
            await intake.stop()
    assert cases == CASES
    doubled = [dict(r) for r in rows if r["n"] != 1]
    assert not doubled, doubled[:5]
    per_case: dict[str, int] = {}
    for r in rows:
        per_case[r["complaint_id"]] = per_case.get(r["complaint_id"], 0) + 1
    assert len(per_case) == CASES
    assert set(per_case.values()) == {FIRINGS_PER_CASE}
