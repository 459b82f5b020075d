"""The notify service: customer messages in their language, and the staff consoles' live stream."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from services.notify import api, domain, handlers
from services.notify.mailer import MAILER, Mailer
from services.notify.smtp import SmtpPool
from shared import retention, topics
from shared.service import Service
from shared.settings import Settings


class Notify(Service):
    name = "notify"
    migrations_package = "services.notify.migrations"

    def register(self) -> None:
        self.signal = api.StreamSignal()
        api.install(self, self.router, self.signal)
        policy = domain.ReceiptPolicy(
            limit=self.settings.receipt_limit_per_address,
            interval=timedelta(seconds=self.settings.receipt_digest_interval_s),
        )
        self.consume_together(
            topics.EVENTS,
            handlers.parse_record,
            handlers.batch_handler(policy),
            after=self._after_batch,
        )
        self.learn_staff(handlers.staff)

    def _after_batch(self) -> None:
        self.signal.notify()

    def retention_rules(self) -> list[retention.Rule]:
        keep = timedelta(hours=self.settings.stream_retention_hours)
        # a window older than its interval counts for nothing; delivered messages go with the
        # inbox rows that would otherwise let a redelivered event plan one again
        window = timedelta(seconds=2 * self.settings.receipt_digest_interval_s)
        sent = timedelta(hours=self.settings.inbox_retention_hours)
        return [
            *super().retention_rules(),
            retention.Rule("stream_events", "at", keep),
            retention.Rule("receipt_windows", "window_start", window),
            retention.Rule("notifications", "sent_at", sent),
        ]

    async def on_open(self) -> None:
        settings = self.settings
        mailer = Mailer(
            pool=self.pool,
            smtp=SmtpPool(
                host=settings.smtp_host,
                port=settings.smtp_port,
                timeout_s=settings.smtp_timeout_s,
                size=settings.smtp_connections,
            ),
            sender_address=settings.smtp_from,
            tracer=self.tracer,
            lease_s=settings.mailer_lease_s,
            max_in_flight=settings.smtp_max_in_flight,
        )
        self.run_worker(MAILER, mailer)


def build_app(settings: Settings, **kwargs: Any) -> Notify:
    """The notify service, not yet started."""
    return Notify(settings, **kwargs)
