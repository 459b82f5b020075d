"""Plain-text summaries the operator commands print: a policy, an exception, an audit report."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from services.resolution.admin import Report, Shown
from services.resolution.policy import MONEY_REMEDIES, ROLES, Policy, format_duration
from shared.events import Severity


def _amounts(table: Mapping[str, Decimal]) -> str:
    return ", ".join(f"{cur} {amount}" for cur, amount in sorted(table.items())) or "none"


def _limits(policy: Policy) -> list[str]:
    lines = ["limits (what each role grants alone):"]
    for role in ROLES:
        limits = policy.limits[role]
        reserve = "yes" if limits.reserve_and_notify else "no"
        lines.append(
            f"  {role.value}: discount up to {limits.discount_next_purchase}%, "
            f"reserve_and_notify {reserve}"
        )
        lines.extend(
            f"    {kind.value:<16} {_amounts(getattr(limits, kind.value))}"
            for kind in sorted(MONEY_REMEDIES)
        )
    return lines


def _caps(policy: Policy) -> list[str]:
    caps = policy.caps
    lines = [f"caps (customer window {caps.customer_window_days} days):"]
    for role in ROLES:
        customer = _amounts(caps.per_customer.get(role, {}))
        daily = _amounts(caps.per_staff_per_day.get(role, {}))
        lines.append(f"  {role.value:<13} per customer {customer}; per staff a day {daily}")
    rule = policy.consistency
    lines.append(
        f"consistency: outlier below {rule.low_ratio}x or above {rule.high_ratio}x the median "
        f"of at least {rule.min_sample} similar remedies in {rule.window_days} days"
    )
    return lines


def _clocks(policy: Policy) -> list[str]:
    clocks = policy.clocks
    lines = ["clocks:"]
    for severity in Severity:
        targets = clocks.severity[severity]
        lines.append(
            f"  {severity.value:<9} acknowledge {format_duration(targets.acknowledge_within)}, "
            f"resolve {format_duration(targets.resolve_within)}"
        )
    for channel, overrides in clocks.channel_overrides.items():
        lines.append(f"  {channel.value} overrides: {', '.join(s.value for s in overrides)}")
    lines.append(
        f"  approval {format_duration(clocks.approval_within)}, staff response "
        f"{format_duration(clocks.staff_response_within)}, reopen "
        f"{format_duration(clocks.reopen_within)}, warn at "
        + ", ".join(str(f) for f in clocks.warn_at)
    )
    for team, hours in policy.business_hours.items():
        lines.append(
            f"  {team}: business hours in {hours.time_zone}, {len(hours.hours)} shifts a week, "
            f"{len(hours.holidays)} holidays"
        )
    return lines


def _version_line(row: Mapping[str, Any]) -> str:
    mark = "  (active)" if row["active"] else ""
    return f"  {row['version']:>4}  {row['loaded_at']:%Y-%m-%d %H:%M}  {row['loaded_by']}{mark}"


def policy_summary(shown: Shown) -> list[str]:
    """A policy version for people: limits, caps, clocks, and every version kept."""
    policy = shown.policy
    active = any(r["active"] and r["version"] == policy.version for r in shown.versions)
    head = f"policy version {policy.version}" + (" (active)" if active else " (not active)")
    versions = ["versions:", *(_version_line(r) for r in shown.versions)]
    return [head, *_limits(policy), *_caps(policy), *_clocks(policy), *versions]


def exception_line(row: Mapping[str, Any]) -> str:
    """One policy exception on a line."""
    value = f"{row['amount']} {row['currency']}" if row["amount"] is not None else ""
    if row["percent"] is not None:
        value = f"{row['percent']}%"
    return (
        f"{row['at'][:16]}  {row['complaint_id']}  {row['type']} {value}  "
        f"{row['category']}/{row['severity']}/{row['band']}  proposed by {row['proposer']}, "
        f"authorised by {row['authorized_by']} ({row['authorized_role']}), "
        f"policy v{row['policy_version']}: {row['justification'] or '(no justification)'}"
    )


def audit_lines(report: Report) -> list[str]:
    """One line per case: OK, or its first broken entry and why."""
    lines = []
    for case in report.cases:
        if case.broken is None:
            lines.append(f"OK      {case.complaint_id}  {case.entries} entries")
            continue
        b = case.broken
        lines.append(
            f"BROKEN  {case.complaint_id}  entry {b.index + 1} (event {b.event_id}): {b.reason}"
        )
    return lines
