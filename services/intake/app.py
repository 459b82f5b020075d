"""The intake service: validates, deduplicates, classifies and routes every submission."""

from __future__ import annotations

from typing import Any

from services.intake import admin, api, handlers
from shared import topics
from shared.service import Service
from shared.settings import Settings


class Intake(Service):
    name = "intake"
    migrations_package = "services.intake.migrations"

    def register(self) -> None:
        self.submissions = api.install(self, self.router)
        self.consume_together(topics.SUBMITTED, handlers.parse_record, handlers.apply_submissions)
        self.consume_together(
            topics.CASES,
            handlers.parse_case_event,
            handlers.follow_cases,
            group=f"{self.group_id}-cases",
            only=handlers.FOLLOWED,
            follower=True,  # staff load may lag a case's resolution by a fraction of a second
        )

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
