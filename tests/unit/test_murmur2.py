"""`shared.kafka.murmur2` partitions as every Kafka client does: the values of Kafka's own
tests, and aiokafka's implementation on random keys of every length up to 80 bytes."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from shared.kafka import KeyPartitioner, murmur2

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed there, unsigned here)
JAVA_CASES = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_CASES.items())
def test_the_values_kafka_tests_itself_against(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected & 0xFFFFFFFF


def test_the_same_hash_as_aiokafka_for_every_length_and_byte() -> None:
    rng = random.Random(20261202)
    for length in range(81):
        for _ in range(25):
            key = rng.randbytes(length)
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_a_complaint_key_lands_where_aiokafka_puts_it() -> None:
    partitioner = KeyPartitioner()
    partitions = list(range(12))
    key = b"5f0c6d0e-3a8b-4f55-9c1e-2b7d4e6a9f10"
    expected = (aiokafka_murmur2(key) & 0x7FFFFFFF) % 12
    assert partitioner(key, partitions, partitions) == expected
    assert partitioner(key, partitions, partitions) == expected  # remembered, the same
