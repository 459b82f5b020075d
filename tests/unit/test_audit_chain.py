"""The decision log's hash chain: edits, deletions and whole rewrites are named."""

from __future__ import annotations

from typing import Any

from services.resolution.audit import GENESIS, canonical, entry_hash, verify


def chain(count: int) -> list[dict[str, Any]]:
    """A well-formed chain of `count` entries."""
    out: list[dict[str, Any]] = []
    prev = GENESIS
    for n in range(count):
        entry: dict[str, Any] = {
            "type": "complaint.note_added",
            "at": f"2026-11-02T09:00:0{n}Z",
            "actor": "s1",
            "data": {"text": f"note {n}", "amount": {"amount": "80.00", "currency": "EUR"}},
            "event_id": f"e{n}",
            "prev_hash": prev,
        }
        entry["hash"] = prev = entry_hash(prev, entry)
        out.append(entry)
    return out


def rehash(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chain recomputed over (possibly edited) entries, as a forger would."""
    prev = GENESIS
    out = []
    for entry in entries:
        fresh = {**entry, "prev_hash": prev}
        fresh["hash"] = prev = entry_hash(prev, fresh)
        out.append(fresh)
    return out


def heads(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {e["event_id"]: e["hash"] for e in entries}


def test_genesis_is_64_zeros_and_canonical_json_is_compact_sorted_utf8() -> None:
    assert GENESIS == "0" * 64
    entry = {
        "type": "t",
        "at": "x",
        "actor": "ö",
        "data": {"b": 1, "a": 2},
        "event_id": "e",
        "hash": "ignored",
    }
    assert canonical(entry) == (
        '{"actor":"ö","at":"x","data":{"a":2,"b":1},"event_id":"e","type":"t"}'.encode()
    )
    assert len(entry_hash(GENESIS, entry)) == 64


def test_an_intact_chain_verifies() -> None:
    entries = chain(5)
    assert verify(entries) is None
    assert verify(entries, heads(entries)) is None
    assert verify([]) is None


def test_an_edited_entry_is_named() -> None:
    entries = chain(5)
    entries[2] = {**entries[2], "data": {"text": "rewritten"}}
    broken = verify(entries)
    assert broken is not None and broken.index == 2 and broken.event_id == "e2"
    assert "altered" in broken.reason


def test_a_deleted_middle_entry_breaks_the_link() -> None:
    entries = chain(5)
    del entries[1]
    broken = verify(entries)
    assert broken is not None and broken.index == 1 and broken.event_id == "e2"


def test_a_deleted_last_entry_is_found_against_the_events_heads() -> None:
    entries = chain(5)
    published = heads(entries)
    assert verify(entries[:-1]) is None  # undetectable from the log alone
    broken = verify(entries[:-1], published)
    assert broken is not None and broken.event_id == "e4" and "missing" in broken.reason


def test_a_chain_rewritten_whole_is_found_against_the_events_heads() -> None:
    entries = chain(5)
    published = heads(entries)
    forged = rehash([*entries[:3], {**entries[3], "actor": "someone else"}, entries[4]])
    assert verify(forged) is None
    broken = verify(forged, published)
    assert broken is not None and broken.index == 3 and broken.event_id == "e3"
    assert "rewritten" in broken.reason
