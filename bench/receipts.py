"""Receipt latency: web complaints POSTed at a paced rate, timed until the SMTP server accepts
each one's receipt.

Runs `complaints up` in its own process (`--split`: one `complaints serve` per service) against
a broker (embedded tansu unless COMPLAINTS_KAFKA_BOOTSTRAP is set), a fresh database on the
local PostgreSQL and an SMTP sink of the bench's own in a process of its own, which notes when
it accepts each receipt. `--slow-sink-ms` makes every reply of the sink (the 354 to DATA too)
leave that long after the line it answers arrived, like a distant relay: four waits a message
for a client that sends MAIL, RCPT, DATA and the message one after another (the aiosmtpd sink
used before this one delayed three of them, so slow-sink figures from before are not
comparable), one wait for commands a client pipelines.

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
from pathlib import Path
from typing import Any

from bench.common import (
    add_overrides,
    cpu_per_unit,
    cpu_reading,
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


class _Session:
    """One SMTP connection to the sink: enough of RFC 5321 for a mail client (EHLO offering
    PIPELINING, MAIL, RCPT, DATA, RSET, NOOP, QUIT). A reply leaves `delay_s` after the line
    it answers arrived, so commands a client pipelines wait out one delay together, as they
    would for a distant relay; each accepted message's (Message-ID, complaint id, monotonic
    time of its 250) is added to `accepted`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay_s: float,
        accepted: list[tuple[str, str, float]],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._delay = delay_s
        self._accepted = accepted
        self._replies: asyncio.Queue[tuple[float, bytes, tuple[str, str] | None] | None] = (
            asyncio.Queue()
        )

    async def run(self) -> None:
        sender = asyncio.create_task(self._send())
        self._reply(b"220 bench sink ready")
        try:
            while line := await self._reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    self._reply(b"250-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8")
                elif verb == b"DATA":
                    self._reply(b"354 end with <CRLF>.<CRLF>")
                    message = await self._message()
                    if message is None:
                        break  # the client left mid-message: nothing was accepted
                    self._reply(b"250 accepted", message)
                elif verb == b"QUIT":
                    self._reply(b"221 bye")
                    break
                else:  # MAIL, RCPT, RSET, NOOP: every envelope is taken
                    self._reply(b"250 OK")
        finally:
            self._replies.put_nowait(None)
            await sender
            self._writer.close()

    def _reply(self, text: bytes, message: tuple[str, str] | None = None) -> None:
        self._replies.put_nowait((time.monotonic() + self._delay, text + b"\r\n", message))

    async def _message(self) -> tuple[str, str] | None:
        """Read a message up to its lone dot; its Message-ID and X-Complaint-Id (None: the
        connection ended first)."""
        found = {b"message-id": "", b"x-complaint-id": ""}
        in_headers = True
        while (line := await self._reader.readline()) != b".\r\n":
            if not line:
                return None
            if in_headers:
                if line in (b"\r\n", b"\n"):
                    in_headers = False
                    continue
                name, _, value = line.partition(b":")
                if name.lower() in found:
                    found[name.lower()] = value.strip().decode()
        return found[b"message-id"], found[b"x-complaint-id"]

    async def _send(self) -> None:
        while (reply := await self._replies.get()) is not None:
            due, text, message = reply
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            self._writer.write(text)
            if message is not None:
                self._accepted.append((*message, time.monotonic()))
            if self._replies.empty():
                await self._writer.drain()


def _serve_sink(port: int, delay_s: float, out: Any, stop: Any) -> None:
    """The sink's process: its own interpreter, so the load generator never delays it. What
    it accepts goes to `out` in lists, every 20 ms (the times are taken when accepted)."""

    async def serve() -> None:
        accepted: list[tuple[str, str, float]] = []

        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _Session(reader, writer, delay_s, accepted).run()

        server = await asyncio.start_server(session, "127.0.0.1", port)
        while True:
            stopping = stop.is_set()
            if accepted:
                out.put(accepted[:])
                accepted.clear()
            if stopping:
                break
            await asyncio.sleep(0.02)
        server.close()

    asyncio.run(serve())


@dataclass
class TimingSink:
    """An SMTP server in a process of its own that notes when it accepts each complaint's
    receipt (time.monotonic, one clock for every process of the machine). Written for the
    bench to cost little: it shares the machine with the system it measures (aiosmtpd took
    about a millisecond of CPU per message)."""

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
            accepted = queue.get()
            if accepted is None:
                return
            for message_id, complaint, at in accepted:
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
                cpu_before = await cpu_reading(target.dsn)
                started, t0 = await post_paced(target, args.complaints, args.rate, args.concurrency)
                posted = time.monotonic()
                await wait_for_mail(sink, set(started), args.timeout)
                await settled(target.dsn)
                cpu_after = await cpu_reading(target.dsn)
                cpu = cpu_per_unit(cpu_before, cpu_after, args.complaints, "complaint")
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
