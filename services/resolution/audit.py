"""The decision log's hash chain (pure).

Each entry's hash is sha256 over the previous hash and a canonical JSON (sorted keys, compact,
UTF-8) of the entry's `type`, `at`, `actor`, `data` and `event_id`; the first entry of a chain
follows `GENESIS` (64 zeros). Published events carry the hash of their entry (their `chain`
field), so a log edited, truncated, or rewritten whole with fresh hashes no longer matches the
heads the outside world has seen.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GENESIS", "Broken", "canonical", "entry_hash", "verify"]

GENESIS = "0" * 64
HASHED_FIELDS = ("type", "at", "actor", "data", "event_id")


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry is hashed as: its hashed fields, sorted keys, compact, UTF-8."""
    picked = {key: entry.get(key) for key in HASHED_FIELDS}
    return json.dumps(picked, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """The hash of `entry` chained after `prev_hash` (hex sha256)."""
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical(entry)).hexdigest()


@dataclass(frozen=True)
class Broken:
    """The first entry where the chain does not hold, and why."""

    index: int
    event_id: str | None
    reason: str


def verify(
    entries: Sequence[Mapping[str, Any]], heads_from_events: Mapping[str, str] | None = None
) -> Broken | None:
    """The first broken entry of one chain (entries in order, each with `prev_hash` and
    `hash`), or None. `heads_from_events` maps event ids to the hashes their published events
    carried: an id missing from the log or a different hash is a break."""
    prev = GENESIS
    hashes: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(entries):
        event_id = entry.get("event_id")
        if entry.get("prev_hash") != prev:
            return Broken(index, event_id, "prev_hash does not follow the entry before")
        if entry_hash(prev, entry) != entry.get("hash"):
            return Broken(index, event_id, "entry altered: its hash does not match its content")
        prev = str(entry["hash"])
        hashes[str(event_id)] = (index, prev)
    return _against_events(hashes, len(entries), heads_from_events or {})


def _against_events(
    hashes: Mapping[str, tuple[int, str]], count: int, heads: Mapping[str, str]
) -> Broken | None:
    # Report the earliest entry a published head contradicts; a head whose entry is gone
    # means entries were deleted (from the end, or the chain rebuilt without them).
    worst: Broken | None = None
    for event_id, head in heads.items():
        found = hashes.get(event_id)
        if found is None:
            candidate = Broken(count, event_id, "entry published as an event is missing")
        elif found[1] != head:
            candidate = Broken(found[0], event_id, "chain rewritten: hash differs from the event")
        else:
            continue
        if worst is None or candidate.index < worst.index:
            worst = candidate
    return worst
