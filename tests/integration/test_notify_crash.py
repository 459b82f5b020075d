"""A notify process killed before the receipt went out: it is sent exactly once, after a
restart or by another mailer a lease later."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import uuid

import pytest
from opentelemetry import trace

from complaints import system
from services.notify import repository
from services.notify.domain import Message
from services.notify.mailer import Mailer
from services.notify.smtp import SmtpPool
from shared import db, devinfra, topics
from shared.settings import Settings
from tests.conftest import SECRET, isolated_parts
from tests.support import (
    eventually,
    produce_submissions,
    read_topic,
    service_process_env,
    submission,
)


@pytest.fixture
async def isolated(smtp):
    """A broker and database of its own, so killing notify here disturbs no other test."""
    async with isolated_parts(smtp) as settings:
        yield settings


async def _spawn_notify(settings: Settings, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "complaints",
        "serve",
        "notify",
        env=service_process_env(settings, COMPLAINTS_HTTP_PORT=str(devinfra.free_port()), **env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_receipt_sent_exactly_once_across_a_kill_of_notify(isolated: Settings, smtp):
    intake = system.build_services(isolated, ["intake"], secret=SECRET)[0]
    await intake.start()
    dead_smtp = str(devinfra.free_port())  # nothing listens: delivery fails, the plan stays
    first = await _spawn_notify(isolated, COMPLAINTS_SMTP_PORT=dead_smtp)
    second = None
    try:
        data = submission("phone")
        await produce_submissions(isolated.kafka_bootstrap, [data])

        conn_url = isolated.require_database_url()
        import asyncpg

        async def planned_not_sent():
            conn = await asyncpg.connect(conn_url)
            try:
                return await conn.fetchrow(
                    "SELECT complaint_id, attempts, status FROM notify.notifications "
                    "WHERE recipient = $1 AND attempts >= 1 AND last_error IS NOT NULL",
                    data["customer"]["email"],
                )
            finally:
                await conn.close()

        row = await eventually(planned_not_sent, timeout_s=60, what="a receipt planned but unsent")
        assert row["status"] == "pending"
        assert smtp.to(data["customer"]["email"]) == []

        first.send_signal(signal.SIGKILL)
        await first.wait()

        second = await _spawn_notify(isolated)
        mails = await eventually(
            lambda: smtp.to(data["customer"]["email"]), timeout_s=60, what="the receipt"
        )
        assert mails[0]["X-Complaint-Id"] == row["complaint_id"]

        async def sent_events():
            found = [
                r
                for r in await read_topic(isolated.kafka_bootstrap, topics.EVENTS)
                if json.loads(r.value)["type"] == "notification.sent"
                and json.loads(r.value)["subject"] == row["complaint_id"]
            ]
            return found or None

        await eventually(sent_events, timeout_s=30, what="notification.sent")
        await asyncio.sleep(3)  # a second delivery would have happened by now
        assert len(smtp.to(data["customer"]["email"])) == 1
        assert len(await sent_events()) == 1
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)
        await intake.stop()


async def _black_hole() -> tuple[asyncio.Server, list[asyncio.StreamWriter]]:
    """A server that takes SMTP connections and never answers: sends hang in it."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    return await asyncio.start_server(swallow, "127.0.0.1", 0), held


async def test_a_killed_mailers_leases_are_taken_over_within_seconds(isolated: Settings, smtp):
    """A live mailer keeps its leases (renewed) while another stands by; killed, its messages
    go out from the other a lease later, each once."""
    lease_s = 4.0
    hole, held = await _black_hole()
    hole_port = hole.sockets[0].getsockname()[1]
    first = await _spawn_notify(
        isolated,
        COMPLAINTS_SMTP_PORT=str(hole_port),
        COMPLAINTS_SMTP_TIMEOUT_S="300",
        COMPLAINTS_MAILER_LEASE_S=str(lease_s),
    )
    pool = await db.create_pool(
        isolated.require_database_url(), schema="notify", application="takeover-test"
    )
    try:
        ids = [str(uuid.uuid4()) for _ in range(12)]
        addresses = [f"takeover.{i}@example.com" for i in ids]
        async with pool.acquire() as conn:
            for notification_id, address in zip(ids, addresses, strict=True):
                await repository.plan(
                    conn,
                    notification_id=notification_id,
                    complaint_id=f"c-takeover-{uuid.uuid4().hex[:8]}",
                    message=Message("receipt", "email", address, "en", "Receipt", "Thanks\n"),
                    trace_headers={},
                )

        async def owners() -> set[str] | None:
            async with pool.acquire() as conn:
                rows = await conn.fetch(
                    "SELECT lease_owner FROM notifications WHERE notification_id = ANY($1)", ids
                )
            found = {str(r["lease_owner"]) for r in rows}
            return found if "None" not in found else None

        (owner,) = await eventually(owners, timeout_s=90, what="the first mailer's claims")
        await eventually(lambda: held, what="its sends hanging in the black hole")

        standby = Mailer(
            pool=pool,
            smtp=SmtpPool(host=smtp.host, port=smtp.port, timeout_s=5, size=2),
            sender_address="complaints@localhost",
            tracer=trace.get_tracer("test"),
            lease_s=lease_s,
            poll_interval_s=0.2,
        )
        standby_task = asyncio.create_task(standby.run())
        try:
            await asyncio.sleep(2.5 * lease_s)  # renewed by its heartbeat, never taken over
            assert await owners() == {owner}
            assert not any(smtp.to(a) for a in addresses)

            first.send_signal(signal.SIGKILL)
            await first.wait()
            killed = time.monotonic()
            await eventually(
                lambda: all(smtp.to(a) for a in addresses), timeout_s=30, what="the mail"
            )
            taken_over_in = time.monotonic() - killed
            # the lease (4 s), not the 60 s it once was, and well within issue 8's 15 s; the
            # rest is claiming and sending on a machine that may be slow (7.2 s seen)
            assert taken_over_in < lease_s + 6, taken_over_in
            await asyncio.sleep(1)  # a second delivery would show by now
        finally:
            standby.stop()
            await asyncio.wait_for(standby_task, 10)
        for notification_id, address in zip(ids, addresses, strict=True):
            (mail,) = smtp.to(address)
            assert mail["Message-ID"] == f"<{notification_id}@complaints>"
        async with pool.acquire() as conn:
            sent = await conn.fetch(
                "SELECT convert_from(value, 'UTF8')::jsonb #>> '{data,notification_id}' AS id "
                "FROM outbox WHERE convert_from(value, 'UTF8')::jsonb ->> 'type' = $1",
                "notification.sent",
            )
        assert sorted(r["id"] for r in sent) == sorted(ids)
    finally:
        if first.returncode is None:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        for writer in held:
            writer.close()
        hole.close()
        await pool.close()
