"""Receipt latency: web complaints POSTed at a paced rate, timed until the SMTP server accepts
each one's receipt.

Runs `complaints up` in its own process against a broker (embedded tansu unless
COMPLAINTS_KAFKA_BOOTSTRAP is set), a fresh database on the local PostgreSQL and an SMTP sink
in this process, which notes when it accepts each receipt. `--slow-sink-ms` makes the sink
answer every SMTP exchange (MAIL, RCPT, DATA) that much later, like a distant relay.

    python -m bench.receipts --rate 100 --complaints 500
    python -m bench.receipts --rate 500 --complaints 2000 [--slow-sink-ms 50] [--split]
        [--set NAME=VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from bench.common import (
    add_overrides,
    cpu_per_unit,
    cpu_seconds,
    percentile,
    post_submissions,
    prepare,
    settled,
    spawn,
    stop_processes,
)
from complaints import system
from shared import devinfra
from shared.settings import Settings


class _TimingHandler:
    """aiosmtpd handler: answers each exchange `delay_s` late and reports each accepted
    message's (Message-ID, complaint id, monotonic time) to `out`."""

    def __init__(self, delay_s: float, out: Any) -> None:
        self._delay = delay_s
        self._out = out

    async def _late(self) -> None:
        if self._delay:
            await asyncio.sleep(self._delay)

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, _o: Any
    ) -> str:
        await self._late()
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, _o: Any
    ) -> str:
        await self._late()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await self._late()
        headers = BytesHeaderParser().parsebytes(envelope.content)
        self._out.put((headers["Message-ID"], headers["X-Complaint-Id"], time.monotonic()))
        return "250 Message accepted for delivery"


def _serve_sink(port: int, delay_s: float, out: Any, stop: Any) -> None:
    """The sink's process: its own interpreter, so the load generator never delays it."""
    controller = Controller(_TimingHandler(delay_s, out), hostname="127.0.0.1", port=port)
    controller.start()
    stop.wait()
    controller.stop()


