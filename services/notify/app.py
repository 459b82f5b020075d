"""The notify service: customer messages in their language, and the staff consoles' live stream."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from services.notify import api, handlers
from shared import retention, topics
from shared.service import Service
from shared.settings import Settings


class Notify(Service):
    name = "notify"
    migrations_package = "services.notify.migrations"

    def register(self) -> None:
        self.signal = api.StreamSignal()
        self._mailer: handlers.Mailer | None = None
        api.install(self, self.router, self.signal)
        self.consume(topics.EVENTS, handlers.on_event_record, after=self._after_batch)

    def _after_batch(self) -> None:
        if self._mailer is not None:
            self._mailer.wake()
        self.signal.notify()

    def retention_rules(self) -> list[retention.Rule]:
        keep = timedelta(hours=self.settings.stream_retention_hours)
        return [*super().retention_rules(), retention.Rule("stream_events", "at", keep)]

    async def on_open(self) -> None:
        self._mailer = handlers.Mailer(
            pool=self.pool,
            send=handlers.smtp_sender(self.settings),
            sender_address=self.settings.smtp_from,
            tracer=self.tracer,
            wake_relay=self.relay.wake,
        )
        self.spawn(self._mailer.run())

    async def stop(self) -> None:
        if self._mailer is not None:
            self._mailer.stop()
        await super().stop()


def build_app(settings: Settings, **kwargs: Any) -> Notify:
    """The notify service, not yet started."""
    return Notify(settings, **kwargs)
