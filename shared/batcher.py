"""Group commit: callers that arrive while a batch is being written share the next one."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Batcher(Generic[In, Out]):
    """Runs `write(items)` for whatever accumulated since the last write, one write at a time.

    No caller waits for a timer: with one caller in flight a batch is that caller alone. A
    failed batch is retried item by item, so one bad item fails only its own caller.
    """

    def __init__(
        self, write: Callable[[Sequence[In]], Awaitable[Sequence[Out]]], *, max_batch: int = 200
    ) -> None:
        self._write = write
        self._max = max_batch
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._writing: list[asyncio.Future[Out]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, item: In) -> Out:
        """Write `item` with its batch; its result, or the error its own write raised."""
        if self._closed:
            raise RuntimeError("shutting down")
        if self._task is None or self._task.done():
            # in a context of its own, not the first caller's: a batch works for many callers,
            # and its statements must not show in that one's trace (each item carries its own)
            self._task = asyncio.create_task(self._run(), context=contextvars.Context())
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wake.set()
        return await future

    async def close(self) -> None:
        """Stop writing: the callers of the write in flight and of those pending get an error
        (what the write in flight did may or may not be committed), later ones too."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for future in [*self._writing, *(future for _, future in self._pending)]:
            if not future.done():
                future.set_exception(RuntimeError("shutting down"))
        self._pending.clear()
        self._writing.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch, self._pending = self._pending[: self._max], self._pending[self._max :]
                await self._flush(batch)

    async def _flush(self, batch: list[tuple[In, asyncio.Future[Out]]]) -> None:
        live = [(item, future) for item, future in batch if not future.done()]
        if not live:
            return
        self._writing = [future for _, future in live]
        try:
            results = await self._write([item for item, _ in live])
        except Exception as exc:
            if len(live) == 1:
                if not live[0][1].done():
                    live[0][1].set_exception(exc)
                return
            for single in live:  # find the bad one; the others still succeed
                await self._flush([single])
            return
        for (_, future), result in zip(live, results, strict=True):
            if not future.done():
                future.set_result(result)
