"""A flooded address gets a few receipts, then one digest listing the rest; others are not
affected."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from complaints import system
from shared import topics
from shared.settings import Settings
from tests.conftest import SECRET, isolated_parts
from tests.support import eventually, produce_submissions, read_topic, submission

LIMIT = 3
INTERVAL_S = 8.0


@pytest.fixture
async def flood_settings(smtp) -> AsyncIterator[Settings]:
    """A broker and database of their own, and a short digest interval."""
    async with isolated_parts(
        smtp,
        ["intake", "notify"],
        receipt_limit_per_address=LIMIT,
        receipt_digest_interval_s=INTERVAL_S,
    ) as settings:
        yield settings


def _mails_to(smtp, address: str):
    return [m for m in smtp.snapshot() if (m["To"] or "").strip().lower() == address.lower()]


async def test_a_flooded_address_gets_limit_receipts_then_one_digest(flood_settings, smtp):
    victim = f"Flood.{uuid.uuid4().hex[:8]}@Example.com"
    spellings = [victim, victim.lower(), victim.upper(), f" {victim} "]
    bystander = f"bystander.{uuid.uuid4().hex[:8]}@example.com"
    flood = [submission("phone") for _ in range(8)]
    for n, data in enumerate(flood):
        data["customer"].update(email=spellings[n % len(spellings)], locale="tr")
    others = [submission("phone") for _ in range(2)]
    for data in others:
        data["customer"]["email"] = bystander

    services = system.build_services(flood_settings, ["intake", "notify"], secret=SECRET)
    for service in services:
        await service.start()
    try:
        await produce_submissions(flood_settings.kafka_bootstrap, [*flood, *others])

        receipts = await eventually(
            lambda: len(_mails_to(smtp, victim)) >= LIMIT and _mails_to(smtp, victim),
            timeout_s=60,
            what="the victim's receipts",
        )
        first_receipt = time.monotonic()
        await eventually(lambda: len(_mails_to(smtp, bystander)) == 2, what="the bystander's")

        async def held() -> list[asyncpg.Record] | None:
            rows = await _sql(
                flood_settings,
                "SELECT complaint_id, status, digest_id FROM notify.notifications "
                "WHERE kind = 'receipt' AND lower(trim(recipient)) = $1",
                victim.lower(),
            )
            # a receipt's mail may arrive a moment before its mailer records it as sent
            settled = all(r["status"] in ("held", "sent") for r in rows)
            return rows if len(rows) == len(flood) and settled else None

        rows = await eventually(held, timeout_s=30, what="every flood complaint planned")
        # the rest are held for the interval's digest: nothing more yet
        assert sorted(r["status"] for r in rows) == ["held"] * 5 + ["sent"] * 3
        assert len(_mails_to(smtp, victim)) == LIMIT

        digests = await eventually(
            lambda: [m for m in _mails_to(smtp, victim) if m["X-Digest-Id"]],
            timeout_s=INTERVAL_S + 30,
            what="the digest",
        )
        assert time.monotonic() - first_receipt > INTERVAL_S - 2  # not before the interval ends
        await asyncio.sleep(2)  # a second digest or receipt would show by now
        mails = _mails_to(smtp, victim)
        assert len(mails) == LIMIT + 1
        (digest,) = digests
        digest_id = digest["X-Digest-Id"]
        assert digest["Message-ID"] == f"<{digest_id}@complaints>"
        assert digest["Subject"] == "Adresinizden 5 şikâyet daha aldık"  # Turkish, like them

        receipted = {m["X-Complaint-Id"] for m in receipts[:LIMIT]}
        listed = {line[2:] for line in digest.get_content().splitlines() if line.startswith("- ")}
        everyone = {r["complaint_id"] for r in rows}
        assert len(receipted) == LIMIT and len(listed) == 5
        assert receipted | listed == everyone and not receipted & listed
        bystanders = {m["X-Complaint-Id"] for m in _mails_to(smtp, bystander)}
        assert not bystanders & listed and len(bystanders) == 2
        assert not any(m["X-Digest-Id"] for m in _mails_to(smtp, bystander))

        async def sent_events() -> dict[str, dict] | None:
            found = {}
            for record in await read_topic(flood_settings.kafka_bootstrap, topics.EVENTS):
                event = json.loads(record.value)
                if event["type"] == "notification.sent" and event["subject"] in everyone:
                    assert event["subject"] not in found, "two notification.sent for one"
                    found[event["subject"]] = event["data"]
            return found if len(found) == len(everyone) else None

        sent = await eventually(sent_events, timeout_s=30, what="notification.sent for all")
        assert {c for c, d in sent.items() if d.get("digest_id") == digest_id} == listed
        assert all("digest_id" not in sent[c] for c in receipted)
        assert {d["kind"] for d in sent.values()} == {"receipt"}
    finally:
        for service in reversed(services):
            await service.stop()


async def _sql(settings: Settings, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()
