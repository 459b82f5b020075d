"""Migrations are safe to run twice, and from two processes at once, with the same result."""

from __future__ import annotations

import asyncio
import sys
import uuid

import asyncpg

from complaints import system
from shared import devinfra
from shared.settings import Settings
from tests.conftest import ADMIN_DSN
from tests.support import service_process_env

SCHEMA_QUERY = """
    SELECT table_schema, table_name, column_name, data_type, is_nullable
    FROM information_schema.columns
    WHERE table_schema IN ('intake', 'resolution', 'notify')
    ORDER BY 1, 2, 3"""


async def _schema(url: str) -> list[tuple]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(SCHEMA_QUERY)]
    finally:
        await conn.close()


async def test_migrations_twice_in_a_row_change_nothing_the_second_time():
    name = f"complaints_mig_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(ADMIN_DSN, name)
    try:
        settings = Settings(_env_file=None, database_url=url)
        first = await system.migrate_all(settings)
        schema = await _schema(url)
        second = await system.migrate_all(settings)
        assert all(first.values())
        assert second == {name: [] for name in system.NAMES}
        assert await _schema(url) == schema
    finally:
        await devinfra.drop_database(ADMIN_DSN, name)


async def test_two_processes_migrating_at_once_agree(settings):
    name = f"complaints_mig_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(ADMIN_DSN, name)
    try:
        env = service_process_env(settings, COMPLAINTS_DATABASE_URL=url)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "complaints",
                "migrate",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        results = [await p.communicate() for p in procs]
        assert [p.returncode for p in procs] == [0, 0], results
        # exactly one of them applied each migration; the other found it done
        outputs = b"".join(err for _, err in results).decode()
        assert outputs.count("up to date") == len(system.NAMES)
        reference = f"complaints_ref_{uuid.uuid4().hex[:8]}"
        ref_url = await devinfra.ensure_database(ADMIN_DSN, reference)
        try:
            await system.migrate_all(Settings(_env_file=None, database_url=ref_url))
            assert await _schema(url) == await _schema(ref_url)
        finally:
            await devinfra.drop_database(ADMIN_DSN, reference)
    finally:
        await devinfra.drop_database(ADMIN_DSN, name)
