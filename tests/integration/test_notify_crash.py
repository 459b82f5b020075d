"""A notify process killed before the receipt went out sends it exactly once after a restart."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from complaints import system
from shared import devinfra, kafka, topics
from shared.events import EventType, new_event
from shared.settings import Settings
from tests.conftest import ADMIN_DSN, SECRET
from tests.support import eventually, read_topic, service_process_env, submission


@pytest.fixture
async def isolated(smtp):
    """A broker and database of its own, so killing notify here disturbs no other test."""
    broker = devinfra.EmbeddedBroker().start()
    name = f"complaints_crash_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(ADMIN_DSN, name)
    settings = Settings(
        _env_file=None,
        kafka_bootstrap=broker.bootstrap,
        database_url=url,
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        kafka_fetch_max_wait_ms=20,
        outbox_poll_interval_s=0.2,
    )
    await system.migrate_all(settings)
    await kafka.ensure_topics(settings)
    try:
        yield settings
    finally:
        broker.stop()
        await devinfra.drop_database(ADMIN_DSN, name)


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
        producer = AIOKafkaProducer(bootstrap_servers=isolated.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            event = new_event(type=EventType.SUBMITTED, source="phone/ivr", data=data)
            await producer.send_and_wait(
                topics.SUBMITTED,
                event.to_bytes(),
                key=topics.submission_key("phone", data["external_id"]).encode(),
            )
        finally:
            await producer.stop()

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
