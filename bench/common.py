"""What the benchmarks share: the real parts, the system in its own process, a topic watcher."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.httpclient import Connection
from complaints import system
from shared import devinfra, kafka, topics
from shared.settings import Settings


@dataclass
class Bench:
    settings: Settings
    base_urls: list[str]
    key: str
    beside_urls: list[str] = field(default_factory=list)  # of the `beside` processes, in order

    @property
    def base_url(self) -> str:
        return self.base_urls[0]


async def prepare(settings: Settings) -> str:
    """Migrate the database `settings` names, create the topics, add a team with room for
    every complaint, and return a web key with a limit no benchmark reaches."""
    from services.intake import admin

    await system.migrate_all(settings)
    await kafka.ensure_topics(settings)
    # the benchmarks measure throughput, not the quota
    key = await admin.create_key(settings, "web", rate_per_s=1e6, burst=10**6)
    # a team big enough that every complaint is assigned (the queue path emits one event more)
    for n in range(5):
        await admin.add_staff(
            settings,
            staff_id=f"bench-{n}",
            name=f"Bench {n}",
            team="customer-care",
            role="agent",
            languages=["en", "nl", "tr"],
            capacity=10**9,
        )
    return key


@asynccontextmanager
async def running_system(
    tmp: Path,
    *command: str,
    replicas: int = 1,
    beside: Sequence[Sequence[str]] = (),
    overrides: Mapping[str, str] | None = None,
) -> AsyncIterator[Bench]:
    """A broker (configured or embedded), a fresh database with the demo staff, and `replicas`
    copies of `complaints <command>` (default `up`) in subprocesses, ready to take traffic;
    then one process of each command in `beside` (e.g. `("serve", "notify")`), each on a port
    of its own; `overrides`: settings for every process (`{"kafka_fetch_max_wait_ms": "25"}`)."""
    command = command or ("up",)
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
    key = await prepare(settings)
    procs: list[asyncio.subprocess.Process] = []
    urls: list[str] = []
    drains: list[asyncio.Task[None]] = []
    argvs = [command] * replicas + [tuple(b) for b in beside]
    # `up` brings its own SMTP sink; a notify serving alone is given one here
    sink = devinfra.SmtpSinkProcess(tmp / "mail").start() if ("serve", "notify") in argvs else None
    try:
        beside_urls: list[str] = []
        for n, argv in enumerate(argvs):
            port = settings.http_port if n == 0 else devinfra.free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("COMPLAINTS_")}
            env.update(
                COMPLAINTS_KAFKA_BOOTSTRAP=bootstrap,
                COMPLAINTS_DATABASE_URL=url,
                COMPLAINTS_HTTP_PORT=str(port),
                COMPLAINTS_STATE_DIR=str(tmp),
                # the benchmarks drive hundreds of actions a second through a few members
                COMPLAINTS_STAFF_ACTION_RATE="1000000",
                COMPLAINTS_STAFF_ACTION_BURST="1000000",
            )
            env.update({f"COMPLAINTS_{k.upper()}": v for k, v in (overrides or {}).items()})
            if sink is not None:
                env.update(COMPLAINTS_SMTP_HOST=sink.host, COMPLAINTS_SMTP_PORT=str(sink.port))
            drains.append(await spawn(argv, env, procs))
            (urls if n < replicas else beside_urls).append(f"http://127.0.0.1:{port}")
        await _wait_consuming(settings)
        # the measuring process must not pause either: its full GC passes (about 30 ms each,
        # measured) would be counted as the system's latency
        system.settle_heap()
        yield Bench(settings=settings, base_urls=urls, key=key, beside_urls=beside_urls)
    finally:
        await stop_processes(procs, drains)
        await devinfra.drop_database(admin_url, name)
        if sink is not None:
            sink.stop()
        if broker is not None:
            broker.stop()


async def spawn(
    command: Sequence[str], env: dict[str, str], procs: list[asyncio.subprocess.Process]
) -> asyncio.Task[None]:
    """Start `complaints COMMAND` in a subprocess (added to `procs` at once, so it is stopped
    even if it never gets ready) and wait until it serves; the task that reads its output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "complaints",
        *command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    procs.append(proc)
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError(f"complaints {' '.join(command)} ended before it was ready")
        if b"complaints is up" in line or b"serving on" in line:
            return asyncio.create_task(_drain(proc.stdout))


