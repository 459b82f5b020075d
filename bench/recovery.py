"""Recovery after a crash: each service SIGKILLed and restarted at once, under steady load.

Runs `complaints serve intake`, `complaints serve resolution` and `complaints serve notify` as
three processes against one broker (embedded tansu unless COMPLAINTS_KAFKA_BOOTSTRAP is set),
one fresh database on the local PostgreSQL and an SMTP sink in this process. A steady load
(--rate complaints/s, half `POST /v1/complaints`, half CloudEvents produced to
`complaints.submitted.v1`) runs throughout; each service in turn is killed with SIGKILL and
started again at once, --kills times, with --steady seconds of normal running before each kill.

Everything is observed from outside the processes (their tables, the broker, the sink):

  restart → first work   process spawn → the first unit of work the new process did:
                         intake: the first complaint accepted from Kafka (`received_at`);
                         resolution: the first case row written (`updated_at`);
                         notify: the first event consumed (its inbox row) or mail delivered,
                         whichever came first. Each kind of work is also shown on its own,
                         with when the HTTP port took connections again.
  killed mailer's mail   receipts leased by notify when it was killed: kill → the sink got them.
  exactly once           every submission accepted once, every case opened, every receipt
                         delivered; duplicates counted (topic, sink by Message-ID).

Exits non-zero when a submission was never accepted, a receipt never delivered, or an HTTP
retry was answered with another complaint id.

    python -m bench.recovery --kills 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import percentile, prepare
from bench.httpclient import Connection
from complaints.samples import submission
from shared import devinfra, kafka, topics
from shared.events import EventType, new_event
from shared.settings import Settings

SERVICES = ("intake", "resolution", "notify")
FIRST_WORK_TARGET_S = 8.0
MAILER_TARGET_S = 15.0
SECRET = "bench-recovery-secret-not-for-production"


@dataclass
class TimedSink(devinfra.SmtpSink):
    """The SMTP sink, noting when each message arrived: (time, Message-ID, recipient)."""

    arrivals: list[tuple[float, str, str]] = field(default_factory=list)

    def keep(self, message: EmailMessage) -> None:
        at = time.time()
        super().keep(message)
        recipient = parseaddr(str(message.get("To") or ""))[1].lower()
        with self._lock:
            self.arrivals.append((at, str(message.get("Message-ID") or ""), recipient))

    def arrived(self) -> list[tuple[float, str, str]]:
        with self._lock:
            return list(self.arrivals)


@dataclass
class ServiceProcess:
    """One `complaints serve NAME` process, restartable; its output goes to a log file."""

    name: str
    port: int
    env: dict[str, str]
    log: Path
    proc: asyncio.subprocess.Process | None = None

    async def spawn(self) -> float:
        """Start the process; return the spawn time (wall clock)."""
        spawned = time.time()
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "complaints",
                "serve",
                self.name,
                env=self.env,
                stdout=out,
                stderr=out,
            )
        return spawned

    async def serving(self) -> bool:
        """Whether its HTTP port takes connections (the killed process's socket died with it)."""
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 1)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    async def kill(self) -> float:
        """SIGKILL; return the time the signal was sent."""
        assert self.proc is not None and self.proc.returncode is None, f"{self.name} is not up"
        killed = time.time()
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        return killed

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def tail(self, lines: int = 15) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Load:
    """The steady load: every submission sent, and what the HTTP door answered."""

    emails: dict[str, str] = field(default_factory=dict)  # external id → customer e-mail
    kafka_sent: int = 0
    http_sent: int = 0
    http_answers: dict[str, set[str]] = field(default_factory=dict)  # external id → ids
    http_duplicates: int = 0  # a retry answered `duplicate: true` (its first answer was lost)
    http_retries: int = 0
    http_refusals: Counter[int] = field(default_factory=Counter)
    produce_failures: int = 0


@dataclass
class Kill:
    service: str
    killed: float
    spawned: float
    moments: dict[str, float | None] = field(default_factory=dict)
    ready: float | None = None  # when the new process took HTTP connections

    @property
    def first_work(self) -> float | None:
        found = [self.moments.get(m) for m in HEADLINE[self.service]]
        return min((t for t in found if t is not None), default=None)

    def after_spawn(self, moment: float | None) -> str:
        return f"+{moment - self.spawned:.1f} s" if moment is not None else "never"

    leased: list[str] = field(default_factory=list)  # recipients of receipts leased at the kill


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def _scalar(conn: asyncpg.Connection, query: str, *args: Any) -> Any:
    """The value of `query`, or None when the table or column is not there (schemas change)."""
    try:
        return await conn.fetchval(query, *args)
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        return None


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


