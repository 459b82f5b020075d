"""Pure clock arithmetic: working time in a team's calendar, clocks that pause, and timers.

Design choices:
- Times go in aware (any zone) and come out in UTC. Working time is elapsed real time inside
  open hours, so a shift spanning a DST change counts its true length (a 00:00-06:00 shift on
  the spring-forward night holds 5 hours). A local time inside a DST gap is read with the
  offset before the change (zoneinfo's `fold=0`).
- A calendar without business hours is "always open": working time is wall time.
- Clock targets are working time: under business hours `P3D` is 72 working hours (nine
  8-hour days); a policy meaning three business days writes `PT24H`.
- A `Clock` keeps its target, the working time accumulated before the current running stretch
  and when that stretch began (`running_since`, None while paused). Whenever a clock is
  started, paused or resumed it stores the times it will end (`deadline`) and warn
  (`warn_times`), computed in the calendar of that moment: a later policy change does not move
  a running clock, and the times announced in `complaint.deadlines_set` are the times armed.
- Each running of a clock has a run number; timers are keyed
  `f"{complaint_id}:{kind}:{run}:{what}"` with `what` = `warning:<fraction>`, `breach`,
  `approval_timeout` or `response_window_closed`, so each fires once per run. A paused clock
  arms nothing; resuming re-derives the same keys with later due times.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from services.resolution.policy import BusinessHours, Policy, Weekday
from shared.frozen import changed

__all__ = [
    "Calendar",
    "Clock",
    "ClockKind",
    "TimerSpec",
    "calendar_for",
    "desired_timers",
    "parse_opt_time",
    "parse_time",
    "rfc3339",
    "timer_key",
    "timers_between",
]

# How far ahead a calendar looks for open hours before giving up (ten years).
_HORIZON_DAYS = 3660
_ZERO = timedelta(0)


@dataclass(frozen=True)
class Calendar:
    """Business hours and holidays in a zone; no zone means always open."""

    zone: ZoneInfo | None = None
    # (weekday 0=Monday, start, end) in local time; end <= start ends the next day
    hours: tuple[tuple[int, time, time], ...] = ()
    holidays: frozenset[date] = frozenset()

    @classmethod
    def always_open(cls) -> Calendar:
        """A calendar where every moment is working time."""
        return cls()

    @classmethod
    def from_hours(cls, hours: BusinessHours) -> Calendar:
        """The calendar a policy's business hours describe."""
        days = list(Weekday)
        return cls(
            zone=ZoneInfo(hours.time_zone),
            hours=tuple((days.index(h.day), h.start, h.end) for h in hours.hours),
            holidays=frozenset(hours.holidays),
        )

    def add_working(self, start: datetime, duration: timedelta) -> datetime:
        """The moment `duration` of working time after `start` (UTC)."""
        start = start.astimezone(UTC)
        if self.zone is None or duration <= _ZERO:
            return start + max(duration, _ZERO)
        left = duration
        for begin, end in self._open(start):
            begin = max(begin, start)
            if end - begin >= left:
                return begin + left
            left -= end - begin
        raise ValueError("no working time within the calendar's horizon")

    def working_between(self, a: datetime, b: datetime) -> timedelta:
        """Working time from `a` to `b` (zero when `b` is not after `a`)."""
        a, b = a.astimezone(UTC), b.astimezone(UTC)
        if b <= a:
            return _ZERO
        if self.zone is None:
            return b - a
        total = _ZERO
        for begin, end in self._open(a):
            if begin >= b:
                break
            total += min(end, b) - max(begin, a)
        return total

    def _open(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        # Merged open intervals (UTC) ending after `after`, in order. Starts from the day
        # before, so a shift crossing midnight into `after`'s day is seen.
        assert self.zone is not None
        first = after.astimezone(self.zone).date() - timedelta(days=1)
        current: tuple[datetime, datetime] | None = None
        for offset in range(_HORIZON_DAYS):
            for begin, end in self._shifts(first + timedelta(days=offset)):
                if current is not None and begin <= current[1]:
                    current = (current[0], max(current[1], end))
                    continue
                if current is not None and current[1] > after:
                    yield current
                current = (begin, end)
        if current is not None and current[1] > after:
            yield current

    def _shifts(self, day: date) -> list[tuple[datetime, datetime]]:
        # A holiday drops every shift starting on that date.
        if day in self.holidays:
            return []
        out = []
        for weekday, start, end in self.hours:
            if weekday != day.weekday():
                continue
            end_day = day if end > start else day + timedelta(days=1)
            begin = datetime.combine(day, start, tzinfo=self.zone).astimezone(UTC)
            out.append((begin, datetime.combine(end_day, end, tzinfo=self.zone).astimezone(UTC)))
        return sorted(out)


def calendar_for(policy: Policy, team: str) -> Calendar:
    """The team's calendar under `policy` (always open when it names no hours)."""
    hours = policy.business_hours.get(team)
    return Calendar.from_hours(hours) if hours is not None else Calendar.always_open()


class ClockKind(StrEnum):
    """The clocks a case runs."""

    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"
    APPROVAL = "approval"
    STAFF_RESPONSE = "staff_response"


BREACH = "breach"
APPROVAL_TIMEOUT = "approval_timeout"
RESPONSE_WINDOW_CLOSED = "response_window_closed"
# What a clock's end is called, per kind; only acknowledge and resolve warn.
END_OF: dict[ClockKind, str] = {
    ClockKind.ACKNOWLEDGE: BREACH,
    ClockKind.RESOLVE: BREACH,
    ClockKind.APPROVAL: APPROVAL_TIMEOUT,
    ClockKind.STAFF_RESPONSE: RESPONSE_WINDOW_CLOSED,
}
WARNS = frozenset({ClockKind.ACKNOWLEDGE, ClockKind.RESOLVE})


def warning_what(fraction: Decimal) -> str:
    """The `what` of a warning timer (`warning:0.75`)."""
    return f"warning:{fraction}"


def timer_key(complaint_id: str, kind: ClockKind, run: int, what: str) -> str:
    """The key a timer is armed under: one firing per clock run and `what`."""
    return f"{complaint_id}:{kind}:{run}:{what}"


def _scaled(duration: timedelta, fraction: Decimal) -> timedelta:
    micros = Decimal(duration // timedelta(microseconds=1)) * fraction
    return timedelta(microseconds=int(micros))


@dataclass(frozen=True)
class TimerSpec:
    """A timer that should be armed: fire `what` of clock (`kind`, `run`) at `due_at`."""

    key: str
    due_at: datetime
    complaint_id: str
    kind: ClockKind
    run: int
    what: str

    @property
    def payload(self) -> dict[str, Any]:
        """What the timer hands back when it fires (becomes a `ClockFired` command)."""
        return {
            "complaint_id": self.complaint_id,
            "kind": str(self.kind),
            "run": self.run,
            "what": self.what,
        }


@dataclass(frozen=True)
class Clock:
    """One running of one clock, with the times it will warn and end (None while paused)."""

    kind: ClockKind
    run: int
    target: timedelta
    started_at: datetime
    accumulated: timedelta = _ZERO
    running_since: datetime | None = None
    paused_at: datetime | None = None
    subject: str = ""
    warn_at: tuple[Decimal, ...] = ()
    fired: frozenset[str] = frozenset()
    deadline: datetime | None = None
    warn_times: tuple[tuple[Decimal, datetime], ...] = field(default=())

    @classmethod
    def start(
        cls,
        kind: ClockKind,
        run: int,
        target: timedelta,
        now: datetime,
        calendar: Calendar,
        *,
        warn_at: Sequence[Decimal] = (),
        subject: str = "",
    ) -> Clock:
        """A clock of `kind` that starts running at `now`."""
        now = now.astimezone(UTC)
        warn = tuple(warn_at) if kind in WARNS else ()
        clock = cls(kind, run, target, now, running_since=now, subject=subject, warn_at=warn)
        return clock.timed(calendar)

    @property
    def running(self) -> bool:
        """Whether the clock is running (not paused)."""
        return self.running_since is not None

    def pause(self, now: datetime, calendar: Calendar) -> Clock:
        """The clock stopped at `now`, keeping the working time it ran."""
        if self.running_since is None:
            return self
        ran = calendar.working_between(self.running_since, now)
        paused = changed(
            self,
            accumulated=self.accumulated + ran,
            running_since=None,
            paused_at=now.astimezone(UTC),
        )
        return paused.timed(calendar)

    def resume(self, now: datetime, calendar: Calendar) -> Clock:
        """The clock running again from `now`."""
        if self.running_since is not None:
            return self
        return changed(self, running_since=now.astimezone(UTC), paused_at=None).timed(calendar)

    def elapsed(self, calendar: Calendar, now: datetime) -> timedelta:
        """Working time run so far."""
        if self.running_since is None:
            return self.accumulated
        return self.accumulated + calendar.working_between(self.running_since, now)

    def due_at(self, calendar: Calendar) -> datetime | None:
        """When the target is reached (None while paused)."""
        return self._at(calendar, self.target)

    def warnings(
        self, calendar: Calendar, fractions: Sequence[Decimal]
    ) -> list[tuple[Decimal, datetime]]:
        """When each warning fraction is reached (empty while paused)."""
        out = []
        for fraction in fractions:
            at = self._at(calendar, _scaled(self.target, fraction))
            if at is not None:
                out.append((fraction, at))
        return out

    def _at(self, calendar: Calendar, mark: timedelta) -> datetime | None:
        if self.running_since is None:
            return None
        return calendar.add_working(self.running_since, mark - self.accumulated)

    def timed(self, calendar: Calendar) -> Clock:
        """The clock with its deadline and warning times computed in `calendar`."""
        return changed(
            self,
            deadline=self.due_at(calendar),
            warn_times=tuple(self.warnings(calendar, self.warn_at)),
        )

    def fire(self, what: str) -> Clock:
        """The clock with `what` recorded as fired (it never fires again in this run)."""
        return changed(self, fired=self.fired | {what})

    def time_of(self, what: str) -> datetime | None:
        """When `what` is due in this run (None: paused, or not one of this clock's)."""
        if what == END_OF[self.kind]:
            return self.deadline
        return next((at for f, at in self.warn_times if warning_what(f) == what), None)

    def timers(self, complaint_id: str) -> list[TimerSpec]:
        """The timers this clock wants armed: its warnings and end not yet fired."""
        if self.running_since is None or self.deadline is None:
            return []
        wanted = [(warning_what(f), at) for f, at in self.warn_times]
        wanted.append((END_OF[self.kind], self.deadline))
        return [
            TimerSpec(
                timer_key(complaint_id, self.kind, self.run, what),
                at,
                complaint_id,
                self.kind,
                self.run,
                what,
            )
            for what, at in wanted
            if what not in self.fired
        ]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready snapshot, as `complaint.deadlines_set` carries it."""
        return {
            "kind": str(self.kind),
            "run": self.run,
            "subject": self.subject,
            "target_seconds": int(self.target.total_seconds()),
            "started_at": rfc3339(self.started_at),
            "accumulated_seconds": self.accumulated.total_seconds(),
            "running_since": rfc3339(self.running_since),
            "paused_at": rfc3339(self.paused_at),
            "warn_at": [str(f) for f in self.warn_at],
            "fired": sorted(self.fired),
            "due_at": rfc3339(self.deadline),
            "warnings": [{"fraction": str(f), "at": rfc3339(at)} for f, at in self.warn_times],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Clock:
        """The clock `to_json` wrote."""
        return cls(
            kind=ClockKind(data["kind"]),
            run=int(data["run"]),
            target=timedelta(seconds=data["target_seconds"]),
            started_at=parse_time(data["started_at"]),
            accumulated=timedelta(seconds=data["accumulated_seconds"]),
            running_since=parse_opt_time(data["running_since"]),
            paused_at=parse_opt_time(data["paused_at"]),
            subject=data["subject"],
            warn_at=tuple(Decimal(f) for f in data["warn_at"]),
            fired=frozenset(data["fired"]),
            deadline=parse_opt_time(data["due_at"]),
            warn_times=tuple(
                (Decimal(w["fraction"]), parse_time(w["at"])) for w in data["warnings"]
            ),
        )


def rfc3339(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with `Z` (None stays None)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def parse_time(value: str) -> datetime:
    """The aware time `rfc3339` wrote."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def parse_opt_time(value: str | None) -> datetime | None:
    return parse_time(value) if value is not None else None


class HasClocks(Protocol):
    """Anything with a complaint id and its clocks (a case state)."""

    @property
    def complaint_id(self) -> str: ...

    @property
    def clocks(self) -> tuple[Clock, ...]: ...


def desired_timers(state: HasClocks) -> list[TimerSpec]:
    """Every timer the case wants armed now; diff it against what is armed (same key and due
    time: keep; new key or new time: schedule; a key no longer wanted: cancel)."""
    return [timer for clock in state.clocks for timer in clock.timers(state.complaint_id)]


def timers_between(
    before: HasClocks, after: HasClocks
) -> tuple[dict[str, TimerSpec], dict[str, TimerSpec]]:
    """The timers `before` and `after` want armed (`desired_timers`, by key), leaving out those
    of the clocks the two share: a clock's timers follow from the clock alone, so a clock a
    decision did not touch (the same object) wants the same timers on both sides."""
    shared = {id(clock) for clock in before.clocks} & {id(clock) for clock in after.clocks}

    def wanted(state: HasClocks) -> dict[str, TimerSpec]:
        return {
            timer.key: timer
            for clock in state.clocks
            if id(clock) not in shared
            for timer in clock.timers(state.complaint_id)
        }

    return wanted(before), wanted(after)