async def post_submissions(
    base_urls: Sequence[str],
    docs: Sequence[dict[str, Any]],
    key: str,
    *,
    concurrency: int,
    rate: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, float], float]:
    """POST `docs` with `concurrency` keep-alive clients (spread over `base_urls`), at `rate`
    a second or flat out; when each began by complaint id, and when the first could (`clock`
    times both)."""
    started: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {key}"}
    t0 = clock()
    next_index = 0

    async def client(n_client: int) -> None:
        nonlocal next_index
        conn = Connection(base_urls[n_client % len(base_urls)])
        try:
            while next_index < len(docs):
                n = next_index
                next_index += 1
                if rate:
                    delay = t0 + n / rate - clock()
                    if delay > 0:
                        await asyncio.sleep(delay)
                began = clock()
                status, answer = await conn.post_json("/v1/complaints", docs[n], headers)
                if status != 202:
                    raise RuntimeError(f"POST answered {status}: {answer}")
                started[answer["complaint_id"]] = began
        finally:
            await conn.close()

    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return started, t0


async def stop_processes(
    procs: list[asyncio.subprocess.Process], drains: list[asyncio.Task[None]]
) -> None:
    """Ctrl-C to each process (as a person would), a kill for any still there after 30 s."""
    for task in drains:
        task.cancel()
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(2)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()


async def _wait_consuming(settings: Settings, timeout_s: float = 60) -> None:
    """Wait until intake consumes: one probe submission over Kafka, routed."""
    from complaints.samples import submission
    from shared.events import EventType, new_event

    watcher = Watcher(settings.kafka_bootstrap or "", "complaint.routed", by="external_id")
    await watcher.start()
    probe = submission("phone", external_id=f"probe-{uuid.uuid4().hex[:8]}")
    producer = kafka.build_producer(settings, client_id="bench-probe")
    await producer.start()
    try:
        event = new_event(type=EventType.SUBMITTED, source="bench/probe", data=probe)
        await producer.send_and_wait(topics.SUBMITTED, event.to_bytes(), key=b"probe")
        await watcher.wait_for({probe["external_id"]}, timeout_s)
    finally:
        await producer.stop()
        await watcher.stop()


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


