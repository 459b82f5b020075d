"""The mailer against a real SMTP server and PostgreSQL: many messages over a few kept-alive
connections, each exactly once; a refused recipient fails alone; a broken connection is
replaced."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from opentelemetry import trace

from services.notify import repository
from services.notify.app import Notify
from services.notify.domain import Message
from services.notify.mailer import Mailer
from services.notify.smtp import SmtpPool
from shared import db, devinfra
from tests.conftest import ADMIN_DSN
from tests.support import eventually


@dataclass
class Sink:
    """An SMTP server keeping what it accepts, with the session each came on; it answers 550
    to the addresses in `refuse`, and with `drop_after` hangs up without a word on the next
    message after that many on a connection."""

    port: int = field(default_factory=devinfra.free_port)
    refuse: set[str] = field(default_factory=set)
    drop_after: int | None = None
    messages: list[tuple[int, EmailMessage]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    _controller: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Sink:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    async def handle_MAIL(self, server, session, envelope, address, options) -> str:
        with self._lock:
            done = sum(1 for s, _ in self.messages if s == id(session))
        if self.drop_after is not None and done >= self.drop_after:
            server.transport.close()
            return "250 OK"  # never reaches the client
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        if address in self.refuse:
            with self._lock:
                self.refused.append(address)
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        with self._lock:
            self.messages.append((id(session), message))  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def ids(self) -> list[str]:
        with self._lock:
            return [m["Message-ID"] for _, m in self.messages]

    def sessions(self) -> set[int]:
        with self._lock:
            return {s for s, _ in self.messages}


@pytest.fixture
async def pool() -> AsyncIterator[asyncpg.Pool]:
    """Notify's schema in a database of its own: no other mailer claims these messages."""
    name = f"complaints_mailer_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(ADMIN_DSN, name)
    await Notify.migrate(url)
    pool = await db.create_pool(url, schema="notify", application="mailer-test", max_size=6)
    try:
        yield pool
    finally:
        await pool.close()
        await devinfra.drop_database(ADMIN_DSN, name)


async def plan(pool: asyncpg.Pool, recipients: list[str]) -> list[str]:
    """Plan a receipt to each recipient; return their notification ids."""
    ids = []
    async with pool.acquire() as conn:
        for recipient in recipients:
            notification_id = str(uuid.uuid4())
            await repository.plan(
                conn,
                notification_id=notification_id,
                complaint_id=f"c-{uuid.uuid4().hex[:12]}",
                message=Message("receipt", "email", recipient, "en", "Receipt", "Thank you.\n"),
                trace_headers={},
            )
            ids.append(notification_id)
    return ids


def mailer(pool: asyncpg.Pool, sink: Sink, *, connections: int, **options: Any) -> Mailer:
    return Mailer(
        pool=pool,
        smtp=SmtpPool(host="127.0.0.1", port=sink.port, timeout_s=5, size=connections),
        sender_address="complaints@localhost",
        tracer=trace.get_tracer("test"),
        poll_interval_s=0.1,
        **options,
    )


async def running(m: Mailer) -> Callable[[], Any]:
    task = asyncio.create_task(m.run())

    async def stop() -> None:
        m.stop()
        await asyncio.wait_for(task, 10)

    return stop


async def events(pool: asyncpg.Pool, type_: str) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT value FROM outbox ORDER BY id")
    found = [json.loads(bytes(r["value"])) for r in rows]
    return [e["data"] for e in found if e["type"] == type_]


async def test_many_receipts_over_a_few_connections_each_exactly_once(pool):
    sink = Sink().start()
    try:
        ids = await plan(pool, [f"r{n}@example.com" for n in range(150)])
        stop = await running(mailer(pool, sink, connections=3, max_in_flight=24))
        try:
            await eventually(lambda: len(sink.ids()) >= 150, timeout_s=60, what="150 mails")
            await asyncio.sleep(1)  # a second delivery would show by now
        finally:
            await stop()
        assert sorted(sink.ids()) == sorted(f"<{i}@complaints>" for i in ids)
        assert len(sink.sessions()) <= 3  # kept alive and shared, not one per message
        sent = await events(pool, "notification.sent")
        assert sorted(e["notification_id"] for e in sent) == sorted(ids)
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT status, attempts, lease_owner FROM notifications")
        assert {(r["status"], r["attempts"], r["lease_owner"]) for r in rows} == {("sent", 1, None)}
    finally:
        sink.stop()


