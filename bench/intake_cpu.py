"""Intake's CPU per complaint during a Kafka burst: the cost of the consumer path, in µs.

Runs `complaints serve intake` in its own process (as `bench.intake` does), warms it up, then
produces N submissions flat out, --runs times, and reads the intake process's CPU time (user +
system, from the OS) before and after each burst. Every burst is timed from the first produce
to the last `complaint.routed`, so the figure covers accepting, routing, the outbox relay and
the follower consumer: all intake does per complaint.

    python -m bench.intake_cpu --complaints 10000 --runs 3

`--upgrading` measures an intake that also reads `complaints.events.v1`, as during a rolling
upgrade from a version before the internal cases feed (`COMPLAINTS_INTAKE_FOLLOW_EVENTS_TOPIC`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench.common import cpu_seconds, running_system
from bench.intake import kafka_phase


async def main(count: int, runs: int, warmup: int, upgrading: bool) -> None:
    overrides = {"intake_follow_events_topic": "true"} if upgrading else None
    print("intake reads the cases feed" + (" and complaints.events.v1" if upgrading else ""))
    with tempfile.TemporaryDirectory() as tmp:
        async with running_system(Path(tmp), "serve", "intake", overrides=overrides) as bench:
            await kafka_phase(bench, warmup, None)
            per_complaint: list[float] = []
            rates: list[float] = []
            for n in range(runs):
                before = cpu_seconds()["serve intake"]
                rate, _, _ = await kafka_phase(bench, count, None)
                cpu_s = cpu_seconds()["serve intake"] - before
                per_complaint.append(cpu_s / count * 1e6)
                rates.append(rate)
                print(
                    f"run {n + 1}: {count} complaints, {rate:,.0f} accepted/s, "
                    f"intake CPU {cpu_s:.2f} s = {per_complaint[-1]:.0f} µs per complaint",
                    flush=True,
                )
            print(
                f"median of {runs}: {statistics.median(rates):,.0f} accepted/s, "
                f"{statistics.median(per_complaint):.0f} µs of intake CPU per complaint "
                f"(target < 150 µs)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--complaints", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--upgrading", action="store_true", help="follow the events topic too")
    args = parser.parse_args()
    asyncio.run(main(args.complaints, args.runs, args.warmup, args.upgrading))