# What counts as a restarted process's first work (the headline figure), and the other
# moments shown beside it; each is the earliest such moment at or after the spawn.
HEADLINE = {
    "intake": ("kafka accept",),
    "resolution": ("case written",),
    "notify": ("event consumed", "mail delivered"),
}


async def work_moments(
    conn: asyncpg.Connection, service: str, since: float, sink: TimedSink
) -> dict[str, float | None]:
    """When the process started at `since` first did each kind of work, seen in its tables
    (transaction times) and the sink (arrival times)."""
    after = _at(since)
    if service == "intake":
        first_accept = (
            "SELECT min(received_at) FROM intake.complaints "
            "WHERE channel = $1 AND received_at >= $2"
        )
        return {
            "kafka accept": _ts(await _scalar(conn, first_accept, "phone", after)),
            "http accept": _ts(await _scalar(conn, first_accept, "web", after)),
        }
    if service == "resolution":
        first_case = "SELECT min(updated_at) FROM resolution.cases WHERE updated_at >= $1"
        return {"case written": _ts(await _scalar(conn, first_case, after))}
    first_event = "SELECT min(handled_at) FROM notify.inbox WHERE handled_at >= $1"
    return {
        "event consumed": _ts(await _scalar(conn, first_event, after)),
        "mail delivered": min((at for at, _, _ in sink.arrived() if at >= since), default=None),
    }


async def leased_receipts(conn: asyncpg.Connection) -> tuple[list[str] | None, list[str]]:
    """Recipients of receipts leased and not sent (None when the table shows no lease), and of
    every receipt planned and not sent."""
    columns = {
        r["column_name"]
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = 'notify' AND table_name = 'notifications'"
        )
    }
    unsent = "sent_at IS NULL" if "sent_at" in columns else "status = 'pending'"
    pending = [
        r["recipient"].lower()
        for r in await conn.fetch(f"SELECT recipient FROM notify.notifications WHERE {unsent}")
    ]
    if "lease_until" not in columns:
        return None, pending
    leased = [
        r["recipient"].lower()
        for r in await conn.fetch(
            f"SELECT recipient FROM notify.notifications WHERE {unsent} AND lease_until > now()"
        )
    ]
    return leased, pending


async def run_load(
    settings: Settings, intake_url: str, key: str, rate: float, load: Load, stop: asyncio.Event
) -> None:
    """Submit `rate` complaints a second until `stop`: even ones over HTTP (retried until
    accepted, as a channel would), odd ones produced to Kafka."""
    producer = kafka.build_producer(settings, client_id="bench-recovery-phone")
    await producer.start()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    pending: list[asyncio.Future[Any]] = []
    workers = [asyncio.create_task(_http_worker(intake_url, key, queue, load)) for _ in range(8)]
    t0 = time.perf_counter()
    n = 0
    try:
        while not stop.is_set():
            delay = t0 + n / rate - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            channel = "web" if n % 2 == 0 else "phone"
            doc = submission(channel)
            load.emails[doc["external_id"]] = doc["customer"]["email"].lower()
            if channel == "web":
                load.http_sent += 1
                queue.put_nowait(doc)
            else:
                load.kafka_sent += 1
                event = new_event(type=EventType.SUBMITTED, source="bench/recovery", data=doc)
                key_bytes = topics.submission_key("phone", doc["external_id"]).encode()
                pending.append(
                    await producer.send(topics.SUBMITTED, event.to_bytes(), key=key_bytes)
                )
            n += 1
        # submissions still refused after a minute stay unaccepted: the report shows them
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(queue.join(), 60)
        results = await asyncio.gather(*pending, return_exceptions=True)
        load.produce_failures = sum(isinstance(r, BaseException) for r in results)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await producer.stop()


