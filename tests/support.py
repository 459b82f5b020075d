"""Helpers shared by the tests: waiting for an outcome, reading a topic, building submissions."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from complaints.samples import activate_policy as activate_policy
from complaints.samples import clocks_in_seconds as clocks_in_seconds
from complaints.samples import produce_submissions as produce_submissions
from complaints.samples import submission as submission
from services.intake import repository as intake_repository

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll `probe` (sync or async) until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


async def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 5.0) -> list[Any]:
    """Every record on `topic` up to its current end (no consumer group)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10_000
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            if not batch and records:
                break
            for chunk in batch.values():
                records.extend(chunk)
        return records
    finally:
        await consumer.stop()


def service_process_env(settings: Any, **overrides: str) -> dict[str, str]:
    """Environment for a `complaints` subprocess pointed at the same parts as `settings`."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPLAINTS_", "OTEL_"))}
    env.update(
        COMPLAINTS_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        COMPLAINTS_DATABASE_URL=settings.database_url,
        COMPLAINTS_SMTP_HOST=settings.smtp_host,
        COMPLAINTS_SMTP_PORT=str(settings.smtp_port),
        COMPLAINTS_KAFKA_FETCH_MAX_WAIT_MS="20",
        COMPLAINTS_OUTBOX_POLL_INTERVAL_S="0.2",
        COMPLAINTS_AUTH_SECRET="test-secret-not-for-production",
    )
    env.update(overrides)
    return env


async def complaints_cli(
    settings: Any, *args: str, timeout_s: float = 60
) -> tuple[int, bytes, bytes]:
    """Run `complaints ARGS` in a subprocess pointed at `settings`' parts: exit code, stdout
    and stderr as bytes."""
    import asyncio.subprocess
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "complaints",
        *args,
        env=service_process_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def complaints_cli_text(settings: Any, *args: str) -> tuple[int, str, str]:
    """`complaints_cli` with stdout and stderr decoded."""
    code, out, err = await complaints_cli(settings, *args)
    return code, out.decode(), err.decode()


def remedy_granted(band: str, amount: Decimal | None, at: datetime, **facts: Any) -> dict[str, Any]:
    """A refund in EUR granted for a product complaint of high severity in `band`, as
    resolution's `repository.remedies_added` records it; `facts` change any column."""
    return {
        "event_id": str(uuid.uuid4()),
        "complaint_id": "c",
        "customer_id": "cust",
        "type": "refund",
        "amount": amount,
        "currency": "EUR",
        "percent": None,
        "category": "product",
        "severity": "high",
        "band": band,
        "proposer": "a",
        "authorized_by": "a",
        "authorized_role": "agent",
        "policy_exception": False,
        "justification": None,
        "policy_version": 1,
        "at": at,
    } | facts


async def add_agent(conn: Any, staff_id: str, *, languages: Sequence[str] = ("en",)) -> None:
    """An available agent of `customer-care` (capacity 10) in intake's directory, on `conn`."""
    await intake_repository.add_staff(
        conn,
        staff_id=staff_id,
        name=staff_id,
        team="customer-care",
        role="agent",
        languages=list(languages),
        capacity=10,
        available=True,
    )
