"""Timer lateness: N durable timers due within a window, fired by worker processes.

Makes a fresh database on the local PostgreSQL with the shared migrations in one schema, starts
--workers processes each running a `TimerWorker` (bench/timer_worker.py: its handler
writes one row per firing in the firing transaction), then schedules --timers timers due evenly
over --within seconds, starting --lead seconds later. When all have fired (or the deadline
passes) it prints lateness (fired_at − due_at, both on the database's clock) p50/p99/max, how
many fired more than once (handler rows per key) and how many never fired.

    python -m bench.clocks --timers 100000 --within 60 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from bench.timer_worker import EFFECTS_DDL
from shared import db, devinfra, migrate
from shared.timers import SCHEDULE_SQL

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "clocks"


def quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


async def _worker(dsn: str, batch: int, lanes: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.timer_worker",
        dsn,
        SCHEMA,
        "--batch",
        str(batch),
        "--lanes",
        str(lanes),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    if line != b"ready\n":
        raise RuntimeError(f"a worker did not start: {line!r}")
    return proc


async def run(args: argparse.Namespace) -> int:
    admin, _server = await devinfra.admin_dsn()
    name = f"complaints_clocks_{uuid.uuid4().hex[:8]}"
    dsn = await devinfra.ensure_database(admin, name)
    procs: list[asyncio.subprocess.Process] = []
    try:
        await migrate.apply(dsn, SCHEMA, migrate.load("shared.migrations", prefix="shared/"))
        pool = await db.create_pool(dsn, schema=SCHEMA, application="bench-clocks", max_size=2)
        async with pool.acquire() as conn:
            await conn.execute(EFFECTS_DDL)
        procs = [await _worker(dsn, args.batch, args.lanes) for _ in range(args.workers)]

        async with pool.acquire() as conn:
            start = await conn.fetchval("SELECT clock_timestamp()") + timedelta(seconds=args.lead)
        began = time.monotonic()
        step = args.within / args.timers
        chunk = 5000
        for first in range(0, args.timers, chunk):
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    SCHEDULE_SQL,
                    [
                        (f"t:{n}", "tick", {"n": n}, start + timedelta(seconds=n * step), False)
                        for n in range(first, min(args.timers, first + chunk))
                    ],
                )
        scheduled_s = time.monotonic() - began
        print(f"scheduled {args.timers} timers in {scheduled_s:.1f}s (lead {args.lead}s)")
        if scheduled_s > args.lead:
            print("warning: scheduling outlasted the lead; the first timers start late")

        deadline = time.monotonic() + args.lead + args.within + args.grace
        fired = 0
        while time.monotonic() < deadline:
            async with pool.acquire() as conn:
                fired = await conn.fetchval(
                    "SELECT count(*) FROM timers WHERE fired_at IS NOT NULL"
                )
            if fired >= args.timers:
                break
            await asyncio.sleep(1.0)

        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(proc.wait() for proc in procs))
        procs = []

        async with pool.acquire() as conn:
            late = [
                float(r[0])
                for r in await conn.fetch(
                    "SELECT extract(epoch FROM fired_at - due_at) FROM timers "
                    "WHERE fired_at IS NOT NULL"
                )
            ]
            effects = await conn.fetchrow(
                "SELECT count(*) AS rows, count(DISTINCT key) AS keys FROM timer_effects"
            )
            per_worker = await conn.fetch(
                "SELECT worker, count(*) AS n FROM timer_effects GROUP BY worker ORDER BY worker"
            )
            unfired = await conn.fetchval("SELECT count(*) FROM timers WHERE fired_at IS NULL")
        await pool.close()
        assert effects is not None
        duplicates = effects["rows"] - effects["keys"]
        missed = args.timers - effects["keys"]
        print(
            f"timers {args.timers} within {args.within}s, {args.workers} worker processes "
            f"x {args.lanes} lanes, batch {args.batch}"
        )
        if late:
            print(
                f"lateness p50 {quantile(late, 0.5) * 1000:.1f} ms, "
                f"p99 {quantile(late, 0.99) * 1000:.1f} ms, max {max(late) * 1000:.1f} ms"
            )
        print(f"fired {len(late)}, unfired {unfired}, duplicates {duplicates}, missed {missed}")
        print("per worker: " + ", ".join(str(r["n"]) for r in per_worker))
        return 0 if duplicates == 0 and missed == 0 else 1
    finally:
        for proc in procs:
            proc.kill()
            await proc.wait()
        await devinfra.drop_database(admin, name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--within", type=float, default=60.0, help="seconds the due times span")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--lanes", type=int, default=2, help="claiming loops per process")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--lead", type=float, default=10.0, help="seconds before the first is due")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to wait after the last")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