@dataclass
class Watcher:
    """Records when each complaint's event of `type_` is first seen on the events topic."""

    bootstrap: str
    type_: str
    by: str = "subject"  # or a field of the event's data, e.g. "external_id"
    seen: dict[str, float] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _caught_up: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            request_timeout_ms=30_000,
        )
        await consumer.start()
        partitions = [
            TopicPartition(topics.EVENTS, p)
            for p in sorted(consumer.partitions_for_topic(topics.EVENTS) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._run(consumer))
        await self.caught_up()

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        marker = f'"type":"{self.type_}"'.encode()
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                now = time.perf_counter()
                if not batches:
                    self._caught_up.set()
                for records in batches.values():
                    for record in records:
                        if marker not in record.value:
                            continue  # decoding every other event would slow the clock down
                        event: dict[str, Any] = json.loads(record.value)
                        data = event["data"]
                        ident = event["subject"] if self.by == "subject" else data[self.by]
                        self.seen.setdefault(ident, now)
        finally:
            await consumer.stop()

    async def caught_up(self, timeout_s: float = 120) -> None:
        """Wait until the watcher has read what the topic held when it started, so the times
        it records are arrival times, not its own backlog."""
        await asyncio.wait_for(self._caught_up.wait(), timeout_s)

    async def wait_for(self, ids: set[str], timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while not ids <= self.seen.keys():
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"{len(ids - self.seen.keys())} complaints never reached {self.type_}"
                )
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0–1) of `values`, inclusive method."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) so far of each process this benchmark started, by what it runs
    (`serve resolution`, `up`, the broker), summed over replicas."""
    totals: dict[str, float] = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            argv = proc.cmdline()
            times = proc.cpu_times()
        except psutil.Error:
            continue  # gone meanwhile
        if "complaints" in argv:
            what = " ".join(argv[argv.index("complaints") + 1 :][:2])
        elif any("tansu" in a for a in argv[:1]):
            what = "broker"
        else:
            continue
        totals[what] = totals.get(what, 0.0) + times.user + times.system
    return totals


BACKEND = "postgres "  # `cpu_reading`'s keys for backends: `postgres <pid> <backend start>`


async def cpu_reading(dsn: str, *, exclude: Collection[int] = ()) -> dict[str, float]:
    """`cpu_seconds`, and the CPU time so far of each PostgreSQL backend serving the database
    of `dsn` (client backends and parallel workers, as `pg_stat_activity` lists them; not
    those in `exclude`, the benchmark's own). A backend counts only when a local process of
    PostgreSQL's with its pid began when the server says it did: one on another host or in a
    container (pids of its own) is not counted, nor are the server's shared processes (WAL
    writer, checkpointer, autovacuum), nor a backend that began and ended between readings."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid, backend_start FROM pg_stat_activity"
            " WHERE datname = current_database()"
            " AND backend_type IN ('client backend', 'parallel worker')"
            " AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    reading = cpu_seconds()
    for row in rows:
        if row["pid"] in exclude:
            continue
        started = row["backend_start"].timestamp()
        try:
            proc = psutil.Process(row["pid"])
            if not proc.name().startswith("postgres") or abs(proc.create_time() - started) > 2:
                continue  # not that backend: another machine's, or a container's
            times = proc.cpu_times()
        except psutil.Error:
            continue  # gone meanwhile, or not on this machine
        reading[f"{BACKEND}{row['pid']} {started}"] = times.user + times.system
    return reading


async def settled(dsn: str, timeout_s: float = 120) -> None:
    """Once every service's outbox is sent, and a second more for what its events cause (a
    CPU reading taken then counts the work before it, not the tail of earlier work)."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        unsent = "SELECT " + " + ".join(
            f"(SELECT count(*) FROM {name}.outbox WHERE sent_at IS NULL AND parked_at IS NULL)"
            for name in system.NAMES
        )
        while await conn.fetchval(unsent):
            if time.monotonic() > deadline:
                raise TimeoutError("the outboxes never emptied")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    await asyncio.sleep(1.0)


def cpu_per_unit(
    before: dict[str, float], after: dict[str, float], units: int, unit: str = "action"
) -> str:
    """µs of CPU per `unit` of work for each process between two readings (`cpu_seconds` or
    `cpu_reading`). A PostgreSQL backend that began meanwhile counts whole; one that ended
    meanwhile cannot be read, and is left out (the line says how many); one that began and
    ended between them is never seen."""
    spent: dict[str, float] = {}
    for key, seconds in after.items():
        what = "postgres" if key.startswith(BACKEND) else key
        spent[what] = spent.get(what, 0.0) + seconds - before.get(key, 0.0)
    parts = [f"{k} {1e6 * v / max(units, 1):,.0f}" for k, v in sorted(spent.items())]
    total = 1e6 * sum(spent.values()) / max(units, 1)
    gone = sum(1 for key in before if key.startswith(BACKEND) and key not in after)
    ended = f"; {gone} that ended meanwhile not counted" if gone else ""
    if "postgres" in spent:
        counted = "PostgreSQL: the backends serving this database" + ended
    else:
        counted = "PostgreSQL not counted" + ended
    return f"CPU µs per {unit}: " + ", ".join(parts) + f"; total {total:,.0f} ({counted})"


def setting_override(text: str) -> tuple[str, str]:
    """`--set NAME=VALUE` (a setting's name as in `Settings`, e.g. kafka_fetch_max_wait_ms)."""
    name, sep, value = text.partition("=")
    if not sep or not name or name.lower() not in Settings.model_fields:
        raise argparse.ArgumentTypeError(f"not NAME=VALUE with a setting's name: {text!r}")
    return name.lower(), value


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The `--set` option of a benchmark that runs the system (`running_system`)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        type=setting_override,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for every process of the system (repeatable)",
    )