async def _http_worker(
    base_url: str, key: str, queue: asyncio.Queue[dict[str, Any]], load: Load
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    conn = Connection(base_url)
    try:
        while True:
            doc = await queue.get()
            tries = 0
            while True:
                tries += 1
                try:
                    status, answer = await asyncio.wait_for(
                        conn.post_json("/v1/complaints", doc, headers), 10
                    )
                except Exception:  # refused, reset, cut short, no answer: the process is down
                    await _discard(conn)
                    conn = Connection(base_url)
                    status, answer = 0, None
                if status == 202:
                    load.http_answers.setdefault(doc["external_id"], set()).add(
                        answer["complaint_id"]
                    )
                    if answer.get("duplicate"):
                        load.http_duplicates += 1
                    break
                if status:
                    load.http_refusals[status] += 1
                load.http_retries += 1
                await asyncio.sleep(min(0.05 * tries, 0.5))
            queue.task_done()
    finally:
        await _discard(conn)


async def _discard(conn: Connection) -> None:
    """Close a connection whose peer may be gone (closing it may fail too)."""
    with contextlib.suppress(Exception):
        await conn.close()


async def wait_until(
    probe: Callable[[], Awaitable[bool]], timeout_s: float, interval_s: float = 0.1
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await probe():
            return True
        await asyncio.sleep(interval_s)
    return False


async def read_to_end(bootstrap: str, topic: str, keep: Callable[[Any], None]) -> None:
    """Pass every record `topic` holds now to `keep` (no consumer group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=30_000
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            positions = [await consumer.position(p) for p in partitions]
            if all(pos >= ends[p] for pos, p in zip(positions, partitions, strict=True)):
                break
            batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batches.values():
                for record in records:
                    keep(record)
    finally:
        await consumer.stop()


async def received_on_topic(bootstrap: str, complaint_ids: set[str]) -> Counter[str]:
    """How many `complaint.received` events the topic holds for each of `complaint_ids`."""
    counts: Counter[str] = Counter()
    marker = b'"type":"complaint.received"'

    def keep(record: Any) -> None:
        if record.value is not None and marker in record.value:
            subject = (record.key or b"").decode()
            if subject in complaint_ids:
                counts[subject] += 1

    await read_to_end(bootstrap, topics.EVENTS, keep)
    return counts


async def dead_letters(bootstrap: str) -> list[dict[str, Any]]:
    """The data of every dead letter on the topic."""
    found: list[dict[str, Any]] = []

    def keep(record: Any) -> None:
        with contextlib.suppress(ValueError, TypeError, KeyError):
            found.append(json.loads(record.value)["data"])

    await read_to_end(bootstrap, topics.DEADLETTER, keep)
    return found


def _figures(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"median {statistics.median(values):5.1f} s, p90 {percentile(values, 0.9):5.1f} s, "
        f"max {max(values):5.1f} s"
    )


async def main(args: argparse.Namespace) -> int:
    # SIGTERM (say, from `timeout`) cleans up like Ctrl-C: every process stopped, database dropped
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
        return await _run(args, args.logs)
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        return await _run(args, Path(tmp))


async def _run(args: argparse.Namespace, tmp: Path) -> int:
    broker = None
    bootstrap = os.environ.get("COMPLAINTS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = devinfra.EmbeddedBroker(log_path=tmp / "tansu.log").start()
        bootstrap = broker.bootstrap
    sink = TimedSink()
    sink.start()
    admin_url, _server = await devinfra.admin_dsn()
    db_name = f"complaints_bench_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(admin_url, db_name)
    procs: dict[str, ServiceProcess] = {}
    stop_load = asyncio.Event()
    load_task: asyncio.Task[None] | None = None
    conn: asyncpg.Connection | None = None
    try:
        settings = Settings(
            _env_file=None,
            kafka_bootstrap=bootstrap,
            database_url=url,
            smtp_host=sink.host,
            smtp_port=sink.port,
        )
        key = await prepare(settings)
        base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("COMPLAINTS_", "OTEL_"))
        }
        base_env.update(
            COMPLAINTS_KAFKA_BOOTSTRAP=bootstrap,
            COMPLAINTS_DATABASE_URL=url,
            COMPLAINTS_SMTP_HOST=sink.host,
            COMPLAINTS_SMTP_PORT=str(sink.port),
            COMPLAINTS_STATE_DIR=str(tmp),
            COMPLAINTS_AUTH_SECRET=SECRET,
            COMPLAINTS_KEY_RATE_PER_S="100000",
            COMPLAINTS_KEY_BURST="100000",
        )
        for name in SERVICES:
            port = devinfra.free_port()
            env = {**base_env, "COMPLAINTS_HTTP_PORT": str(port)}
            if args.static:  # a stable name per replica, as a deployment gives it
                env["COMPLAINTS_KAFKA_INSTANCE_ID"] = f"{name}-1"
            procs[name] = ServiceProcess(name, port, env, tmp / f"{name}.log")
            await procs[name].spawn()
        for name, proc in procs.items():
            if not await wait_until(proc.serving, 120, interval_s=0.2):
                raise RuntimeError(f"{name} did not start:\n{proc.tail()}")
        conn = await asyncpg.connect(url)
        load = Load()
        load_task = asyncio.create_task(
            run_load(
                settings,
                f"http://127.0.0.1:{procs['intake'].port}",
                key,
                args.rate,
                load,
                stop_load,
            )
        )
        started = time.time()

        async def working() -> bool:
            assert conn is not None
            cases = await _scalar(conn, "SELECT count(*) FROM resolution.cases")
            return bool(cases) and bool(sink.arrived())

        if not await wait_until(working, 120):
            raise RuntimeError("the system did not reach steady work (a case and a receipt)")
        print(
            f"3 processes (`complaints serve intake|resolution|notify`), {args.rate:.0f} "
            f"complaints/s (half HTTP, half Kafka); working under load after "
            f"{time.time() - started:.1f} s; {args.kills} SIGKILL(s) per service, "
            f"{args.steady:.0f} s of steady running before each",
            flush=True,
        )

        kills: list[Kill] = []
        already_leased: set[str] = set()
        leases_visible = True
        for name in args.services.split(","):
            proc = procs[name]
            for n in range(args.kills):
                await asyncio.sleep(args.steady)
                killed = await proc.kill()
                leased: list[str] = []
                if name == "notify":
                    seen_leased, pending = await leased_receipts(conn)
                    if seen_leased is None:
                        leases_visible = False
                        seen_leased = pending
                    leased = [r for r in seen_leased if r not in already_leased]
                    already_leased.update(leased)
                spawned = await proc.spawn()
                kill = Kill(name, killed, spawned, leased=leased)
                kills.append(kill)

                async def done(kill: Kill = kill, proc: ServiceProcess = proc) -> bool:
                    assert conn is not None
                    if kill.ready is None and await proc.serving():
                        kill.ready = time.time()
                    kill.moments = await work_moments(conn, kill.service, kill.spawned, sink)
                    return kill.ready is not None and None not in kill.moments.values()

                await wait_until(done, args.recover_timeout)
                work = (
                    f"{kill.first_work - spawned:5.1f} s"
                    if kill.first_work
                    else f"none in {args.recover_timeout:.0f} s"
                )
                moments = [f"{m} {kill.after_spawn(t)}" for m, t in kill.moments.items()]
                moments.append(f"serving {kill.after_spawn(kill.ready)}")
                if name == "notify":
                    moments.append(f"{len(leased)} receipts leased at the kill")
                print(
                    f"  {name:<10} kill {n + 1}: restart → first work {work}  "
                    f"({'; '.join(moments)})",
                    flush=True,
                )

        stop_load.set()
        await load_task
        load_task = None
        expected = set(load.emails)
        addresses = set(load.emails.values())

        async def drained() -> bool:
            assert conn is not None
            accepted = await conn.fetchval(
                "SELECT count(*) FROM intake.complaints WHERE external_id = ANY($1::text[])",
                list(expected),
            )
            delivered = {r for _, _, r in sink.arrived()}
            return accepted == len(expected) and addresses <= delivered

        drain_started = time.time()
        complete = await wait_until(drained, args.drain, interval_s=0.5)
        await asyncio.sleep(3)  # a duplicate would arrive within this
        drain_s = time.time() - drain_started

        rows = await conn.fetch(
            "SELECT external_id, complaint_id FROM intake.complaints "
            "WHERE external_id = ANY($1::text[])",
            list(expected),
        )
        accepted_ids = {r["external_id"]: r["complaint_id"] for r in rows}
        cases = await conn.fetchval(
            "SELECT count(*) FROM resolution.cases WHERE complaint_id = ANY($1::text[])",
            list(accepted_ids.values()),
        )
        other_answers = sum(
            1
            for ext, ids in load.http_answers.items()
            if len(ids) > 1 or (ext in accepted_ids and ids != {accepted_ids[ext]})
        )
        received = await received_on_topic(bootstrap, set(accepted_ids.values()))
        letters = await dead_letters(bootstrap)
        arrivals = sink.arrived()
        by_id = Counter(mid for _, mid, r in arrivals if r in addresses)
        first_arrival: dict[str, float] = {}
        for at, _, recipient in sorted(arrivals):
            first_arrival.setdefault(recipient, at)

        print()
        print(f"{'service':<11} restart → first work, over {args.kills} kills (target < 8 s)")
        for name in args.services.split(","):
            mine = [k for k in kills if k.service == name]
            values = [k.first_work - k.spawned for k in mine if k.first_work is not None]
            missing = len(mine) - len(values)
            verdict = (
                "meets"
                if values and not missing and max(values) < FIRST_WORK_TARGET_S
                else "MISSES"
            )
            print(
                f"{name:<11} {_figures(values)}"
                + (f"; {missing} restart(s) did no work" if missing else "")
                + f"   ({verdict} the target)"
            )
            kinds = [*dict.fromkeys(m for k in mine for m in k.moments), "serving"]
            for kind in kinds:
                times = [k.ready if kind == "serving" else k.moments.get(kind) for k in mine]
                found = [t - k.spawned for t, k in zip(times, mine, strict=True) if t is not None]
                never = len(mine) - len(found)
                print(
                    f"{'':<11}   {kind + ':':<16} {_figures(found)}"
                    + (f"; never within {args.recover_timeout:.0f} s: {never}" if never else "")
                )

        late: list[float] = []
        before_kill = 0
        never = 0
        notify_kills = [k for k in kills if k.service == "notify"]
        for kill in notify_kills:
            for recipient in kill.leased:
                arrived = first_arrival.get(recipient)
                if arrived is None:
                    never += 1
                elif arrived < kill.killed:
                    before_kill += 1  # sent, not yet marked sent: a resend follows by design
                else:
                    late.append(arrived - kill.killed)
        if notify_kills:
            what = "leased" if leases_visible else "planned and unsent (no lease column seen)"
            if never or (late and max(late) >= MAILER_TARGET_S):
                verdict = "MISSES"
            elif late:
                verdict = "meets"
            else:  # none leased, or each had reached the sink before its kill
                verdict = "no receipt waited on a kill"
            print(
                f"killed mailer: {sum(len(k.leased) for k in notify_kills)} receipts {what} at "
                f"{len(notify_kills)} kills; kill → in the sink {_figures(late)}"
                f" (target < {MAILER_TARGET_S:.0f} s: {verdict})"
                + (f"; {before_kill} had reached the sink before the kill" if before_kill else "")
                + (f"; {never} NEVER delivered" if never else "")
            )

        submitted = len(expected)
        print(
            f"submissions: {submitted} ({load.http_sent} HTTP, {load.kafka_sent} Kafka); "
            f"accepted {len(accepted_ids)} ({submitted - len(accepted_ids)} missing); "
            f"cases {cases}; HTTP retries {load.http_retries} "
            f"(refusals {dict(load.http_refusals) or 'none'}), answered `duplicate` "
            f"{load.http_duplicates}, answered another complaint id {other_answers}; "
            f"produce failures {load.produce_failures}"
        )
        unaccepted = sorted(expected - accepted_ids.keys())
        for ext in unaccepted[:10]:
            door = "HTTP" if ext.startswith("web-") else "Kafka"
            answered = load.http_answers.get(ext)
            print(
                f"  NOT ACCEPTED: {ext} ({door}"
                + (f", HTTP answered 202 with {sorted(answered)}" if answered else "")
                + ")"
            )
        if letters:
            reasons = Counter(str(d.get("reason_code")) for d in letters)
            print(f"dead letters: {len(letters)} ({dict(reasons)})")
        dup_received = sum(c - 1 for c in received.values() if c > 1)
        print(
            f"complaint.received on the topic: {len(received)} complaints, "
            f"{dup_received} published more than once (the relay is at least once)"
        )
        delivered = sum(1 for a in addresses if a in first_arrival)
        dup_mail = sum(c - 1 for c in by_id.values() if c > 1)
        print(
            f"receipts: {delivered}/{len(addresses)} delivered; {sum(by_id.values())} messages, "
            f"{dup_mail} duplicates by Message-ID; drained in {drain_s:.0f} s"
            + ("" if complete else f" (NOT complete after {args.drain:.0f} s)")
        )
        return 0 if complete and not other_answers else 1
    except BaseException:
        for proc in procs.values():
            print(f"--- {proc.name} log (last lines)\n{proc.tail()}", file=sys.stderr)
        raise
    finally:
        stop_load.set()
        if load_task is not None:
            load_task.cancel()
            await asyncio.gather(load_task, return_exceptions=True)
        for proc in procs.values():
            await proc.stop()
        if conn is not None:
            await conn.close()
        sink.stop()
        await devinfra.drop_database(admin_url, db_name)
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50.0, help="complaints per second")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs per service")
    parser.add_argument("--services", default=",".join(SERVICES), help="which to kill, in order")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds before each kill")
    parser.add_argument(
        "--recover-timeout", type=float, default=60.0, help="longest wait for first work"
    )
    parser.add_argument(
        "--drain", type=float, default=150.0, help="longest wait for the last receipts"
    )
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    parser.add_argument(
        "--static",
        action="store_true",
        help="give each replica a stable COMPLAINTS_KAFKA_INSTANCE_ID (static group membership)",
    )
    try:
        import uvloop

        runner: Callable[[Any], int] = uvloop.run
    except ImportError:
        runner = asyncio.run
    sys.exit(runner(main(parser.parse_args())))