async def test_a_refused_recipient_fails_alone_after_its_retries(pool):
    sink = Sink(refuse={"gone@example.com"}).start()
    try:
        good = await plan(pool, [f"ok{n}@example.com" for n in range(20)])
        (bad,) = await plan(pool, ["gone@example.com"])
        m = mailer(pool, sink, connections=2, max_attempts=3, retry_delay_s=lambda _n: 0.3)
        stop = await running(m)
        try:

            async def bad_failed() -> bool:
                return bool(await events(pool, "notification.failed"))

            await eventually(bad_failed, timeout_s=30, what="notification.failed")
            await eventually(lambda: len(sink.ids()) >= 20, timeout_s=30, what="the good mails")
        finally:
            await stop()
        assert sorted(sink.ids()) == sorted(f"<{i}@complaints>" for i in good)
        assert sink.refused == ["gone@example.com"] * 3  # tried, retried, given up
        (failed,) = await events(pool, "notification.failed")
        assert failed["notification_id"] == bad
        assert failed["reason"] == "SMTPRecipientRefused 550"
        sent = await events(pool, "notification.sent")
        assert sorted(e["notification_id"] for e in sent) == sorted(good)
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, attempts FROM notifications WHERE notification_id = $1", bad
            )
            others = await conn.fetchval(
                "SELECT count(*) FROM notifications WHERE status = 'sent' AND attempts = 1"
            )
        assert (row["status"], row["attempts"]) == ("failed", 3)
        assert others == 20  # the refusal cost the other messages nothing
    finally:
        sink.stop()


async def test_a_broken_connection_is_replaced(pool):
    sink = Sink().start()
    m = mailer(pool, sink, connections=2)
    stop = await running(m)
    try:
        first = await plan(pool, [f"a{n}@example.com" for n in range(6)])
        await eventually(lambda: len(sink.ids()) >= 6, timeout_s=20, what="the first mails")
        sink.stop()  # every kept-alive connection breaks
        # and the new server hangs up on every third message of a connection
        sink = Sink(port=sink.port, drop_after=2).start()
        second = await plan(pool, [f"b{n}@example.com" for n in range(12)])
        m.wake()
        await eventually(lambda: len(sink.ids()) >= 12, timeout_s=20, what="the second mails")
    finally:
        await stop()
        sink.stop()
    assert sorted(sink.ids()) == sorted(f"<{i}@complaints>" for i in second)
    assert len(sink.sessions()) >= 6  # connections were opened afresh
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, attempts FROM notifications")
    assert len(rows) == len(first) + len(second)
    # delivered on fresh connections at the first attempt: no failure was recorded
    assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)}


async def test_a_mailers_messages_are_found_by_their_ids_not_among_every_pending_one(pool):
    """Renewing, releasing and settling a mailer's messages reads those messages only: even a
    generic plan made before the table was ever analysed (a young, fast-growing table) takes
    the primary key, and a digest's receipts come by the digest index. Spelled with the due
    index's own predicate, the statements by id scanned that index (one joined to the ids read
    every pending message), and settling a digest read the whole table."""
    owner = "00000000-0000-0000-0000-000000000001"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE notifications SET (autovacuum_enabled = false)")
        # pending messages, a tenth of them receipts held for five digests
        await conn.execute(
            """INSERT INTO notifications (notification_id, complaint_id, kind, medium, recipient,
                   language, subject, body, status, digest_id, lease_owner, lease_until)
               SELECT 'plan:' || g, 'c' || g, 'receipt', 'email', 'r' || g || '@example.com',
                      'en', 'Receipt', 'Thank you.',
                      CASE WHEN g % 10 = 3 THEN 'held' ELSE 'pending' END,
                      CASE WHEN g % 10 = 3 THEN 'digest:' || g % 500 END,
                      $1::uuid, now() + interval '1 minute'
               FROM generate_series(1, 5000) AS g""",
            owner,
        )
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        ids = "'{plan:1,plan:2}'"
        for sql, arguments, index in (
            (repository._RENEW, f"{ids}, 30, '{owner}'", "notifications_pkey"),
            (repository._RELEASE, f"{ids}, '{owner}'", "notifications_pkey"),
            (repository._MARK_SENT, f"{ids}, '{owner}'", "notifications_pkey"),
            (
                repository._MARK_FAILED,
                f"{ids}, '{{e,e}}', '{{t,f}}', '{{1,1}}', '{owner}'",
                "notifications_pkey",
            ),
            (repository._SETTLE_HELD, "'{digest:3}', '{NULL}', 'sent'", "notifications_digest"),
        ):
            await conn.execute(f"PREPARE probe AS {sql}")
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN EXECUTE probe({arguments})"))
            await conn.execute("DEALLOCATE probe")
            assert index in plan, plan
            assert "notifications_due" not in plan and "Seq Scan" not in plan, plan
