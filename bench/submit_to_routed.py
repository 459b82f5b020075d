"""HTTP submit → `complaint.routed`: complaints/s and latency for N complaints.

Runs `complaints up` in its own process against a broker (embedded tansu unless
COMPLAINTS_KAFKA_BOOTSTRAP is set) and a fresh database on the local PostgreSQL, posts N
complaints over HTTP with C concurrent clients, and watches the events topic.

    python bench/submit_to_routed.py --complaints 1000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from bench.common import percentile, running_system
from bench.intake import http_phase


async def main(count: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_system(Path(tmp)) as bench:
            accepted, routed, latencies = await http_phase(bench, count, concurrency, None)
    print(
        f"`complaints up` (all three services in one process), {count} complaints over HTTP, "
        f"{concurrency} concurrent clients"
    )
    print(f"accepted (202) per second  {accepted:8.1f}")
    print(f"submit → routed per second {routed:8.1f}")
    print(
        f"latency submit → routed    p50 {statistics.median(latencies):7.1f} ms   "
        f"p95 {percentile(latencies, 0.95):7.1f} ms   p99 {percentile(latencies, 0.99):7.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--complaints", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.complaints, args.concurrency))
