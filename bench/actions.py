"""Staff actions over HTTP: actions/s flat out, and latency per action at a steady rate.

Runs the whole system in one `complaints up` process (`--topology split`: each service in a
process of its own, as deployed: `complaints serve intake`, `… resolution`, `… notify`), with the
broker embedded unless COMPLAINTS_KAFKA_BOOTSTRAP is set and a fresh database on the local
PostgreSQL; loads a policy whose daily caps no benchmark reaches (the default's would send most
proposals for approval), submits the cases over HTTP and waits until resolution has opened each.
Then every case goes acknowledge → propose_remedy (half within the agent's 50 EUR, half at 120 EUR:
above it, waiting for a senior agent) → approve (one of three senior agents, for those) → resolve,
first flat out with C connections, then paced at R actions a second. Each case's assignee (intake
spread the cases over five agents) acknowledges, proposes and resolves it, as a team would. Each
action's latency is from its request to its answer.

    python -m bench.actions --cases 1000 --paced-cases 500 --rate 250
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import (
    Bench,
    add_overrides,
    cpu_per_unit,
    cpu_reading,
    percentile,
    running_system,
    settled,
)
from bench.httpclient import Connection
from bench.intake import http_phase
from complaints.samples import activate_policy, caps_out_of_reach
from services.intake import admin as intake_admin
from shared import auth

AGENTS = [f"bench-{n}" for n in range(5)]  # the team `bench.common.prepare` adds
SENIORS = [f"bench-senior-{n}" for n in range(3)]


TOPOLOGIES = {
    # as deployed (deploy/README.md): each service in a process of its own
    "split": (("serve", "intake"), [("serve", "resolution"), ("serve", "notify")]),
    # the whole system in one process, as `complaints up` runs it on a laptop
    "up": (("up",), []),
}


async def main(
    cases: int,
    paced_cases: int,
    rate: float,
    concurrency: int,
    topology: str,
    overrides: dict[str, str],
) -> None:
    command, beside = TOPOLOGIES[topology]
    with tempfile.TemporaryDirectory() as tmp:
        async with running_system(Path(tmp), *command, beside=beside, overrides=overrides) as bench:
            # actions go to resolution: its own process, or the one `up` runs everything in
            actions_url = (bench.beside_urls or bench.base_urls)[0]
            tokens = await _staff_and_policy(bench, Path(tmp))
            opened = await _opened_cases(bench, cases + paced_cases)
            burst_ids, paced_ids = opened[:cases], opened[cases:]
            where = " ".join(command) + "".join(f", {' '.join(b)}" for b in beside)
            print(f"`complaints {where}`: {cases} cases flat out ({concurrency} connections),")
            print(f"then {paced_cases} cases paced at {rate:.0f} actions/s", flush=True)
            dsn = bench.settings.require_database_url()
            await settled(dsn)
            before = await cpu_reading(dsn)
            rate_all, burst = await _drive(actions_url, burst_ids, tokens, concurrency, None)
            await settled(dsn)
            spent = cpu_per_unit(
                before, await cpu_reading(dsn), sum(len(v) for v in burst.values())
            )
            _report(f"flat out: {rate_all:,.0f} actions/s", burst)
            print(f"  {spent}")
            if paced_ids:
                paced_rate, paced = await _drive(actions_url, paced_ids, tokens, concurrency, rate)
                _report(f"paced: {paced_rate:,.0f} actions/s", paced)
    print("targets: >= 500 actions/s flat out; p99 < 50 ms at 250 actions/s")


async def _staff_and_policy(bench: Bench, tmp: Path) -> dict[str, str]:
    """A senior agent beside the bench's agents, a policy without reachable caps; tokens."""
    settings = bench.settings
    for senior in SENIORS:
        await intake_admin.add_staff(
            settings,
            staff_id=senior,
            name="Bench Senior",
            team="customer-care",
            role="senior_agent",
            languages=["en"],
            capacity=0,
        )
    await activate_policy(settings, tmp, caps_out_of_reach, loaded_by="bench")
    secret = auth.resolve_secret(settings, tmp)
    tokens = {
        who: await intake_admin.token_for(settings, secret, who, ttl_s=3600)
        for who in (*AGENTS, *SENIORS)
    }
    await _until_learnt(settings.require_database_url(), [*AGENTS, *SENIORS])
    await asyncio.sleep(2.5)  # replicas re-read the active policy at most every 2 s
    return tokens


