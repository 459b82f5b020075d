"""A timer worker in a process of its own, for the crash test and `bench.clocks`.

    python -m bench.timer_worker DSN SCHEMA [--delay-ms N] [--batch N] [--lanes N]

Fires timers of kind `tick`: each firing inserts (key, this process's id) into the schema's
`timer_effects` table in the firing transaction. Prints `ready` once started; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from datetime import datetime

from shared import db
from shared.timers import Timer, TimerWorker

EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS timer_effects (key text NOT NULL, worker integer NOT NULL, "
    "at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dsn")
    parser.add_argument("schema")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--lanes", type=int, default=2)
    args = parser.parse_args(argv)
    pool = await db.create_pool(
        args.dsn, schema=args.schema, application="timer-worker", max_size=args.lanes + 1
    )
    me = os.getpid()

    async def tick(conn: db.Conn, timer: Timer, now: datetime) -> None:
        await conn.execute("INSERT INTO timer_effects (key, worker) VALUES ($1, $2)", timer.key, me)
        if args.delay_ms:
            await asyncio.sleep(args.delay_ms / 1000)

    worker = TimerWorker(pool, {"tick": tick}, batch_size=args.batch, lanes=args.lanes)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    print("ready", flush=True)
    try:
        await worker.run()
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
