"""The policy store keeps every version with who loaded it and one active; an empty store gets
the default once however many replicas start together; `policy show --json` is exactly what
`policy load` accepts; each replica's cache follows an activation within its ttl."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.resolution import admin, policies
from services.resolution.policies import PolicyCache
from services.resolution.policy import Policy, default_policy
from shared import db, migrate
from shared.settings import Settings
from tests.conftest import shared_schema
from tests.support import complaints_cli_text, eventually


@contextlib.asynccontextmanager
async def _store(database: str) -> AsyncIterator[db.Pool]:
    """A policy store of its own: resolution's tables in a fresh schema, dropped afterwards."""
    resolution = migrate.for_service("services.resolution.migrations")
    async with shared_schema(database, "policies", resolution) as (_, pool):
        yield pool


def _changed(policy: Policy, refund_eur: str) -> Policy:
    doc: dict[str, Any] = json.loads(policy.to_json())
    doc["limits"]["agent"]["refund"]["EUR"] = refund_eur
    return Policy.model_validate(doc)


async def test_the_default_is_seeded_once_when_replicas_start_together(database: str) -> None:
    async with _store(database) as pool:

        async def replica() -> Policy:
            async with pool.acquire() as conn, conn.transaction():
                return await policies.active(conn)

        seen = await asyncio.gather(*(replica() for _ in range(8)))
        async with pool.acquire() as conn:
            kept = await policies.versions(conn)
    assert {p.version for p in seen} == {1}
    assert all(p == default_policy().model_copy(update={"version": 1}) for p in seen)
    assert [(v["version"], v["loaded_by"], v["active"]) for v in kept] == [(1, "default", True)]


async def test_a_loaded_policy_is_a_new_inactive_version_until_activated(database: str) -> None:
    async with _store(database) as pool, pool.acquire() as conn:
        loaded = await policies.load(conn, _changed(default_policy(), "65"), loaded_by="ops")
        assert loaded.version == 2
        assert [line for line in loaded.diff if "limits.agent.refund.EUR" in line] == loaded.diff
        assert len(loaded.diff) == 1
        assert (await policies.active(conn)).version == 1

        made = await policies.activate(conn, 2)
        assert made.version == 2 and made.limits["agent"].refund["EUR"] == 65
        assert (await policies.active(conn)) == made
        await policies.activate(conn, 1)  # an earlier version again
        assert (await policies.active(conn)).version == 1
        kept = await policies.versions(conn)
        assert [(v["version"], v["loaded_by"], v["active"]) for v in kept] == [
            (1, "default", True),
            (2, "ops", False),
        ]
        assert await policies.get(conn, 2) == made
        with pytest.raises(policies.UnknownVersion, match="no policy version 99"):
            await policies.activate(conn, 99)


async def test_a_dry_run_stores_nothing(database: str) -> None:
    async with _store(database) as pool, pool.acquire() as conn:
        loaded = await policies.load(
            conn, _changed(default_policy(), "70"), loaded_by="ops", dry_run=True
        )
        assert loaded.version is None and len(loaded.diff) == 1
        assert [v["version"] for v in await policies.versions(conn)] == [1]


async def test_the_cache_picks_up_an_activation_within_its_ttl(database: str) -> None:
    now = [0.0]
    async with _store(database) as pool:
        cache = policies.PolicyCache(ttl_s=2.0, clock=lambda: now[0])
        assert (await _current(cache, pool)).version == 1
        async with pool.acquire() as conn:
            loaded = await policies.load(conn, _changed(default_policy(), "80"), loaded_by="ops")
            assert loaded.version is not None
            await policies.activate(conn, loaded.version)
        now[0] = 1.9
        assert (await _current(cache, pool)).version == 1  # still within its ttl
        now[0] = 2.0
        assert (await _current(cache, pool)).version == loaded.version

        real = policies.PolicyCache()  # the real clock, the default ttl of 2 s
        assert (await _current(real, pool)).version == loaded.version
        async with pool.acquire() as conn:
            await policies.activate(conn, 1)

        async def followed() -> bool:
            return (await _current(real, pool)).version == 1

        await eventually(followed, timeout_s=2.5, interval_s=0.1, what="the cache to follow")


# --- through the CLI, on the run's database ---------------------------------------------------


async def test_a_bad_file_names_each_bad_field(settings: Settings, tmp_path: Path) -> None:
    doc: dict[str, Any] = json.loads(default_policy().to_json())
    doc["limits"]["agent"]["refund"]["EUR"] = "-5"
    doc["clocks"]["approval_within"] = "soon"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(admin.AdminError) as refused:
        admin.read_policy(bad)
    assert "limits.agent.refund.EUR" in str(refused.value)

    code, out, err = await complaints_cli_text(settings, "policy", "load", str(bad), "--dry-run")
    assert (code, out) == (1, "")
    assert "limits.agent.refund.EUR" in err and "clocks.approval_within" in err

    code, _, err = await complaints_cli_text(settings, "policy", "load", str(tmp_path / "none"))
    assert code == 1 and "cannot read" in err


async def test_show_json_loads_back_identically(settings: Settings, tmp_path: Path) -> None:
    code, shown, _ = await complaints_cli_text(settings, "policy", "show", "--json")
    assert code == 0
    active = Policy.from_json(shown)
    path = tmp_path / "policy.json"
    path.write_text(shown)

    code, out, err = await complaints_cli_text(settings, "policy", "load", str(path), "--by", "qa")
    assert code == 0, err
    version = int(out)  # the number alone on stdout
    assert "no changes" in err and version > active.version

    code, again, _ = await complaints_cli_text(
        settings, "policy", "show", "--json", "--version", str(version)
    )
    assert again == active.model_copy(update={"version": version}).to_json()

    code, _, err = await complaints_cli_text(settings, "policy", "activate", str(version))
    assert code == 0, err
    code, summary, _ = await complaints_cli_text(settings, "policy", "show")
    assert f"policy version {version} (active)" in summary and "qa  (active)" in summary

    changed = tmp_path / "changed.json"
    changed.write_text(_changed(active, "51").to_json())
    code, diff, _ = await complaints_cli_text(settings, "policy", "load", str(changed), "--dry-run")
    assert code == 0 and "limits.agent.refund.EUR" in diff
    code, out, _ = await complaints_cli_text(settings, "policy", "show", "--json")
    assert Policy.from_json(out).version == version  # the dry run stored nothing

    code, _, err = await complaints_cli_text(settings, "policy", "activate", "9999")
    assert code == 1 and "no policy version 9999" in err


async def _current(cache: PolicyCache, pool: db.Pool) -> Policy:
    async with pool.acquire() as conn:
        return await cache.current(conn)
