"""The timer worker's pure decisions: back-off, giving up, how long to wait."""

from __future__ import annotations

import pytest

from shared.timers import TimerWorker, gives_up, retry_delay, sleep_for


def test_the_retry_delay_doubles_from_the_base_up_to_the_cap():
    delays = [retry_delay(n, base_s=5, cap_s=60) for n in range(1, 7)]
    assert delays == [5, 10, 20, 40, 60, 60]


def test_a_worker_gives_up_at_the_maximum_attempts_not_before():
    assert not gives_up(4, 5)
    assert gives_up(5, 5)
    assert gives_up(6, 5)


def test_a_worker_waits_until_the_next_timer_is_due():
    assert sleep_for(0.3, cap_s=1.0, floor_s=0.05, tick_s=0.01) == 0.3


def test_a_worker_waits_at_most_the_cap_and_the_cap_when_nothing_is_pending():
    assert sleep_for(3600.0, cap_s=1.0, floor_s=0.05, tick_s=0.01) == 1.0
    assert sleep_for(None, cap_s=1.0, floor_s=0.05, tick_s=0.01) == 1.0


def test_timers_due_within_a_tick_of_each_other_fire_together():
    assert sleep_for(0.001, cap_s=1.0, floor_s=0.05, tick_s=0.01) == 0.01


def test_a_due_timer_it_could_not_claim_is_looked_at_again_after_the_floor_not_at_once():
    assert sleep_for(-2.0, cap_s=1.0, floor_s=0.05, tick_s=0.01) == 0.05
    assert sleep_for(0.0, cap_s=1.0, floor_s=0.05, tick_s=0.01) == 0.05


def test_a_worker_without_handlers_is_refused():
    with pytest.raises(ValueError, match="handler"):
        TimerWorker(None, {})  # type: ignore[arg-type]
