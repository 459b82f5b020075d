"""Identifiers read from the OS's randomness in bulk are proper, distinct version 4 UUIDs."""

from __future__ import annotations

import uuid

from shared import ids


def test_ids_are_version_4_uuids_written_as_uuid4_writes_them():
    made = [ids.new_uuid() for _ in range(1000)]  # several refills
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_the_random_bits_are_not_fixed():
    made = [uuid.UUID(ids.new_uuid()).int for _ in range(256)]
    fixed = (0xF000 << 64) | (0xC000 << 48)
    varying = 0
    for value in made:
        varying |= value ^ made[0]
    assert varying == ((1 << 128) - 1) & ~fixed  # every other bit took both values
