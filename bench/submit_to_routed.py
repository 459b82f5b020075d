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
import time
from pathlib import Path

from bench.common import Watcher, percentile, running_system
from bench.httpclient import Connection
from tests.support import submission


async def main(count: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_system(Path(tmp)) as bench:
            watcher = Watcher(bench.settings.kafka_bootstrap or "", "complaint.routed")
            await watcher.start()
            started: dict[str, float] = {}
            docs = [submission("web") for _ in range(count)]
            headers = {"Authorization": f"Bearer {bench.key}"}
            next_index = 0

            async def client() -> None:
                nonlocal next_index
                conn = Connection(bench.base_url)
                try:
                    while next_index < count:
                        n = next_index
                        next_index += 1
                        t0 = time.perf_counter()
                        status, answer = await conn.post_json("/v1/complaints", docs[n], headers)
                        if status != 202:
                            raise RuntimeError(f"POST answered {status}: {answer}")
                        started[answer["complaint_id"]] = t0
                finally:
                    await conn.close()

            t_start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            t_accepted = time.perf_counter()
            await watcher.wait_for(set(started), timeout_s=300)
            t_routed = max(watcher.seen[c] for c in started)
            await watcher.stop()
    latencies = [(watcher.seen[c] - started[c]) * 1000 for c in started]
    print(
        f"`complaints up` (all three services in one process), {count} complaints over HTTP, "
        f"{concurrency} concurrent clients"
    )
    print(f"accepted (202) per second  {count / (t_accepted - t_start):8.1f}")
    print(f"submit → routed per second {count / (t_routed - t_start):8.1f}")
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
