"""A channel key's submission limit: 429 with Retry-After past it, per key, across replicas."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from services.intake import admin
from shared import auth, devinfra, quota, quotas
from tests.conftest import Running
from tests.support import complaints_cli_text, service_process_env, submission


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_past_the_burst_a_key_gets_429_with_retry_after_then_recovers(running: Running):
    key = await running.channel_key("web", rate_per_s=0.5, burst=5)
    other = await running.channel_key("web", rate_per_s=0.5, burst=5)

    # sent together: the limit is checked before the (slower) writes, so all six are counted
    # within moments, well before the bucket earns a token back (2 s)
    answers = await asyncio.gather(
        *(
            running.http.post("/v1/complaints", json=submission("web"), headers=_auth(key))
            for _ in range(6)
        )
    )

    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 5 + [429], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["status"] == 429
    assert problem["title"] == "Too many requests"
    assert problem["instance"] == "/v1/complaints"
    assert "0.5 complaints a second and 5 at once" in problem["detail"]
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 2  # (1 token - what is left) / 0.5 a second, rounded up

    # the limit is checked before the body is read: a broken body is refused all the same
    broken = await running.http.post(
        "/v1/complaints",
        content=b"{nope",
        headers={**_auth(key), "content-type": "application/json"},
    )
    assert broken.status_code == 429

    # another key's bucket is its own
    elsewhere = await running.http.post(
        "/v1/complaints", json=submission("web"), headers=_auth(other)
    )
    assert elsewhere.status_code == 202

    await asyncio.sleep(retry_after)
    again = await running.http.post("/v1/complaints", json=submission("web"), headers=_auth(key))
    assert again.status_code == 202, again.text


async def test_a_key_without_its_own_limit_has_the_default(running: Running):
    key = await admin.create_key(running.settings, "web")
    rows = await running.sql(
        "SELECT rate_per_s, burst FROM intake.channel_keys WHERE key_id = $1",
        auth.hash_key(key)[:12],
    )
    assert (rows[0]["rate_per_s"], rows[0]["burst"]) == (None, None)
    answer = await running.http.post("/v1/complaints", json=submission("web"), headers=_auth(key))
    assert answer.status_code == 202
    bucket = await running.sql(
        "SELECT tokens, granted FROM intake.quota_buckets WHERE bucket_id = $1",
        auth.hash_key(key)[:12],
    )
    # the default limit (50/s, burst 200): a replica draws 5 tokens at once
    assert bucket[0]["granted"] == 5
    assert bucket[0]["tokens"] == 195.0  # a new bucket starts full


async def test_the_bucket_statement_does_what_the_arithmetic_says(running: Running):
    """The SQL of `quotas.take_tokens` pinned to `quota.draw` over a sequence of draws."""
    conn = await asyncpg.connect(
        running.settings.require_database_url(), server_settings={"search_path": "intake"}
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    limit = quota.Limit(rate_per_s=3.0, burst=7)
    steps = [(0.0, 2), (0.0, 4), (0.0, 4), (0.25, 1), (0.5, 3), (0.4, 3), (10.0, 5), (10.2, 9)]
    bucket: quota.Bucket | None = None
    try:
        for at_s, want in steps:
            granted, left = await quotas.take_tokens(
                conn,
                "contract-test",
                rate_per_s=limit.rate_per_s,
                burst=limit.burst,
                want=want,
                now=start + timedelta(seconds=at_s),
            )
            expected, bucket = quota.draw(bucket, at_s, limit, want)
            assert granted == expected, (at_s, want)
            assert abs(left - bucket.tokens) < 1e-9, (at_s, want)
    finally:
        await conn.execute("DELETE FROM quota_buckets WHERE bucket_id = 'contract-test'")
        await conn.close()


async def test_the_openapi_document_names_the_429(running: Running):
    doc = (await running.http.get("/openapi.json")).json()
    answer = doc["paths"]["/v1/complaints"]["post"]["responses"]["429"]
    assert "Retry-After" in answer["headers"]


async def _cli(running: Running, *args: str) -> tuple[int, str, str]:
    return await complaints_cli_text(running.settings, *args)


async def test_keys_create_takes_a_limit_and_keys_list_shows_it(running: Running):
    code, out, err = await _cli(
        running, "keys", "create", "--channel", "web", "--rate", "500", "--burst", "2000"
    )
    assert code == 0, err
    key = out.strip()
    assert out == key + "\n" and key.startswith("ck_web_")  # the key alone on stdout

    code, out, err = await _cli(running, "keys", "list", "--json")
    assert code == 0, err
    rows = {r["key_id"]: r for r in json.loads(out)}
    mine = rows[auth.hash_key(key)[:12]]
    assert (mine["rate_per_s"], mine["burst"]) == (500.0, 2000)
    assert not mine["rate_is_default"] and not mine["burst_is_default"]

    code, out, err = await _cli(running, "keys", "list")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith(auth.hash_key(key)[:12]))
    assert line.endswith("500/s, burst 2000")

    code, out, err = await _cli(running, "keys", "create", "--channel", "web", "--rate", "0")
    assert code == 1
    assert out == ""
    assert "rate must be" in err


async def _serve_intake(running: Running, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "complaints",
        "serve",
        "intake",
        env=service_process_env(running.settings, COMPLAINTS_HTTP_PORT=str(port)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = []
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), 90)
        seen.append(line.decode())
        assert line, "complaints serve intake ended early:\n" + "".join(seen)
        if b"serving on" in line:
            return proc


async def test_the_limit_holds_across_replicas(running: Running):
    # a slow refill, so that even on a busy machine the demand outruns it on both replicas
    rate, burst = 5.0, 20
    limit = quota.Limit(rate, burst)
    key = await running.channel_key("web", rate_per_s=rate, burst=burst)
    warm_up = await running.channel_key("web")
    port = devinfra.free_port()
    replica = await _serve_intake(running, port)
    try:
        statuses: dict[str, list[int]] = {"first": [], "second": []}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as second:
            clients = {"first": running.http, "second": second}
            for client in clients.values():
                answer = await client.post(
                    "/v1/complaints", json=submission("web"), headers=_auth(warm_up)
                )
                assert answer.status_code == 202, answer.text
            started = time.monotonic()
            deadline = started + 3.0

            async def worker(n: int) -> None:
                name = "first" if n % 2 == 0 else "second"
                while time.monotonic() < deadline:
                    answer = await clients[name].post(
                        "/v1/complaints", json=submission("web"), headers=_auth(key)
                    )
                    assert answer.status_code in (202, 429), answer.text
                    statuses[name].append(answer.status_code)
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(worker(n) for n in range(12)))
            elapsed = time.monotonic() - started

        accepted = {name: s.count(202) for name, s in statuses.items()}
        total = sum(accepted.values())
        # the shared bucket grants at most the burst plus the refill over the window (a
        # replica-local limit would let each replica take that much)
        assert total <= burst + rate * elapsed + 1, (accepted, elapsed)
        # ... and no less than the burst, but for tokens a replica may still hold unspent
        assert total >= burst - 2 * quota.chunk(limit), (accepted, elapsed)
        for name, seen in statuses.items():
            assert accepted[name] > 0 and 429 in seen, (name, accepted)
    finally:
        replica.terminate()
        await asyncio.wait_for(replica.wait(), 40)
