"""Channel keys as a use case: create, check, list and revoke (used by the CLI)."""

from __future__ import annotations

from typing import Any

import asyncpg

from services.intake import repository
from shared import auth
from shared.settings import Settings


async def _connect(settings: Settings) -> asyncpg.Connection:
    return await asyncpg.connect(
        settings.require_database_url(), server_settings={"search_path": "intake"}
    )


async def create(settings: Settings, channel: str) -> str:
    """A new key for `channel`; only its hash is stored."""
    key = auth.new_channel_key(channel)
    digest = auth.hash_key(key)
    conn = await _connect(settings)
    try:
        await repository.add_channel_key(conn, key_id=digest[:12], channel=channel, key_hash=digest)
    finally:
        await conn.close()
    return key


async def channel_of(settings: Settings, key: str) -> str | None:
    conn = await _connect(settings)
    try:
        return await repository.channel_for_key(conn, auth.hash_key(key))
    finally:
        await conn.close()


async def list_all(settings: Settings) -> list[dict[str, Any]]:
    conn = await _connect(settings)
    try:
        return [dict(r) for r in await repository.list_channel_keys(conn)]
    finally:
        await conn.close()


async def revoke(settings: Settings, key_id: str) -> bool:
    conn = await _connect(settings)
    try:
        return await repository.revoke_channel_key(conn, key_id)
    finally:
        await conn.close()
