"""The resolution service: the case state machine, its clocks and its timeline."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from services.resolution import action_batches, api, cases, handlers, review_api, states
from services.resolution.action_limit import ActionLimit
from services.resolution.policies import PolicyCache
from services.resolution.policy import Policy
from shared import retention, timers, topics
from shared.db import Conn
from shared.service import Service
from shared.settings import Settings


class Resolution(Service):
    name = "resolution"
    migrations_package = "services.resolution.migrations"

    def register(self) -> None:
        self._policies = PolicyCache()
        # the states of the cases this replica decided on lately (see `states`)
        self.known = states.States(self.settings.case_states_mb * 1024 * 1024)
        # one bucket share per member in this replica, for HTTP actions and commands alike
        limit = ActionLimit(self.settings, lambda: self.pool)
        self.staff_actions = action_batches.StaffActions(
            lambda: self.pool,
            policies=self.policy,
            known=self.known,
            view_of=api.staff_view,
            refused=api.refusal_document,
            # actions waiting alone for a busy case hold at most half the pool's connections
            alone_limit=max(1, self.settings.database_pool_size // 2),
        )
        api.install(self, self.router, self.policy, limit, self.known, self.staff_actions)
        review_api.install(self, self.router)
        self.consume_together(
            topics.EVENTS,
            handlers.parse_record,
            handlers.batch_handler(self.policy, self.known),
            skip=handlers.OWN,
        )
        # the directories' replicas follow within a follower's fetch cycle (a quarter second;
        # revocation is promised within seconds): on the dev broker, which wakes no fetch, a
        # consumer polling every 10 ms costs CPU while idle in both processes
        self.consume(
            topics.CHANNEL_KEYS, handlers.keys, group=f"{self.group_id}-keys", follower=True
        )
        self.learn_staff(handlers.staff)
        self.consume(
            topics.COMMANDS,
            handlers.command_router(self.staff_member, self.policy, limit, self.known),
            group=f"{self.group_id}-commands",
            # a decision locks its case, then its caps: never two cases in one transaction
            one_per_transaction=True,
        )

    async def policy(self, conn: Conn, version: int | None = None) -> Policy:
        """The authority and clock policy a decision takes: `version`, else the active one as
        this replica read it at most two seconds ago."""
        if version is not None:
            return await self._policies.version(conn, version)
        return await self._policies.current(conn)

    def retention_rules(self) -> list[retention.Rule]:
        # an Idempotency-Key answers its retries for a day
        return [
            *super().retention_rules(),
            retention.Rule("action_requests", "at", timedelta(days=1)),
        ]

    async def stop(self) -> None:
        await self.staff_actions.close()
        await super().stop()

    async def on_open(self) -> None:
        worker = timers.TimerWorker(
            self.pool,
            {cases.CLOCK_TIMER: self._fire},
            batch_handlers={cases.CLOCK_TIMER: self._fire_many},
        )
        self.run_worker(timers.WORKER, worker)

    async def _fire(self, conn: Conn, timer: timers.Timer, now: datetime) -> None:
        await cases.fire(conn, timer, now, policies=self.policy, known=self.known)

    async def _fire_many(
        self, conn: Conn, due: list[timers.Timer], now: datetime
    ) -> Collection[str]:
        return await cases.fire_many(conn, due, now, policies=self.policy, known=self.known)


def build_app(settings: Settings, **kwargs: Any) -> Resolution:
    """The resolution service, not yet started."""
    return Resolution(settings, **kwargs)
