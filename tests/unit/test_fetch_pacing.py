"""An idle consumer's fetches wait longer; the first records bring the short wait back."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from shared import fetch_pacing
from shared.fetch_pacing import Pacing


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("quiet_s", "got_records", "wait_ms"),
    [
        (0.0, True, 10),  # records: the short wait
        (0.5, False, 10),  # nothing for half a second: not idle yet
        (0.999, False, 10),
        (1.0, False, 250),  # nothing for the idle spell: the long wait
        (60.0, False, 250),
        (60.0, True, 10),  # records after a long quiet: short again at once
    ],
)
def test_the_wait_follows_how_long_nothing_came(
    quiet_s: float, got_records: bool, wait_ms: int
) -> None:
    clock = _Clock()
    pacing = Pacing(10, 250, idle_after_s=1.0, clock=clock)
    assert pacing.after_fetch(True) == 10
    clock.now += quiet_s
    assert pacing.after_fetch(got_records) == wait_ms


def test_records_after_idleness_restart_the_spell() -> None:
    clock = _Clock()
    pacing = Pacing(10, 250, idle_after_s=1.0, clock=clock)
    clock.now += 5
    assert pacing.after_fetch(False) == 250
    assert pacing.after_fetch(True) == 10
    clock.now += 0.5
    assert pacing.after_fetch(False) == 10  # half a second since the records
    clock.now += 0.5
    assert pacing.after_fetch(False) == 250


def test_a_consumer_starts_busy() -> None:
    """Just started, nothing has come yet: the short wait for the first spell (a consumer
    catching up after a restart must not wait long for its first batch)."""
    clock = _Clock()
    pacing = Pacing(10, 250, idle_after_s=1.0, clock=clock)
    assert pacing.after_fetch(False) == 10


def test_a_judged_consumer_is_busy_only_with_records_it_acts_on() -> None:
    """Resolution passes over its own events: a topic busy with them alone leaves it idle."""
    clock = _Clock()
    pacing = Pacing(10, 250, idle_after_s=1.0, judged=True, clock=clock)
    clock.now += 5
    assert pacing.after_fetch(True) == 250  # records, none acted on
    pacing.acted()
    assert pacing.after_fetch(True) == 10
    clock.now += 0.5
    assert pacing.after_fetch(True) == 10
    clock.now += 0.5
    assert pacing.after_fetch(True) == 250  # a second of records it passed over
    pacing.acted()
    assert pacing.after_fetch(False) == 10


class _Fetcher:
    def __init__(self, wait_ms: int, answers: list[bool]) -> None:
        self._fetch_max_wait_ms = wait_ms
        self._answers = answers

    async def _proc_fetch_request(self, *args: Any) -> bool:
        return self._answers.pop(0)


class _Consumer:
    def __init__(self, fetcher: Any) -> None:
        self._fetcher = fetcher


async def test_pace_sets_the_wait_the_fetcher_builds_its_next_request_with() -> None:
    fetcher = _Fetcher(10, [False, True])
    assert fetch_pacing.pace(_Consumer(fetcher), 250, idle_after_s=0.0) is not None
    assert await fetcher._proc_fetch_request("assignment", 1, "request") is False
    assert fetcher._fetch_max_wait_ms == 250
    assert await fetcher._proc_fetch_request("assignment", 1, "request") is True
    assert fetcher._fetch_max_wait_ms == 10


def test_a_consumer_that_waits_as_long_already_is_left_alone() -> None:
    fetcher = _Fetcher(250, [])
    original = fetcher._proc_fetch_request
    assert fetch_pacing.pace(_Consumer(fetcher), 100) is None
    assert fetcher._proc_fetch_request == original


def test_an_unknown_fetcher_is_reported_once_and_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fetch_pacing._say_unpaced.cache_clear()
    with caplog.at_level(logging.WARNING, logger="shared.fetch_pacing"):
        assert fetch_pacing.pace(_Consumer(object()), 100) is None
        assert fetch_pacing.pace(_Consumer(object()), 100) is None
        assert fetch_pacing.pace(None, 100) is None  # a subscriber without a consumer: quietly
    assert caplog.text.count("fixed fetch wait") == 1
