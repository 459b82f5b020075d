"""Samples for the tests and the benchmarks: valid `complaint.submitted` data (each with its
own external id and e-mail address), sent as a channel would, and policies edited for a run."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.settings import Settings

PolicyEdit = Callable[[dict[str, Any]], None]


def submission(channel: str = "web", /, **overrides: Any) -> dict[str, Any]:
    """A valid `complaint.submitted` data document with a unique external id and e-mail."""
    token = uuid.uuid4().hex[:10]
    data: dict[str, Any] = {
        "external_id": f"{channel}-{token}",
        "channel": channel,
        "customer": {
            "id": f"cust-{token}",
            "name": "Sanne de Vries",
            "email": f"sanne.{token}@example.com",
            "phone": "+31 20 555 0101",
            "locale": "nl",
        },
        "description": "Mijn bestelling is al drie keer verkeerd bezorgd.",
        "category": "service",
        "amount_at_stake": {"amount": "89.00", "currency": "EUR"},
    }
    data.update(overrides)
    return data


async def produce_submissions(
    bootstrap: str, submissions: Sequence[dict[str, Any]], *, source: str = "phone/ivr"
) -> None:
    """Send each submission to `complaints.submitted.v1` as a channel would (a CloudEvent keyed
    by channel and external id), and wait for the broker's acknowledgements."""
    from aiokafka import AIOKafkaProducer

    from shared import topics
    from shared.events import EventType, new_event

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sent = []
        for data in submissions:
            event = new_event(type=EventType.SUBMITTED, source=source, data=data)
            key = topics.submission_key(data["channel"], data["external_id"]).encode()
            sent.append(await producer.send(topics.SUBMITTED, event.to_bytes(), key=key))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def activate_policy(
    settings: Settings, folder: Path, edit: PolicyEdit, *, loaded_by: str = "sample"
) -> int:
    """Load the default policy as `edit` changes it (through a file in `folder`, as an operator
    would) and make it active; its version. Replicas follow within two seconds."""
    from services.resolution import admin
    from services.resolution.policy import default_policy

    document = json.loads(default_policy().to_json())
    edit(document)
    path = Path(folder) / f"policy-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(document))
    loaded = await admin.load_policy(settings, path, dry_run=False, loaded_by=loaded_by)
    if loaded.version is None:
        raise RuntimeError(f"the edited policy was not loaded: {loaded}")
    await admin.activate_policy(settings, loaded.version)
    return loaded.version


def clocks_in_seconds(acknowledge: str, resolve: str) -> PolicyEdit:
    """A policy edit: every severity's clocks as given ("2s"), warnings at 50 % and 75 %."""

    def edit(document: dict[str, Any]) -> None:
        for targets in document["clocks"]["severity"].values():
            targets.update(acknowledge_within=acknowledge, resolve_within=resolve)
        document["clocks"]["warn_at"] = ["0.5", "0.75"]

    return edit


def caps_out_of_reach(document: dict[str, Any]) -> None:
    """A policy edit: cumulative caps (per customer, per staff member a day) no run reaches."""
    for caps in (document["caps"]["per_customer"], document["caps"]["per_staff_per_day"]):
        for per_currency in caps.values():
            per_currency.update({c: "100000000" for c in per_currency})
