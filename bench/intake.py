"""Intake throughput and latency, over HTTP and over Kafka, for N complaints.

Runs `complaints serve intake` in its own process against a broker (embedded tansu unless
COMPLAINTS_KAFKA_BOOTSTRAP is set) and a fresh database on the local PostgreSQL. Four phases:

  1. Kafka burst: N CloudEvents produced as fast as possible; accepted/s until the last is routed.
  2. HTTP burst: N POSTs from C concurrent clients; accepted (202) per second.
  3. Kafka paced at --kafka-rate: latency produce → complaint.routed (p50, p99).
  4. HTTP paced at --http-rate: latency submit → complaint.routed (p50, p99).

Each paced phase starts after --settle seconds of quiet, so it measures steady state rather
than the draining of the burst before it; every sample of the phase is reported.

    python -m bench.intake --complaints 10000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Bench, Watcher, percentile, post_submissions, running_system
from complaints.samples import submission
from shared import kafka, topics
from shared.events import EventType, new_event


def _report(label: str, latencies_ms: list[float]) -> str:
    return (
        f"{label:<34} p50 {statistics.median(latencies_ms):7.1f} ms   "
        f"p99 {percentile(latencies_ms, 0.99):7.1f} ms   max {max(latencies_ms):7.1f} ms"
    )


async def kafka_phase(
    bench: Bench, count: int, rate: float | None
) -> tuple[float, list[float], dict[str, float]]:
    """Produce `count` submissions (at `rate`/s, or flat out); return (accepted/s, latencies,
    and each complaint's produce time on the wall clock, for `stages`)."""
    watcher = Watcher(bench.settings.kafka_bootstrap or "", "complaint.routed", by="external_id")
    await watcher.start()
    producer = kafka.build_producer(bench.settings, client_id="bench-phone")
    await producer.start()
    docs = [submission("phone") for _ in range(count)]
    payloads = [
        (
            new_event(type=EventType.SUBMITTED, source="bench/ivr", data=d).to_bytes(),
            topics.submission_key("phone", d["external_id"]).encode(),
            d["external_id"],
        )
        for d in docs
    ]
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        futures = []
        for n, (value, key, external_id) in enumerate(payloads):
            if rate:
                delay = t0 + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent[external_id] = time.perf_counter()
            futures.append(await producer.send(topics.SUBMITTED, value, key=key))
        await asyncio.gather(*futures)
        await watcher.wait_for(set(sent), timeout_s=600)
    finally:
        await producer.stop()
        await watcher.stop()
    done = max(watcher.seen[e] for e in sent)
    wall = time.time() - time.perf_counter()
    return (
        count / (done - t0),
        [(watcher.seen[e] - sent[e]) * 1000 for e in sent],
        {e: t + wall for e, t in sent.items()},
    )


async def stages(bench: Bench, produced: dict[str, float]) -> str:
    """Where the Kafka latency went, per complaint: produce → intake's batch transaction began
    (the routed event's outbox `created_at`) → the relay claimed it (`sent_at`, the relay
    transaction's start) → seen on the topic. Wall clocks of one machine."""
    conn = await asyncpg.connect(bench.settings.require_database_url())
    try:
        rows = await conn.fetch(
            "SELECT convert_from(value, 'UTF8')::jsonb #>> '{data,external_id}' AS ext, "
            "extract(epoch FROM created_at)::float8 AS created, "
            "extract(epoch FROM sent_at)::float8 AS sent FROM intake.outbox "
            "WHERE convert_from(value, 'UTF8')::jsonb ->> 'type' = 'complaint.routed' "
            "AND convert_from(value, 'UTF8')::jsonb #>> '{data,external_id}' = ANY($1::text[])",
            list(produced),
        )
    finally:
        await conn.close()
    waits = [(r["created"] - produced[r["ext"]]) * 1000 for r in rows]
    relays = [(r["sent"] - r["created"]) * 1000 for r in rows]
    return (
        f"{'':<34} produce → batch begins p50 {statistics.median(waits):5.1f} / p99 "
        f"{percentile(waits, 0.99):5.1f} ms; batch begins → relay claims p50 "
        f"{statistics.median(relays):5.1f} / p99 {percentile(relays, 0.99):5.1f} ms"
    )


async def http_phase(
    bench: Bench, count: int, concurrency: int, rate: float | None
) -> tuple[float, float, list[float]]:
    """POST `count` submissions (spread over the replicas); return (202/s, routed/s, latencies
    submit → routed)."""
    watcher = Watcher(bench.settings.kafka_bootstrap or "", "complaint.routed")
    await watcher.start()
    docs = [submission("web") for _ in range(count)]
    started, t0 = await post_submissions(
        bench.base_urls, docs, bench.key, concurrency=concurrency, rate=rate
    )
    accepted_at = time.perf_counter()
    try:
        await watcher.wait_for(set(started), timeout_s=600)
    finally:
        await watcher.stop()
    routed_at = max(watcher.seen[c] for c in started)
    latencies = [(watcher.seen[c] - started[c]) * 1000 for c in started]
    return count / (accepted_at - t0), count / (routed_at - t0), latencies


async def main(args: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with running_system(Path(tmp), "serve", "intake", replicas=args.replicas) as bench:
            print(
                f"`complaints serve intake` × {args.replicas}, {args.complaints} complaints per "
                "burst; broker and PostgreSQL on this machine"
            )
            phases = set(args.phases.split(","))
            if "kafka" in phases:
                k_rate, _, _ = await kafka_phase(bench, args.complaints, None)
                print(f"{'Kafka burst: accepted per second':<34} {k_rate:8.1f}   (target ≥ 1500)")
            if "http" in phases:
                h_rate, h_routed, _ = await http_phase(
                    bench, args.complaints, args.concurrency, None
                )
                print(
                    f"{'HTTP burst: 202 per second':<34} {h_rate:8.1f}   (target ≥ 800; "
                    f"{args.concurrency} clients; routed/s {h_routed:.1f})"
                )
            paced = max(args.complaints // 4, 500)
            if "kafka-paced" in phases:
                # the paced phases measure steady state: let the bursts' backlog drain first
                await asyncio.sleep(args.settle)
                _, k_lat, produced = await kafka_phase(bench, paced, args.kafka_rate)
                print(_report(f"Kafka at {args.kafka_rate:.0f}/s", k_lat) + "   (target p99 < 100)")
                print(await stages(bench, produced))
            if "http-paced" in phases:
                await asyncio.sleep(args.settle)
                _, _, h_lat = await http_phase(bench, paced, args.concurrency, args.http_rate)
                print(_report(f"HTTP at {args.http_rate:.0f}/s", h_lat) + "   (target p99 < 100)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--complaints", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kafka-rate", type=float, default=750.0, help="half the Kafka target")
    parser.add_argument("--http-rate", type=float, default=400.0, help="half the HTTP target")
    parser.add_argument("--replicas", type=int, default=1, help="intake processes")
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds of quiet before each paced phase"
    )
    parser.add_argument(
        "--phases",
        default="kafka,http,kafka-paced,http-paced",
        help="which phases to run, comma-separated (default: all four, in this order)",
    )
    try:
        import uvloop

        uvloop.run(main(parser.parse_args()))
    except ImportError:
        asyncio.run(main(parser.parse_args()))
