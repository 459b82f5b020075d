"""The resolution service: the case state machine, its clocks and its timeline."""

from __future__ import annotations

from typing import Any

from services.resolution import api, handlers, review_api
from shared import topics
from shared.service import Service
from shared.settings import Settings


class Resolution(Service):
    name = "resolution"
    migrations_package = "services.resolution.migrations"

    def register(self) -> None:
        api.install(self, self.router)
        review_api.install(self, self.router)
        self.consume(topics.EVENTS, handlers.events)
        self.consume(topics.CHANNEL_KEYS, handlers.keys, group=f"{self.group_id}-keys")
        self.consume(topics.STAFF, handlers.staff, group=f"{self.group_id}-staff")


def build_app(settings: Settings, **kwargs: Any) -> Resolution:
    """The resolution service, not yet started."""
    return Resolution(settings, **kwargs)
