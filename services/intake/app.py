"""The intake service: validates, deduplicates, classifies and routes every submission."""

from __future__ import annotations

from typing import Any

from services.intake import api, handlers
from shared import topics
from shared.service import Service
from shared.settings import Settings


class Intake(Service):
    name = "intake"
    migrations_package = "services.intake.migrations"

    def register(self) -> None:
        api.install(self, self.router)
        self.consume(topics.SUBMITTED, handlers.on_submitted_record)
        self.consume(topics.EVENTS, handlers.on_event_record, group=f"{self.group_id}-cases")


def build_app(settings: Settings, **kwargs: Any) -> Intake:
    """The intake service, not yet started."""
    return Intake(settings, **kwargs)
