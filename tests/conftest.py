"""The real parts for the integration tests: broker, database and SMTP sink, one set per run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import settings as hypothesis_settings
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from complaints import system
from services.intake import admin
from shared import auth, db, devinfra, kafka, migrate
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import build_tracer_provider

try:
    import uvloop
except ImportError:  # not on every platform: the tests then run on the default loop
    uvloop = None  # type: ignore[assignment]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any] | None:
    """Every async test runs on uvloop, the event loop the services run on wherever it is
    installed (`complaints`'s CLI; uvicorn[standard] brings it): the default loop once hid a
    failure that only uvloop showed (it keeps the bound `data_received` of a protocol)."""
    if uvloop is None:
        return None
    return {"uvloop": uvloop.new_event_loop}


# CI runs the same examples every time (a landing must not hang on chance); local runs explore.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

ADMIN_DSN = os.environ.get("COMPLAINTS_TEST_ADMIN_DSN") or asyncio.run(devinfra.admin_dsn())[0]
SECRET = b"test-secret-not-for-production"
# Keys the tests create carry limits no test reaches, unless a test asks for its own.
TEST_KEY_RATE_PER_S = 100_000.0
TEST_KEY_BURST = 100_000


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """The Kafka-protocol broker: `COMPLAINTS_TEST_KAFKA_BOOTSTRAP`, else an embedded tansu."""
    configured = os.environ.get("COMPLAINTS_TEST_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    embedded = devinfra.EmbeddedBroker().start()
    try:
        yield embedded.bootstrap
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
async def database() -> AsyncIterator[str]:
    """A fresh database for this run on the real PostgreSQL, dropped afterwards."""
    name = f"complaints_test_{uuid.uuid4().hex[:10]}"
    url = await devinfra.ensure_database(ADMIN_DSN, name)
    try:
        yield url
    finally:
        await devinfra.drop_database(ADMIN_DSN, name)


@contextlib.asynccontextmanager
async def shared_schema(
    database: str, prefix: str, migrations: list[migrate.Migration] | None = None
) -> AsyncIterator[tuple[str, db.Pool]]:
    """A schema of its own with the shared tables (outbox, inbox, dead letters, timers), or
    the `migrations` given (a service's own), and a pool on it; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    if migrations is None:
        migrations = migrate.load("shared.migrations", prefix="shared/")
    await migrate.apply(database, name, migrations)
    pool = await db.create_pool(database, schema=name, application=f"test-{prefix}", max_size=8)
    try:
        yield name, pool
    finally:
        await pool.close()
        conn = await asyncpg.connect(database)
        try:
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def isolated_parts(
    smtp: devinfra.SmtpSink, services: Sequence[str] = system.NAMES, **overrides: Any
) -> AsyncIterator[Settings]:
    """A broker and a database of their own (migrated for `services`), mailing to `smtp`, for
    a test that kills or reconfigures services and must disturb no other test."""
    broker = devinfra.EmbeddedBroker().start()
    name = f"complaints_iso_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(ADMIN_DSN, name)
    try:
        settings = Settings(
            _env_file=None,
            kafka_bootstrap=broker.bootstrap,
            database_url=url,
            smtp_host=smtp.host,
            smtp_port=smtp.port,
            kafka_fetch_max_wait_ms=20,
            outbox_poll_interval_s=0.2,
            **overrides,
        )
        await system.migrate_all(settings, services)
        await kafka.ensure_topics(settings)
        yield settings
    finally:
        broker.stop()
        await devinfra.drop_database(ADMIN_DSN, name)


@pytest.fixture(scope="session")
def smtp() -> Iterator[devinfra.SmtpSink]:
    sink = devinfra.SmtpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(scope="session")
async def settings(broker: str, database: str, smtp: devinfra.SmtpSink) -> Settings:
    settings = Settings(
        _env_file=None,
        kafka_bootstrap=broker,
        database_url=database,
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        http_port=devinfra.free_port(),
        kafka_fetch_max_wait_ms=20,
        outbox_poll_interval_s=0.2,
    )
    await system.migrate_all(settings)
    await kafka.ensure_topics(settings)
    return settings


@dataclass
class Running:
    """The three services, serving HTTP, with their spans kept in memory."""

    settings: Settings
    services: dict[str, Service]
    spans: InMemorySpanExporter
    providers: dict[str, TracerProvider]
    http: httpx.AsyncClient
    secret: bytes
    web_key: str

    def staff_token(self, staff_id: str = "manager-1") -> str:
        """A token for a member the test added (`add_member`); `manager-1` is always there."""
        return auth.issue_token(self.secret, kind=auth.STAFF, subject=staff_id, ttl_s=3600)

    async def add_member(
        self, staff_id: str, *, team: str = "customer-care", role: str = "agent", capacity: int = 0
    ) -> None:
        """Add a member to the directory (offered no cases unless given a capacity) and wait
        until every service that checks tokens has learnt them."""
        await admin.add_staff(
            self.settings,
            staff_id=staff_id,
            name=f"Test {staff_id}",
            team=team,
            role=role,
            languages=["en"],
            capacity=capacity,
        )
        await self.learnt(staff_id, "active")

    async def learnt(self, staff_id: str, condition: str = "true") -> None:
        """Wait until resolution and notify know `staff_id` with `condition` (SQL) holding."""
        deadline = asyncio.get_running_loop().time() + 30
        for schema in ("resolution", "notify"):
            while not await self.sql(
                f"SELECT 1 FROM {schema}.staff_directory WHERE staff_id = $1 AND {condition}",
                staff_id,
            ):
                assert asyncio.get_running_loop().time() < deadline, f"{schema} never learnt"
                await asyncio.sleep(0.05)

    async def channel_key(
        self,
        channel: str,
        *,
        rate_per_s: float = TEST_KEY_RATE_PER_S,
        burst: int = TEST_KEY_BURST,
    ) -> str:
        return await admin.create_key(self.settings, channel, rate_per_s=rate_per_s, burst=burst)

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.settings.require_database_url())
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()


@pytest.fixture(scope="session")
async def running(settings: Settings) -> AsyncIterator[Running]:
    exporter = InMemorySpanExporter()
    providers = {
        name: build_tracer_provider(
            f"complaints-{name}", processors=[SimpleSpanProcessor(exporter)]
        )
        for name in system.NAMES
    }
    services = system.build_services(
        settings, system.NAMES, secret=SECRET, tracer_providers=providers
    )
    ready = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(system.serve(settings, services, on_ready=ready.set, stop=stop))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    async with httpx.AsyncClient(base_url=settings.base_url(), timeout=30) as http:
        running = Running(
            settings=settings,
            services={s.name: s for s in services},
            spans=exporter,
            providers=providers,
            http=http,
            secret=SECRET,
            web_key=await admin.create_key(
                settings, "web", rate_per_s=TEST_KEY_RATE_PER_S, burst=TEST_KEY_BURST
            ),
        )
        await running.add_member("manager-1", role="manager")
        yield running
    stop.set()
    await task