async def _until_learnt(dsn: str, staff: list[str], timeout_s: float = 60) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while await conn.fetchval(
            "SELECT count(*) FROM resolution.staff_directory WHERE staff_id = ANY($1)", staff
        ) < len(staff):
            if time.monotonic() > deadline:
                raise TimeoutError("resolution never learnt the bench's staff")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def _opened_cases(bench: Bench, count: int) -> list[tuple[str, str]]:
    """Submit `count` complaints over HTTP; their ids and assignees once resolution opened
    every case."""
    await http_phase(bench, count, 32, None)
    conn = await asyncpg.connect(bench.settings.require_database_url())
    try:
        deadline = time.monotonic() + 300
        while True:
            ids = await conn.fetch(
                "SELECT complaint_id, assignee FROM resolution.cases"
                " WHERE version > 0 AND status = 'routed'"
            )
            if len(ids) >= count or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        return [(r["complaint_id"], r["assignee"]) for r in ids][:count]
    finally:
        await conn.close()


def _steps(n: int, agent: str) -> list[tuple[str, dict[str, Any]]]:
    """The actions for case number `n`, assigned to `agent`: half the proposals above the
    agent's authority, approved by one of the senior agents."""
    amount = "120.00" if n % 2 else "40.00"
    steps: list[tuple[str, dict[str, Any]]] = [
        (agent, {"action": "acknowledge"}),
        (
            agent,
            {
                "action": "propose_remedy",
                "remedy": {"type": "refund", "amount": {"amount": amount, "currency": "EUR"}},
            },
        ),
    ]
    if n % 2:
        steps.append((SENIORS[n % len(SENIORS)], {"action": "approve", "note": "within policy"}))
    steps.append((agent, {"action": "resolve", "outcome": "upheld", "message": "Refunded."}))
    return steps


async def _drive(
    url: str,
    opened: list[tuple[str, str]],
    tokens: dict[str, str],
    concurrency: int,
    rate: float | None,
) -> tuple[float, dict[str, list[float]]]:
    """Every case through its steps (each case's in order); actions/s and latencies (ms) by
    action."""
    latencies: dict[str, list[float]] = defaultdict(list)
    queue = list(enumerate(opened))
    slots = itertools.count()
    total = 0
    t0 = time.perf_counter()

    async def client() -> None:
        nonlocal total
        conn = Connection(url)
        try:
            while queue:
                n, (complaint_id, assignee) = queue.pop()
                for who, body in _steps(n, assignee):
                    if rate:
                        delay = t0 + next(slots) / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    began = time.perf_counter()
                    status, answer = await conn.post_json(
                        f"/v1/complaints/{complaint_id}/actions",
                        body,
                        {"Authorization": f"Bearer {tokens[who]}"},
                    )
                    if status != 200:
                        raise RuntimeError(f"{body['action']} answered {status}: {answer}")
                    latencies[body["action"]].append((time.perf_counter() - began) * 1000)
                    total += 1
        finally:
            await conn.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0), latencies


def _report(title: str, latencies: dict[str, list[float]]) -> None:
    print(title)
    every = [ms for values in latencies.values() for ms in values]
    for action, values in [*latencies.items(), ("all", every)]:
        print(
            f"  {action:<15} n={len(values):<5} p50 {statistics.median(values):6.1f} ms   "
            f"p99 {percentile(values, 0.99):6.1f} ms   max {max(values):6.1f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--paced-cases", type=int, default=500)
    parser.add_argument("--rate", type=float, default=250.0, help="actions a second, paced")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--topology",
        choices=sorted(TOPOLOGIES),
        default="up",
        help="up: all in one `complaints up` process (default: on a machine of two cores it "
        "costs least); split: each service in its own process, as deployed",
    )
    add_overrides(parser)
    args = parser.parse_args()
    asyncio.run(
        main(
            args.cases,
            args.paced_cases,
            args.rate,
            args.concurrency,
            args.topology,
            dict(args.overrides),
        )
    )
