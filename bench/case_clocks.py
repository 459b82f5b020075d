"""Case clocks through resolution: lateness, duplicates and misses of every warning and breach.

Runs intake and `--replicas` resolution processes (`complaints serve …`, as deployed) against a
broker (embedded unless COMPLAINTS_KAFKA_BOOTSTRAP is set) and a fresh database on the local
PostgreSQL, loads a policy whose acknowledge and resolve clocks run for the seconds given (warnings
at 50 % and 75 %), and sends --cases phone complaints over Kafka. Each opened case arms six
timers (two warnings and a breach per clock); nobody acts, so all of them fire, each as a
decision of the case (`complaint.sla_warning`, `complaint.sla_breached` and its escalation).
When all have fired (or the deadline passes) it prints the lateness of each firing (fired_at −
due_at of its timer, both on the database's clock) p50/p99/max, how many were decided twice
(decision-log entries per case, clock and warning) and how many never were.

    python -m bench.case_clocks --cases 4000 --acknowledge 60s --resolve 90s --replicas 2

Compare `python -m bench.clocks`: the same timers with a handler that only writes a row.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.common import cpu_per_unit, cpu_reading, percentile, running_system
from complaints.samples import activate_policy, clocks_in_seconds, produce_submissions, submission

FIRINGS_PER_CASE = 6  # two warnings and a breach, for each of the acknowledge and resolve clocks


async def main(cases: int, acknowledge: str, resolve: str, replicas: int, timeout_s: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        beside = [("serve", "resolution")] * replicas
        async with running_system(Path(tmp), "serve", "intake", beside=beside) as bench:
            settings = bench.settings
            await activate_policy(settings, Path(tmp), clocks_in_seconds(acknowledge, resolve))
            await asyncio.sleep(2.5)  # replicas re-read the active policy at most every 2 s
            dsn = settings.require_database_url()
            conn = await asyncpg.connect(dsn)
            own = {conn.get_server_pid()}  # its polling is not the system's work
            try:
                began = time.monotonic()
                await produce_submissions(
                    settings.kafka_bootstrap or "", [submission("phone") for _ in range(cases)]
                )
                await _until(
                    conn,
                    "SELECT count(*) FROM resolution.cases WHERE version > 0",
                    cases,
                    timeout_s,
                    "every case opened",
                )
                opened_s = time.monotonic() - began
                before = await cpu_reading(dsn, exclude=own)
                print(
                    f"{cases} cases opened in {opened_s:.1f} s ({cases / opened_s:,.0f}/s) by "
                    f"{replicas} resolution processes; clocks {acknowledge} and {resolve}",
                    flush=True,
                )
                expected = cases * FIRINGS_PER_CASE
                fired = await _until(
                    conn,
                    "SELECT count(*) FROM resolution.case_events"
                    " WHERE type IN ('complaint.sla_warning', 'complaint.sla_breached')",
                    expected,
                    timeout_s,
                    "every clock fired",
                    required=False,
                )
                await asyncio.sleep(3)  # room for a duplicate to show
                spent = cpu_per_unit(before, await cpu_reading(dsn, exclude=own), fired, "firing")
                code = await _report(conn, cases, expected, fired)
                print(spent)
                return code
            finally:
                await conn.close()


async def _until(
    conn: asyncpg.Connection,
    query: str,
    target: int,
    timeout_s: float,
    what: str,
    *,
    required: bool = True,
) -> int:
    deadline = time.monotonic() + timeout_s
    while (count := int(await conn.fetchval(query))) < target:
        if time.monotonic() > deadline:
            if required:
                raise TimeoutError(f"{what}: {count} of {target} after {timeout_s:.0f} s")
            return count
        await asyncio.sleep(0.5)
    return count


async def _report(conn: asyncpg.Connection, cases: int, expected: int, fired: int) -> int:
    lateness = [
        float(r["late"]) * 1000
        for r in await conn.fetch(
            "SELECT extract(epoch FROM fired_at - due_at) AS late FROM resolution.timers"
            " WHERE kind = 'case_clock' AND fired_at IS NOT NULL"
        )
    ]
    span = await conn.fetchval(
        "SELECT extract(epoch FROM max(due_at) - min(due_at)) FROM resolution.timers"
        " WHERE kind = 'case_clock' AND fired_at IS NOT NULL"
    )
    rows = await conn.fetch(
        """SELECT count(*) AS n FROM resolution.case_events
           WHERE type IN ('complaint.sla_warning', 'complaint.sla_breached')
           GROUP BY complaint_id, type, data->>'clock', data->>'what'"""
    )
    doubled = sum(1 for r in rows if r["n"] > 1)
    missed = expected - len(rows)
    print(
        f"{len(lateness):,} timers fired, due over {float(span or 0):.0f} s; "
        f"{fired:,} of {expected:,} warnings and breaches decided"
    )
    if lateness:
        print(
            f"lateness   p50 {statistics.median(lateness):8.1f} ms   "
            f"p99 {percentile(lateness, 0.99):8.1f} ms   max {max(lateness):8.1f} ms"
        )
    print(f"decided twice {doubled}   never decided {missed}")
    print("targets (issue 9): p99 < 1 s, 0 decided twice, 0 missed")
    return 0 if doubled == 0 and missed == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cases", type=int, default=4000)
    parser.add_argument("--acknowledge", default="60s", help="the acknowledge clock")
    parser.add_argument("--resolve", default="90s", help="the resolve clock")
    parser.add_argument("--replicas", type=int, default=2, help="resolution processes")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait, at most")
    args = parser.parse_args()
    raise SystemExit(
        asyncio.run(main(args.cases, args.acknowledge, args.resolve, args.replicas, args.timeout))
    )
