"""A channel key's token bucket as arithmetic: refill, chunked grants, retry-after."""

from __future__ import annotations

import pytest

from shared import quota
from shared.quota import Bucket, Limit

DEFAULT = Limit(rate_per_s=50.0, burst=200)


@pytest.mark.parametrize(
    ("tokens", "elapsed_s", "limit", "expected"),
    [
        (0.0, 1.0, DEFAULT, 50.0),
        (10.0, 0.1, DEFAULT, 15.0),
        (190.0, 1.0, DEFAULT, 200.0),  # capped at the burst
        (0.0, 3600.0, DEFAULT, 200.0),
        (5.0, -2.0, DEFAULT, 5.0),  # a clock that went backwards adds nothing
        (0.25, 0.5, Limit(2.0, 5), 1.25),
    ],
)
def test_refill_follows_the_rate_and_stops_at_the_burst(tokens, elapsed_s, limit, expected):
    assert quota.refill(tokens, elapsed_s, limit) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (DEFAULT, 5),  # a tenth of a second's worth: 50 x 0.1
        (Limit(500.0, 2000), 50),
        (Limit(10_000.0, 40), 10),  # a quarter of the burst is smaller
        (Limit(2.0, 5), 1),  # never less than one
        (Limit(0.01, 1), 1),
    ],
)
def test_a_replica_draws_a_small_chunk(limit, expected):
    assert quota.chunk(limit) == expected


@pytest.mark.parametrize(
    ("tokens", "want", "granted", "left"),
    [
        (200.0, 5, 5, 195.0),
        (3.7, 5, 3, 0.7),  # only whole tokens are handed out
        (0.9, 5, 0, 0.9),
        (0.0, 1, 0, 0.0),
    ],
)
def test_grant_hands_out_whole_tokens_up_to_the_chunk(tokens, want, granted, left):
    got, rest = quota.grant(tokens, want)
    assert got == granted
    assert rest == pytest.approx(left)


def test_a_new_bucket_starts_full():
    granted, bucket = quota.draw(None, 100.0, Limit(2.0, 5), 1)
    assert granted == 1
    assert bucket == Bucket(4.0, 100.0)


def test_draws_spend_the_burst_then_follow_the_rate():
    limit = Limit(2.0, 5)
    bucket, granted = None, []
    for _ in range(6):  # six requests at the same instant
        got, bucket = quota.draw(bucket, 0.0, limit, quota.chunk(limit))
        granted.append(got)
    assert granted == [1, 1, 1, 1, 1, 0]
    assert bucket is not None
    assert quota.wait_s(bucket.tokens, limit) == pytest.approx(0.5)
    got, bucket = quota.draw(bucket, 0.5, limit, 1)  # one token back after 1 / rate
    assert got == 1
    got, bucket = quota.draw(bucket, 0.6, limit, 1)
    assert got == 0


def test_a_key_with_its_own_rate_refills_at_that_rate():
    own = quota.limit_for(500.0, 2000, default_rate=50.0, default_burst=200)
    assert own == Limit(500.0, 2000)
    assert quota.limit_for(None, None, default_rate=50.0, default_burst=200) == DEFAULT
    assert quota.limit_for(None, 7, default_rate=50.0, default_burst=200) == Limit(50.0, 7)
    empty = Bucket(0.0, 0.0)
    assert quota.draw(empty, 0.1, own, quota.chunk(own))[0] == 50
    assert quota.draw(empty, 0.1, DEFAULT, quota.chunk(DEFAULT))[0] == 5


def test_the_bucket_time_never_goes_back():
    _, bucket = quota.draw(Bucket(1.0, 10.0), 9.0, DEFAULT, 1)
    assert bucket.at_s == 10.0


@pytest.mark.parametrize(
    ("left", "limit", "wait"),
    [
        (0.0, Limit(2.0, 5), 0.5),
        (0.5, Limit(1.0, 5), 0.5),
        (0.0, Limit(0.1, 5), 10.0),
        (1.0, DEFAULT, 0.0),
    ],
)
def test_wait_is_the_time_to_a_whole_token(left, limit, wait):
    assert quota.wait_s(left, limit) == pytest.approx(wait)


@pytest.mark.parametrize(
    ("wait", "header"),
    [(0.0, 1), (0.02, 1), (0.5, 1), (1.0, 1), (1.01, 2), (9.2, 10)],
)
def test_retry_after_rounds_up_to_whole_seconds_and_is_at_least_one(wait, header):
    assert quota.retry_after(wait) == header
