"""The clocks: acknowledge-by and resolve-by per severity (a pure table)."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.events import Deadlines, Severity

# (acknowledge within, resolve within)
TARGETS: dict[Severity, tuple[timedelta, timedelta]] = {
    Severity.CRITICAL: (timedelta(hours=1), timedelta(hours=24)),
    Severity.HIGH: (timedelta(hours=4), timedelta(days=3)),
    Severity.MEDIUM: (timedelta(hours=24), timedelta(days=7)),
    Severity.LOW: (timedelta(hours=48), timedelta(days=14)),
}


def deadlines(severity: Severity, received_at: datetime) -> Deadlines:
    """The deadlines of a complaint of `severity` received at `received_at`."""
    ack, resolve = TARGETS[severity]
    return Deadlines(acknowledge_by=received_at + ack, resolve_by=received_at + resolve)
