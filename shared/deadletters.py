"""Dead letters: a refused record is kept whole in the service's table and announced, capped,
on `complaints.deadletter.v1`, so nothing a producer sent is lost and no letter is too large."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared import outbox, topics
from shared.db import Conn
from shared.events import EventType, new_event, utcnow

if TYPE_CHECKING:
    from shared.kafka import Record

# At most this much of a header value or a key goes into a letter; at most this many headers.
KEY_PREVIEW = 1024
HEADER_PREVIEW = 1024
MAX_HEADERS = 64
DEFAULT_PREVIEW = 64 * 1024


@dataclass(frozen=True)
class Letter:
    """Why `original` was refused, by which consumer; `also` goes out with it (a
    `complaint.rejected` telling the sender, say)."""

    original: Record
    code: str
    reason: str
    consumer: str
    also: tuple[outbox.Message, ...] = ()
    source: str = "complaints"  # the refusing service, as its own events name it


# Headers that carry credentials (a staff command's bearer token): never kept or announced;
# a dead letter keeps a digest that tells two tokens apart without revealing either.
SECRET_HEADERS = frozenset({"authorization"})


def redacted(record: Record) -> Record:
    """`record` with its credential headers replaced by a digest."""
    if not any(name.lower() in SECRET_HEADERS for name, _ in record.headers):
        return record
    headers = tuple(
        (name, b"redacted sha256:" + hashlib.sha256(value or b"").hexdigest()[:16].encode())
        if name.lower() in SECRET_HEADERS
        else (name, value)
        for name, value in record.headers
    )
    return replace(record, headers=headers)


def _preview(data: bytes | None, limit: int) -> dict[str, Any]:
    """The first `limit` bytes of `data` (base64) with its full length and sha256."""
    data = data or b""
    return {
        "base64": base64.b64encode(data[:limit]).decode(),
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "truncated": len(data) > limit,
    }


def event_message(letter: Letter, *, at: datetime, preview_bytes: int) -> outbox.Message:
    """The dead-letter CloudEvent: the original's first bytes, its length and sha256, where it
    came from, the reason in words, and the time."""
    record = redacted(letter.original)
    value = _preview(record.value, preview_bytes)
    key = _preview(record.key, KEY_PREVIEW) if record.key is not None else None
    headers = record.headers[:MAX_HEADERS]
    data = {
        "reason_code": letter.code,
        "reason": letter.reason,
        "consumer": letter.consumer,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key_base64": key["base64"] if key else None,
        "key_length": key["length"] if key else None,
        "value_base64": value["base64"],
        "value_length": value["length"],
        "value_sha256": value["sha256"],
        "value_truncated": value["truncated"],
        "headers": {
            name: base64.b64encode((v or b"")[:HEADER_PREVIEW]).decode() for name, v in headers
        },
        "headers_truncated": len(record.headers) > MAX_HEADERS
        or any(len(v or b"") > HEADER_PREVIEW for _, v in headers),
        "at": at.isoformat(),
    }
    event = new_event(type=EventType.DEADLETTERED, source=letter.source, data=data, time=at)
    key_text = record.key[:KEY_PREVIEW].decode("utf-8", "replace") if record.key else None
    return outbox.Message(topics.DEADLETTER, key_text, event)


async def store(
    conn: Conn,
    letters: Sequence[Letter],
    *,
    preview_bytes: int = DEFAULT_PREVIEW,
    trace: dict[str, str] | None = None,
) -> None:
    """Keep each refused original whole and queue its capped letter (and what goes with it),
    in the caller's transaction."""
    if not letters:
        return
    now = utcnow()
    messages: list[outbox.Message] = []
    ids: list[str] = []
    for letter in letters:
        message = event_message(letter, at=now, preview_bytes=preview_bytes)
        if trace is not None:
            message = outbox.Message(message.topic, message.key, message.event, trace)
        ids.append(message.event.id)
        messages += [message, *letter.also]
    # one row per letter (they are rare); header arrays vary in length per row
    await conn.executemany(
        """INSERT INTO deadletters (id, consumer, topic, partition, "offset", key, value,
               header_names, header_values, reason_code, reason, at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
        [
            (
                letter_id,
                x.consumer,
                x.original.topic,
                x.original.partition,
                x.original.offset,
                x.original.key,
                x.original.value,
                [n.encode("utf-8", "surrogateescape") for n, _ in redacted(x.original).headers],
                [v for _, v in redacted(x.original).headers],
                x.code,
                x.reason.replace("\x00", ""),
                now,
            )
            for letter_id, x in zip(ids, letters, strict=True)
        ],
    )
    await outbox.enqueue(conn, messages)


async def listing(conn: Conn, *, limit: int = 100, replayed: bool = False) -> list[dict[str, Any]]:
    """The newest dead letters of this schema, without their contents (which may hold personal
    data): id, consumer, where the record came from, size, reason, when, and any replay."""
    rows = await conn.fetch(
        """SELECT id, consumer, topic, partition, "offset", octet_length(value) AS size,
                  reason_code, reason, at, replayed_at
           FROM deadletters WHERE $2 OR replayed_at IS NULL ORDER BY at DESC LIMIT $1""",
        limit,
        replayed,
    )
    return [dict(r) for r in rows]


async def fetch(conn: Conn, letter_id: str) -> dict[str, Any] | None:
    """One dead letter with the original record's bytes, or None."""
    row = await conn.fetchrow("SELECT * FROM deadletters WHERE id = $1", letter_id)
    return dict(row) if row is not None else None


def original_headers(letter: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The original record's headers, byte for byte (names as the client decoded them)."""
    return [
        (bytes(name).decode("utf-8", "surrogateescape"), bytes(value or b""))
        for name, value in zip(letter["header_names"], letter["header_values"], strict=True)
    ]


async def mark_replayed(conn: Conn, letter_id: str) -> None:
    await conn.execute("UPDATE deadletters SET replayed_at = now() WHERE id = $1", letter_id)
