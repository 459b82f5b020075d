"""One shape for background workers: the outbox relay, the mailer, the timer worker, retention.

Each is "claim due rows, work, mark; look again when woken or when the next row is due". A
`Loop` runs a worker's `step` until stopped: the step does one round of work and says how
long to wait before the next (0: at once, more is waiting). A wake-up cuts the wait short;
one that arrives while a step runs is kept, so work committed meanwhile is never missed. A
failing step is logged on one line (its type: the text may quote data) and retried with
doubling back-off.

Wake-ups after commit: `db.wake_after_commit(conn, name)` inside a transaction asks for the
worker registered under `name` (`Service.run_worker`) to be woken once the outermost
transaction commits, so no caller wakes a worker by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

log = logging.getLogger(__name__)


class Worker(Protocol):
    """What a service runs in the background: until `stop`, looking now when woken."""

    def wake(self) -> None: ...

    def stop(self) -> None: ...

    async def run(self) -> None: ...


class Loop:
    """Runs `step` until stopped (see the module docstring)."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[float]],
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.name = name
        self._step = step
        self._backoff = backoff_s
        self._max_backoff = max_backoff_s
        self._wake = asyncio.Event()
        self.stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()

    async def run(self) -> None:
        backoff = self._backoff
        while not self.stopping:
            self._wake.clear()  # before looking, so a wake-up that arrives meanwhile is kept
            try:
                wait = await self._step()
                backoff = self._backoff
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s failed (%s); retrying in %.1fs", self.name, type(exc).__name__, backoff
                )
                log.debug("%s failure detail", self.name, exc_info=exc)
                wait = backoff
                backoff = min(backoff * 2, self._max_backoff)
            if wait > 0 and not self.stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
