"""The intake service: validates, deduplicates, classifies and routes every submission."""

from __future__ import annotations

import logging
from typing import Any

from services.intake import admin, api, handlers
from shared import kafka, topics
from shared.service import Service
from shared.settings import Settings

log = logging.getLogger(__name__)


class Intake(Service):
    name = "intake"
    migrations_package = "services.intake.migrations"

    def register(self) -> None:
        self.submissions = api.install(self, self.router)
        self.consume_together(topics.SUBMITTED, handlers.parse_record, handlers.apply_submissions)
        self._following: tuple[str, ...] | None = None

    @property
    def cases_group(self) -> str:
        return f"{self.group_id}-cases"

    async def case_topics(self) -> tuple[str, ...]:
        """Where intake learns what became of its cases: the internal cases feed, and, while a
        version from before the feed may still publish or have left events unread, the public
        events topic too (see `Settings.intake_follow_events_topic`; the inbox drops the
        copies)."""
        legacy = self.settings.intake_follow_events_topic
        if legacy is None:
            legacy = await kafka.group_has_read(self.settings, self.cases_group, topics.EVENTS)
        if not legacy:
            return (topics.CASES,)
        log.warning(
            "intake follows case changes on %s as well as %s (an upgrade from a version before "
            "the internal feed): set COMPLAINTS_INTAKE_FOLLOW_EVENTS_TOPIC=false once every "
            "service runs this version and %s has no lag on %s",
            topics.EVENTS,
            topics.CASES,
            self.cases_group,
            topics.EVENTS,
        )
        return (topics.CASES, topics.EVENTS)

    async def start_consuming(self) -> None:
        if self._following is None:  # its subscriber is declared once, before any starts
            self._following = await self.case_topics()
            self.consume_together(
                self._following,
                handlers.parse_case_event,
                handlers.follow_cases,
                group=self.cases_group,
                only=handlers.FOLLOWED,
                follower=True,  # staff load may lag a case's resolution by a fraction of a second
            )
        await super().start_consuming()

    async def on_open(self) -> None:
        # directory changes made while no intake ran (or before members were announced)
        async with self.pool.acquire() as conn, conn.transaction():
            await admin.announce_staff(conn)

    async def stop(self) -> None:
        await self.submissions.batcher.close()
        await super().stop()


def build_app(settings: Settings, **kwargs: Any) -> Intake:
    """The intake service, not yet started."""
    return Intake(settings, **kwargs)
