"""Clock arithmetic: business hours, weekends, holidays, midnight, DST, pause and resume."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from services.resolution.clocks import (
    Calendar,
    Clock,
    ClockKind,
    calendar_for,
    desired_timers,
    timer_key,
)
from services.resolution.policy import BusinessHours, default_policy

AMS = ZoneInfo("Europe/Amsterdam")


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=AMS)  # type: ignore[misc]


def hours(*spans: tuple[str, str, str], holidays: tuple[str, ...] = ()) -> Calendar:
    return Calendar.from_hours(
        BusinessHours.model_validate(
            {
                "time_zone": "Europe/Amsterdam",
                "hours": [{"day": d, "start": s, "end": e} for d, s, e in spans],
                "holidays": list(holidays),
            }
        )
    )


OFFICE = hours(*((d, "09:00", "17:00") for d in ("mon", "tue", "wed", "thu", "fri")))


def test_always_open_is_wall_time() -> None:
    cal = Calendar.always_open()
    start = local(2026, 11, 6, 16)
    assert cal.add_working(start, timedelta(hours=3)) == start.astimezone(UTC) + timedelta(hours=3)
    assert cal.working_between(start, start + timedelta(days=2)) == timedelta(days=2)
    assert cal.working_between(start, start - timedelta(hours=1)) == timedelta(0)


def test_out_is_utc() -> None:
    out = OFFICE.add_working(local(2026, 11, 2, 10), timedelta(hours=1))
    assert out.tzinfo is UTC and out == local(2026, 11, 2, 11)


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        (local(2026, 11, 2, 10), timedelta(hours=2), local(2026, 11, 2, 12)),
        (local(2026, 11, 2, 7), timedelta(hours=1), local(2026, 11, 2, 10)),  # before opening
        (local(2026, 11, 2, 16), timedelta(hours=2), local(2026, 11, 3, 10)),  # overnight
        (local(2026, 11, 6, 16), timedelta(hours=2), local(2026, 11, 9, 10)),  # weekend
        (local(2026, 11, 7, 12), timedelta(hours=1), local(2026, 11, 9, 10)),  # from Saturday
        (local(2026, 11, 2, 9), timedelta(hours=40), local(2026, 11, 6, 17)),  # a full week
    ],
)
def test_office_hours_skip_nights_and_weekends(
    start: datetime, duration: timedelta, expected: datetime
) -> None:
    assert OFFICE.add_working(start, duration) == expected
    assert OFFICE.working_between(start, expected) == duration


def test_holidays_are_skipped() -> None:
    cal = hours(
        *((d, "09:00", "17:00") for d in ("mon", "tue", "wed", "thu", "fri")),
        holidays=("2026-11-09",),
    )
    assert cal.add_working(local(2026, 11, 6, 16), timedelta(hours=2)) == local(2026, 11, 10, 10)
    assert cal.working_between(local(2026, 11, 6, 9), local(2026, 11, 10, 17)) == timedelta(
        hours=16
    )


def test_hours_crossing_midnight() -> None:
    night = hours(("fri", "22:00", "06:00"))
    assert night.add_working(local(2026, 11, 6, 23), timedelta(hours=5)) == local(2026, 11, 7, 4)
    # started after midnight inside Friday's shift (seen from Saturday)
    assert night.add_working(local(2026, 11, 7, 5), timedelta(hours=2)) == local(2026, 11, 13, 23)
    assert night.working_between(local(2026, 11, 6, 12), local(2026, 11, 7, 12)) == timedelta(
        hours=8
    )
    holiday = hours(("fri", "22:00", "06:00"), holidays=("2026-11-06",))
    assert holiday.working_between(local(2026, 11, 6), local(2026, 11, 8)) == timedelta(0)


def test_adjacent_shifts_merge() -> None:
    cal = hours(("mon", "22:00", "00:00"), ("tue", "00:00", "02:00"))
    assert cal.add_working(local(2026, 11, 2, 22), timedelta(hours=4)) == local(2026, 11, 3, 2)


@pytest.mark.parametrize(
    ("day", "length"),
    [
        (date(2026, 3, 29), timedelta(hours=5)),
        (date(2026, 10, 25), timedelta(hours=7)),
        (date(2026, 11, 1), timedelta(hours=6)),
    ],
)
def test_a_night_shift_across_a_dst_change_counts_real_time(day: date, length: timedelta) -> None:
    cal = hours(("sun", "00:00", "06:00"))
    start = datetime(day.year, day.month, day.day, tzinfo=AMS)
    end = datetime(day.year, day.month, day.day, 6, tzinfo=AMS)
    assert cal.working_between(start, end + timedelta(hours=12)) == length
    assert cal.add_working(start, length) == end.astimezone(UTC)


def test_office_hours_stay_local_across_dst() -> None:
    # Friday 16:00 CEST + 2 working hours = Monday 10:00 CET (clocks went back on Sunday).
    assert OFFICE.add_working(local(2026, 10, 23, 16), timedelta(hours=2)) == local(
        2026, 10, 26, 10
    )
    assert local(2026, 10, 26, 10).utcoffset() == timedelta(hours=1)


def test_calendar_for_a_team_without_hours_is_always_open() -> None:
    assert calendar_for(default_policy(), "support") == Calendar.always_open()


FRACTIONS = (Decimal("0.75"), Decimal("0.9"))
T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


ALWAYS = Calendar.always_open()


def resolve_clock(cal: Calendar = ALWAYS) -> Clock:
    return Clock.start(ClockKind.RESOLVE, 1, timedelta(hours=10), T0, cal, warn_at=FRACTIONS)


def test_a_clock_warns_and_ends() -> None:
    clock = resolve_clock()
    assert clock.deadline == T0 + timedelta(hours=10)
    assert clock.warn_times == (
        (Decimal("0.75"), T0 + timedelta(hours=7, minutes=30)),
        (Decimal("0.9"), T0 + timedelta(hours=9)),
    )
    assert clock.warnings(Calendar.always_open(), [Decimal("0.5")]) == [
        (Decimal("0.5"), T0 + timedelta(hours=5))
    ]


def test_pause_and_resume_move_the_deadline() -> None:
    cal = Calendar.always_open()
    paused = resolve_clock().pause(T0 + timedelta(hours=4), cal)
    assert not paused.running and paused.deadline is None and paused.warn_times == ()
    assert paused.accumulated == timedelta(hours=4)
    assert paused.elapsed(cal, T0 + timedelta(hours=9)) == timedelta(hours=4)
    resumed = paused.resume(T0 + timedelta(hours=10), cal)
    assert resumed.deadline == T0 + timedelta(hours=16)
    assert resumed.warn_times[0] == (Decimal("0.75"), T0 + timedelta(hours=13, minutes=30))
    assert resumed.pause(T0 + timedelta(hours=11), cal).accumulated == timedelta(hours=5)
    assert paused.pause(T0 + timedelta(hours=5), cal) == paused
    assert resumed.resume(T0 + timedelta(hours=11), cal) == resumed


def test_a_paused_clock_counts_only_working_time() -> None:
    start = local(2026, 11, 6, 15)  # Friday 15:00
    clock = Clock.start(ClockKind.RESOLVE, 1, timedelta(hours=8), start, OFFICE)
    assert clock.deadline == local(2026, 11, 9, 15)
    paused = clock.pause(local(2026, 11, 9, 10), OFFICE)  # Monday 10:00
    assert paused.accumulated == timedelta(hours=3)
    assert paused.resume(local(2026, 11, 10, 9), OFFICE).deadline == local(2026, 11, 10, 14)


class Case:
    def __init__(self, clocks: tuple[Clock, ...]) -> None:
        self.complaint_id = "c1"
        self.clocks = clocks


def test_timers_are_keyed_per_run_and_fire_once() -> None:
    clock = resolve_clock()
    keys = [t.key for t in desired_timers(Case((clock,)))]
    assert keys == ["c1:resolve:1:warning:0.75", "c1:resolve:1:warning:0.9", "c1:resolve:1:breach"]
    fired = clock.fire("warning:0.75")
    assert [t.what for t in desired_timers(Case((fired,)))] == ["warning:0.9", "breach"]
    paused = fired.pause(T0 + timedelta(hours=1), Calendar.always_open())
    assert desired_timers(Case((paused,))) == []
    later = paused.resume(T0 + timedelta(hours=2), Calendar.always_open())
    timers = desired_timers(Case((later,)))
    assert [t.key for t in timers] == ["c1:resolve:1:warning:0.9", "c1:resolve:1:breach"]
    assert timers[-1].due_at == T0 + timedelta(hours=11)
    assert timers[-1].payload == {
        "complaint_id": "c1",
        "kind": "resolve",
        "run": 1,
        "what": "breach",
    }


def test_a_new_run_has_new_keys() -> None:
    again = Clock.start(
        ClockKind.RESOLVE, 2, timedelta(hours=10), T0, Calendar.always_open(), warn_at=FRACTIONS
    )
    assert {t.key for t in desired_timers(Case((again,)))} == {
        timer_key("c1", ClockKind.RESOLVE, 2, w) for w in ("warning:0.75", "warning:0.9", "breach")
    }


def test_only_acknowledge_and_resolve_warn() -> None:
    clock = Clock.start(
        ClockKind.APPROVAL, 1, timedelta(hours=4), T0, Calendar.always_open(), warn_at=FRACTIONS
    )
    assert [t.what for t in desired_timers(Case((clock,)))] == ["approval_timeout"]
    staff = Clock.start(
        ClockKind.STAFF_RESPONSE, 3, timedelta(hours=4), T0, Calendar.always_open(), subject="s9"
    )
    assert [t.key for t in desired_timers(Case((staff,)))] == [
        "c1:staff_response:3:response_window_closed"
    ]


def test_clock_json_round_trip() -> None:
    clock = resolve_clock(OFFICE).fire("warning:0.75").pause(T0 + timedelta(hours=3), OFFICE)
    assert Clock.from_json(clock.to_json()) == clock
    running = resolve_clock(OFFICE)
    assert Clock.from_json(running.to_json()) == running
