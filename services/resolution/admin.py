"""Resolution's administration as use cases: the policy's versions, the exceptions review and
the audit of the decision log. The CLI calls these; each opens its own connection."""

from __future__ import annotations

import getpass
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from services.resolution import audit_log, policies, review
from services.resolution.audit import Broken
from services.resolution.policy import Policy, PolicyError
from shared import topics
from shared.db import admin_transaction
from shared.settings import Settings


class AdminError(Exception):
    """A request the operator must change, in words for the operator."""


def _transaction(settings: Settings) -> AbstractAsyncContextManager[asyncpg.Connection]:
    return admin_transaction(settings.require_database_url(), "resolution")


@dataclass(frozen=True)
class Shown:
    """A policy version and the store's list of versions (who loaded each, which is active)."""

    policy: Policy
    versions: list[dict[str, Any]]


async def show_policy(settings: Settings, version: int | None = None) -> Shown:
    """The active policy, or version `version`, with every version's who and when."""
    async with _transaction(settings) as conn:
        found = (
            await policies.active(conn) if version is None else await policies.get(conn, version)
        )
        if found is None:
            raise AdminError(f"no policy version {version}")
        return Shown(found, await policies.versions(conn))


def read_policy(path: Path) -> Policy:
    """The policy in the JSON file at `path`; `AdminError` naming each bad field."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AdminError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return Policy.from_json(raw)
    except PolicyError as exc:
        lines = "\n".join(f"  {field}: {message}" for field, message in exc.errors)
        raise AdminError(f"{path} is not a valid policy:\n{lines}") from None


async def load_policy(
    settings: Settings, path: Path, *, dry_run: bool, loaded_by: str | None = None
) -> policies.Loaded:
    """Validate the file, compare it with the active policy and, unless a dry run, store it
    as a new inactive version loaded by `loaded_by` (else the OS user)."""
    policy = read_policy(path)
    async with _transaction(settings) as conn:
        return await policies.load(conn, policy, loaded_by=loaded_by or _os_user(), dry_run=dry_run)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in the environment nor the password database
        return "unknown"


async def activate_policy(settings: Settings, version: int) -> Policy:
    """Make version `version` active (every replica follows within seconds)."""
    async with _transaction(settings) as conn:
        try:
            return await policies.activate(conn, version)
        except policies.UnknownVersion as exc:
            raise AdminError(str(exc)) from None


async def list_exceptions(
    settings: Settings, *, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Remedies granted as policy exceptions (since `since`), newest first."""
    async with _transaction(settings) as conn:
        return await review.exceptions(conn, since=since)


@dataclass(frozen=True)
class CaseAudit:
    """One case's verdict: its entry count and the first broken entry, if any."""

    complaint_id: str
    entries: int
    broken: Broken | None


@dataclass(frozen=True)
class Report:
    """Every case checked, and how many published heads were compared."""

    cases: list[CaseAudit]
    heads: int

    @property
    def ok(self) -> bool:
        """Whether every chain holds."""
        return all(case.broken is None for case in self.cases)


async def verify_audit(
    settings: Settings, *, complaint_id: str | None = None, timeout_s: float = 60.0
) -> Report:
    """Recompute every case's chain (or one case's) and compare it with the heads published
    on the events topic; a case whose rows are all gone is reported from its heads."""
    try:
        heads = await audit_log.published_heads(settings, topics.EVENTS, timeout_s=timeout_s)
    except (audit_log.Unreadable, RuntimeError) as exc:
        raise AdminError(f"cannot read {topics.EVENTS}: {exc}") from None
    if complaint_id is not None:
        heads = {k: v for k, v in heads.items() if k == complaint_id}
    async with _transaction(settings) as conn:
        logged = [complaint_id] if complaint_id is not None else await audit_log.case_ids(conn)
        cases = []
        for case in sorted(set(logged) | set(heads)):
            rows = await audit_log.entries(conn, case)
            broken = audit_log.check(rows, heads.get(case, {}))
            cases.append(CaseAudit(case, len(rows), broken))
    if complaint_id is not None and not cases[0].entries and complaint_id not in heads:
        raise AdminError(f"complaint {complaint_id} has no entries, logged or published")
    return Report(cases, sum(len(v) for v in heads.values()))
