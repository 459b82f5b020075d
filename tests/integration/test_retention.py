"""Retention deletes only what is old enough and no longer needed: published outbox rows past
the broker's retention, old inbox rows, notify's old stream buffer; never an unsent event."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from complaints import system
from shared import db, devinfra, migrate, retention
from shared.events import utcnow
from tests.conftest import ADMIN_DSN, shared_schema
from tests.support import eventually

DAY = timedelta(days=1)


async def test_each_service_deletes_its_old_bookkeeping_and_nothing_else(settings):
    name = f"complaints_ret_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(ADMIN_DSN, name)
    now = utcnow()
    try:
        fresh = settings.model_copy(update={"database_url": url})
        await system.migrate_all(fresh)
        for service in system.build_services(fresh, system.NAMES, secret=b"retention-test"):
            pool = await db.create_pool(url, schema=service.name, application="retention-test")
            try:
                async with pool.acquire() as conn:
                    for label, created, sent in [
                        ("old-sent", now - 20 * DAY, now - 20 * DAY),
                        ("old-sent-2", now - 15 * DAY, now - 15 * DAY),
                        ("old-sent-3", now - 15 * DAY, now - 15 * DAY),
                        ("old-unsent", now - 40 * DAY, None),
                        ("recent-sent", now - DAY, now - DAY),
                    ]:
                        await conn.execute(
                            "INSERT INTO outbox (event_id, topic, value, created_at, sent_at) "
                            "VALUES ($1, 't', 'v', $2, $3)",
                            label,
                            created,
                            sent,
                        )
                    for label, at in [("old", now - 31 * DAY), ("recent", now - 29 * DAY)]:
                        await conn.execute(
                            "INSERT INTO inbox (consumer, event_id, handled_at) "
                            "VALUES ('c', $1, $2)",
                            label,
                            at,
                        )
                    if service.name == "notify":
                        for label, at in [("old", now - 8 * DAY), ("recent", now - 6 * DAY)]:
                            await conn.execute(
                                "INSERT INTO stream_events (event_id, type, at, event) "
                                "VALUES ($1, 'complaint.received', $2, '{}'::jsonb)",
                                label,
                                at,
                            )

                # a batch of 2 makes it loop: three old published rows need two rounds
                deleted = await retention.prune(pool, service.retention_rules(), now=now, batch=2)

                async with pool.acquire() as conn:
                    outbox = {
                        r["event_id"] for r in await conn.fetch("SELECT event_id FROM outbox")
                    }
                    inbox = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM inbox")}
                    stream = (
                        {
                            r["event_id"]
                            for r in await conn.fetch("SELECT event_id FROM stream_events")
                        }
                        if service.name == "notify"
                        else set()
                    )
            finally:
                await pool.close()
            assert outbox == {"old-unsent", "recent-sent"}, service.name
            assert inbox == {"recent"}, service.name
            assert deleted["outbox"] == 3 and deleted["inbox"] == 1, (service.name, deleted)
            if service.name == "notify":
                assert stream == {"recent"}
                assert deleted["stream_events"] == 1
            else:
                assert "stream_events" not in deleted
    finally:
        await devinfra.drop_database(ADMIN_DSN, name)


# 5,000 rows of each table retention prunes, none old enough to go: a young system's.
_RECENT = "now() - g * interval '1 s'"
_YOUNG_ROWS = {
    "outbox": f"""INSERT INTO outbox (event_id, topic, value, sent_at)
        SELECT 'e' || g, 't', 'v', {_RECENT} FROM generate_series(1, 5000) AS g""",
    "inbox": f"""INSERT INTO inbox (consumer, event_id, handled_at)
        SELECT 'c', 'e' || g, {_RECENT} FROM generate_series(1, 5000) AS g""",
    "deadletters": f"""INSERT INTO deadletters (id, consumer, topic, partition, "offset", value,
            header_names, header_values, reason_code, reason, at)
        SELECT 'd' || g, 'c', 't', 0, g, 'v', '{{}}', '{{}}', 'unreadable', 'r', {_RECENT}
        FROM generate_series(1, 5000) AS g""",
    "timers": f"""INSERT INTO timers (key, kind, due_at, run_at, fired_at, cancelled_at)
        SELECT 't' || g, 'tick', now(), now(), CASE WHEN g % 2 = 0 THEN {_RECENT} END,
               CASE WHEN g % 2 = 1 THEN {_RECENT} END
        FROM generate_series(1, 5000) AS g""",
    "stream_events": f"""INSERT INTO stream_events (event_id, type, at, event)
        SELECT 'e' || g, 'complaint.received', {_RECENT}, '{{}}'
        FROM generate_series(1, 5000) AS g""",
    "receipt_windows": f"""INSERT INTO receipt_windows (address, window_start, receipts)
        SELECT 'r' || g || '@example.com', {_RECENT}, 1 FROM generate_series(1, 5000) AS g""",
    "notifications": f"""INSERT INTO notifications (notification_id, complaint_id, kind, medium,
            recipient, language, subject, body, status, sent_at)
        SELECT 'n' || g, 'c' || g, 'receipt', 'email', 'r' || g || '@example.com', 'en', 's',
               'b', 'sent', {_RECENT}
        FROM generate_series(1, 5000) AS g""",
    "action_requests": f"""INSERT INTO action_requests (complaint_id, actor, idempotency_key,
            request_sha256, status, body, at)
        SELECT 'c' || g, 'a', 'k' || g, 'h', 200, '{{}}', {_RECENT}
        FROM generate_series(1, 5000) AS g""",
}


async def test_a_pass_with_nothing_old_reads_the_index_not_the_table(settings, database):
    """Each rule of each service finds its old rows by the column's index, even by a generic
    plan made before the table was ever analysed (a young, fast-growing table): a pass with
    nothing to delete reads an index page, not the table. Unordered, it read every row."""
    for service in system.build_services(settings, system.NAMES, secret=b"retention-test"):
        rules = service.retention_rules()
        migrations = migrate.for_service(service.migrations_package)
        async with (
            shared_schema(database, f"ret_{service.name}", migrations) as (_, pool),
            pool.acquire() as conn,
            conn.transaction(),
        ):
            for table in sorted({rule.table for rule in rules}):
                await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
                await conn.execute(_YOUNG_ROWS[table])
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            for rule in rules:
                await conn.execute(f"PREPARE probe AS {rule.sql()}")
                plan = "\n".join(
                    r[0]
                    for r in await conn.fetch(
                        "EXPLAIN EXECUTE probe(now() - interval '30 days', 5000)"
                    )
                )
                await conn.execute("DEALLOCATE probe")
                assert "Index Scan" in plan and "Seq Scan" not in plan, (service.name, plan)


def test_a_rule_names_only_plain_identifiers():
    with pytest.raises(ValueError, match="plain identifier"):
        retention.Rule("outbox; DROP TABLE x", "sent_at", DAY)


async def test_a_running_service_prunes_on_its_own(settings):
    """The wiring: an opened service runs retention every `retention_interval_s`."""
    name = f"complaints_ret_{uuid.uuid4().hex[:8]}"
    url = await devinfra.ensure_database(ADMIN_DSN, name)
    try:
        fresh = settings.model_copy(
            update={"database_url": url, "outbox_retention_hours": 1.0, "retention_interval_s": 0.1}
        )
        await system.migrate_all(fresh)
        (intake,) = system.build_services(fresh, ["intake"], secret=b"retention-test")
        await intake.open()
        try:
            async with intake.pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO outbox (event_id, topic, value, sent_at) "
                    "VALUES ('old', 't', 'v', now() - interval '2 hours'), "
                    "('recent', 't', 'v', now() - interval '30 minutes')"
                )

            async def only_recent_left():
                async with intake.pool.acquire() as conn:
                    rows = await conn.fetch("SELECT event_id FROM outbox")
                return [r["event_id"] for r in rows] == ["recent"]

            await eventually(only_recent_left, timeout_s=10, what="the old row to be deleted")
        finally:
            await intake.stop()
    finally:
        await devinfra.drop_database(ADMIN_DSN, name)