@dataclass
class TimingSink:
    """An SMTP server in a process of its own that notes when it accepts each complaint's
    receipt (time.monotonic, one clock for every process of the machine)."""

    delay_s: float = 0.0
    accepted: dict[str, float] = field(default_factory=dict)
    message_ids: Counter[str] = field(default_factory=Counter)
    port: int = field(default_factory=devinfra.free_port)
    _proc: Any = None
    _stop: Any = None
    _reader: threading.Thread | None = None

    def start(self) -> TimingSink:
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        self._stop = context.Event()
        self._proc = context.Process(
            target=_serve_sink, args=(self.port, self.delay_s, queue, self._stop), daemon=True
        )
        self._proc.start()
        self._reader = threading.Thread(target=self._read, args=(queue,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 30
        while not _port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("the SMTP sink did not start")
            time.sleep(0.05)
        return self

    def _read(self, queue: Any) -> None:
        while True:
            item = queue.get()
            if item is None:
                return
            message_id, complaint, at = item
            self.message_ids[message_id] += 1
            if complaint:
                self.accepted.setdefault(complaint, at)

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(10)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _complaint() -> dict[str, Any]:
    token = uuid.uuid4().hex[:12]
    return {
        "external_id": f"bench-{token}",
        "channel": "web",
        "customer": {
            "id": f"cust-{token}",
            "name": "Bench Customer",
            "email": f"bench.{token}@example.com",  # one address each: no flood control
            "locale": "en",
        },
        "description": "The parcel arrived damaged and nobody answers the phone.",
        "category": "service",
    }


@dataclass
class System:
    base_url: str
    key: str
    dsn: str


@asynccontextmanager
async def running_up(
    tmp: Path, sink: TimingSink, *, split: bool, overrides: Sequence[tuple[str, str]] = ()
) -> AsyncIterator[System]:
    """`complaints up` in a subprocess (or, `split`, each service in its own), mailing to
    `sink`, with a web key of (practically) unlimited rate."""
    broker = None
    bootstrap = os.environ.get("COMPLAINTS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = devinfra.EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    admin_url, _server = await devinfra.admin_dsn()
    name = f"complaints_bench_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(admin_url, name)
    port = devinfra.free_port()
    settings = Settings(_env_file=None, kafka_bootstrap=bootstrap, database_url=url, http_port=port)
    procs: list[asyncio.subprocess.Process] = []
    drains: list[asyncio.Task[None]] = []
    try:
        key = await prepare(settings)
        # tuning knobs set for this run pass through (COMPLAINTS_SMTP_CONNECTIONS, say); the
        # parts the bench starts itself are its own
        env = dict(os.environ)
        env.update(
            COMPLAINTS_KAFKA_BOOTSTRAP=bootstrap,
            COMPLAINTS_DATABASE_URL=url,
            COMPLAINTS_HTTP_PORT=str(port),
            COMPLAINTS_STATE_DIR=str(tmp),
            COMPLAINTS_SMTP_HOST="127.0.0.1",
            COMPLAINTS_SMTP_PORT=str(sink.port),
            # keys get a rate limit (where it exists): this load must not meet it
            COMPLAINTS_KEY_RATE_PER_S="100000",
            COMPLAINTS_KEY_BURST="100000",
        )
        env.update({f"COMPLAINTS_{name.upper()}": value for name, value in overrides})
        # one `complaints up`, or (split) one `complaints serve` per service, so the services
        # have both cores between them as in a deployment; intake's port takes the POSTs
        commands = [["serve", name] for name in system.NAMES] if split else [["up"]]
        for n, command in enumerate(commands):
            own_port = port if n == 0 else devinfra.free_port()
            env_n = {**env, "COMPLAINTS_HTTP_PORT": str(own_port)}
            drains.append(await spawn(command, env_n, procs))
        yield System(base_url=f"http://127.0.0.1:{port}", key=key, dsn=url)
    finally:
        await stop_processes(procs, drains)
        await devinfra.drop_database(admin_url, name)
        if broker is not None:
            broker.stop()


async def post_paced(
    target: System, count: int, rate: float, concurrency: int
) -> tuple[dict[str, float], float]:
    """POST `count` complaints at `rate`/s; when each began (by complaint id), and t0, by the
    monotonic clock the SMTP sink's process times acceptance with."""
    docs = [_complaint() for _ in range(count)]
    return await post_submissions(
        [target.base_url],
        docs,
        target.key,
        concurrency=concurrency,
        rate=rate,
        clock=time.monotonic,
    )


async def wait_for_mail(sink: TimingSink, ids: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not ids <= sink.accepted.keys():
        if time.monotonic() > deadline:
            missing = len(ids - sink.accepted.keys())
            raise TimeoutError(f"{missing} receipts never reached the sink")
        await asyncio.sleep(0.05)


async def main(args: Any) -> None:
    sink = TimingSink(delay_s=args.slow_sink_ms / 1000).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            async with running_up(
                Path(tmp), sink, split=args.split, overrides=args.overrides
            ) as target:
                warm, _ = await post_paced(target, 20, 50, 4)  # consumers joined, pools open
                await wait_for_mail(sink, set(warm), 120)
                await asyncio.sleep(args.settle)
                system.settle_heap()
                cpu_before = cpu_seconds()
                started, t0 = await post_paced(target, args.complaints, args.rate, args.concurrency)
                posted = time.monotonic()
                await wait_for_mail(sink, set(started), args.timeout)
                await settled(target.dsn)
                cpu = cpu_per_unit(cpu_before, cpu_seconds(), args.complaints, "complaint")
    finally:
        sink.stop()
    latencies = [(sink.accepted[c] - started[c]) * 1000 for c in started]
    last = max(sink.accepted[c] for c in started)
    within = sum(1 for v in latencies if v <= 1000) / len(latencies) * 100
    resent = sum(n - 1 for n in sink.message_ids.values() if n > 1)
    print(
        ("3 × `complaints serve`" if args.split else "`complaints up`")
        + f", {args.complaints} web complaints at {args.rate:.0f}/s "
        f"(posted at {args.complaints / (posted - t0):.0f}/s), sink "
        + (f"{args.slow_sink_ms:.0f} ms late per SMTP exchange" if args.slow_sink_ms else "prompt")
    )
    print(
        f"POST → SMTP accepted   p50 {statistics.median(latencies):7.1f} ms   "
        f"p99 {percentile(latencies, 0.99):7.1f} ms   max {max(latencies):7.1f} ms   "
        f"within 1 s {within:5.1f} %"
    )
    print(
        f"receipts per second    {args.complaints / (last - t0):7.1f}   "
        f"(all {len(started)} delivered; messages sent twice: {resent})"
    )
    print(cpu)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--complaints", type=int, default=500)
    parser.add_argument("--rate", type=float, default=100.0, help="POSTs per second")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP clients")
    parser.add_argument("--slow-sink-ms", type=float, default=0.0, help="delay per SMTP exchange")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of quiet first")
    parser.add_argument("--timeout", type=float, default=600.0, help="for the last receipt")
    parser.add_argument(
        "--split", action="store_true", help="each service in its own process (`serve`)"
    )
    add_overrides(parser)
    asyncio.run(main(parser.parse_args()))
