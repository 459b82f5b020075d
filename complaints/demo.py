"""Simulated web and phone traffic in English, Turkish and Dutch, and a live view of the flow."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from shared import topics
from shared.events import CONTENT_TYPE, EventType, new_event
from shared.kafka import build_producer
from shared.settings import Settings

# (language, name, category, description, amount)
SAMPLES: list[tuple[str, str, str | None, str, str | None]] = [
    (
        "en",
        "Alice Morgan",
        "product",
        "The kettle I bought last week stopped working after two days.",
        "49.90",
    ),
    ("en", "Brian Cole", None, "I waited forty minutes at the counter and nobody helped me.", None),
    (
        "en",
        "Chloe Hart",
        "warranty",
        "You refused my warranty repair although the laptop is 8 months old.",
        "1299.00",
    ),
    (
        "en",
        "Daniel Price",
        "staff_conduct",
        "The shift manager was rude to me in front of other customers.",
        None,
    ),
    (
        "tr",
        "Ayşe Yılmaz",
        "product",
        "Aldığım buzdolabı soğutmuyor, iki haftadır bekliyorum.",
        "18500.00",
    ),
    ("tr", "Mehmet Demir", "stock", "Kampanyadaki ürün hiçbir mağazada stokta yok.", None),
    ("tr", "Zeynep Kaya", None, "Web sitesinde ödeme sayfası sürekli hata veriyor.", None),
    (
        "nl",
        "Sanne de Vries",
        "service",
        "Mijn bestelling is al drie keer verkeerd bezorgd.",
        "89.00",
    ),
    (
        "nl",
        "Pieter Jansen",
        "price_quality",
        "De prijs klopt niet met de kwaliteit van de jas.",
        "149.95",
    ),
    (
        "nl",
        "Emma Bakker",
        "advertising",
        "De folder beloofde 50% korting maar in de winkel niet.",
        None,
    ),
]


def submission(rng: random.Random, channel: str) -> dict[str, Any]:
    """One realistic `complaint.submitted` data document."""
    language, name, category, description, amount = rng.choice(SAMPLES)
    first = name.split()[0].lower().translate(str.maketrans("ışçöüğ", "iscoug"))
    data: dict[str, Any] = {
        "external_id": f"{channel}-{uuid.uuid4().hex[:12]}",
        "channel": channel,
        "customer": {
            "id": f"cust-{rng.randint(1000, 9999)}",
            "name": name,
            "email": f"{first}@example.com",
            "phone": f"+3120{rng.randint(1000000, 9999999)}",
            "locale": language,
        },
        "description": description,
    }
    if category:
        data["category"] = category
    if amount:
        data["amount_at_stake"] = {
            "amount": amount,
            "currency": "TRY" if language == "tr" else "EUR",
        }
    return data


async def traffic(
    settings: Settings,
    *,
    keys: dict[str, str],
    interval_s: float = 2.0,
    seed: int = 7,
    say: Callable[[str], None] = print,
    after: asyncio.Event | None = None,
) -> None:
    """Post web complaints over HTTP and phone complaints over Kafka until cancelled (one every
    `interval_s`: far within a key's default quota), once `after` is set (the printer of the
    stream is listening: the first complaint's events are printed too), or 15 s have passed."""
    if after is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(after.wait(), 15)
    rng = random.Random(seed)
    producer = build_producer(settings, client_id="complaints-demo-phone")
    await producer.start()
    try:
        async with httpx.AsyncClient(base_url=settings.base_url(), timeout=10) as http:
            for n in itertools.count():
                channel = "web" if n % 2 == 0 else "phone"
                data = submission(rng, channel)
                if channel == "web":
                    answer = await http.post(
                        "/v1/complaints",
                        json=data,
                        headers={"Authorization": f"Bearer {keys['web']}"},
                    )
                    accepted = answer.json().get("complaint_id", "")
                    say(f"web   → POST /v1/complaints {answer.status_code} {accepted}")
                    if answer.status_code == 429:  # the key's quota (far above this pace)
                        await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
                else:
                    event = new_event(type=EventType.SUBMITTED, source="phone/ivr-demo", data=data)
                    await producer.send_and_wait(
                        topics.SUBMITTED,
                        event.to_bytes(),
                        key=topics.submission_key(channel, data["external_id"]).encode(),
                        headers=[("content-type", CONTENT_TYPE.encode())],
                    )
                    say(f"phone → {topics.SUBMITTED} {data['external_id']}")
                await asyncio.sleep(interval_s)
    finally:
        await producer.stop()


async def follow(
    settings: Settings,
    *,
    token: str,
    say: Callable[[str], None] = print,
    listening: asyncio.Event | None = None,
) -> None:
    """Print each event of the live stream on one line until cancelled; `listening` is set
    once the stream is open. Until the services have learnt the token's member from the
    directory (a second or so after start) the stream answers 401: it tries again, and resumes
    where it left off if the stream ends."""
    headers = {"Authorization": f"Bearer {token}"}
    last_id = ""
    async with httpx.AsyncClient(base_url=settings.base_url(), timeout=None) as http:  # noqa: S113
        while True:
            resume = {"Last-Event-ID": last_id} if last_id else {}
            async with http.stream("GET", "/v1/stream", headers={**headers, **resume}) as response:
                if response.status_code != 200:
                    await asyncio.sleep(0.5)
                    continue
                if listening is not None:
                    listening.set()
                kind = ""
                async for line in response.aiter_lines():
                    if line.startswith("id:"):
                        last_id = line.split(":", 1)[1].strip()
                    elif line.startswith("event:"):
                        kind = line.split(":", 1)[1].strip()
                    elif line.startswith("data:"):
                        event = json.loads(line.split(":", 1)[1])
                        data = event.get("data", {})
                        extra = " ".join(
                            f"{k}={data[k]}"
                            for k in ("team", "assignee", "severity", "kind")
                            if k in data
                        )
                        say(f"  event {kind:<24} {event.get('subject', '')[:8]} {extra}")
            await asyncio.sleep(0.5)


async def staff(settings: Settings, *, token: str, say: Callable[[str], None] = print) -> None:
    """A simulated manager working the queue until cancelled: acknowledges each new case, and
    resolves it with an apology or a small refund (cases naming staff wait for them to be
    heard, or for their window to close)."""
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(7)
    async with httpx.AsyncClient(base_url=settings.base_url(), headers=headers) as http:
        while True:
            await asyncio.sleep(2.0)
            answer = await http.get("/v1/complaints", params={"limit": 20})
            if answer.status_code != 200:
                continue  # the directory may not know the member yet
            for case in answer.json()["items"]:
                await _work(http, case, rng, say)


async def _work(
    http: httpx.AsyncClient, case: dict[str, Any], rng: random.Random, say: Callable[[str], None]
) -> None:
    """The next step on one case, as a busy but fair manager takes it."""
    path = f"/v1/complaints/{case['complaint_id']}/actions"
    short = case["complaint_id"][:8]
    if case["status"] == "routed":
        if (await _act(http, path, {"action": "acknowledge"})).status_code == 200:
            say(f"  staff  acknowledged {short}")
    elif case["status"] == "acknowledged":
        remedy: dict[str, Any] = (
            {"type": "apology_only"}
            if rng.random() < 0.5
            else {"type": "goodwill_credit", "amount": {"amount": "15.00", "currency": "EUR"}}
        )
        await _act(http, path, {"action": "propose_remedy", "remedy": remedy})
        done = await _act(
            http, path, {"action": "resolve", "outcome": "upheld", "message": "We are sorry."}
        )
        if done.status_code == 200:
            say(f"  staff  resolved {short} with {remedy['type']}")


async def _act(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    """An action, sent again after `Retry-After` when the member's action limit was spent (a
    pass over a long queue, say 20 cases at 2 actions each, nears the default burst of 50)."""
    answer = await http.post(path, json=body)
    if answer.status_code == 429:
        await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
        answer = await http.post(path, json=body)
    return answer
