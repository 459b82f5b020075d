"""Numbered `.sql` migrations, each service in its own schema, applied under an advisory lock."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from shared.db import Conn

log = logging.getLogger(__name__)

# One lock for all schemas: migrations are rare, and serialising them keeps DDL simple.
_LOCK_KEY = 0x636F6D70  # "comp"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """A migration cannot be applied, or one already applied has changed since."""


def load(package: str, *, prefix: str = "") -> list[Migration]:
    """The migrations shipped in `package`, ordered by number."""
    found = []
    for entry in resources.files(package).iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(
                Migration(prefix + match.group(1), match.group(2), entry.read_text("utf-8"))
            )
    return sorted(found, key=lambda m: m.version)


def for_service(package: str) -> list[Migration]:
    """The shared platform migrations (outbox, inbox) followed by the service's own."""
    return load("shared.migrations", prefix="shared/") + load(package)


async def apply(dsn: str, schema: str, migrations: list[Migration]) -> list[str]:
    """Apply pending migrations to `schema`; return the versions applied (safe to run twice)."""
    if not _SCHEMA.match(schema):
        raise MigrationError(f"invalid schema name {schema!r}")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            return await _apply_locked(conn, schema, migrations)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()


async def _apply_locked(conn: Conn, schema: str, migrations: list[Migration]) -> list[str]:
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    await conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                version    text PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    rows = await conn.fetch(f"SELECT version, checksum FROM {schema}.schema_migrations")
    applied = {r["version"]: r["checksum"] for r in rows}
    done = []
    for migration in migrations:
        known = applied.get(migration.version)
        if known is not None:
            if known != migration.checksum:
                raise MigrationError(
                    f"{schema} migration {migration.version}_{migration.name} changed after "
                    "it was applied; add a new migration instead of editing an old one"
                )
            continue
        async with conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {schema}")
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {schema}.schema_migrations (version, name, checksum) "
                "VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
        log.info("applied migration %s %s_%s", schema, migration.version, migration.name)
        done.append(migration.version)
    return done
