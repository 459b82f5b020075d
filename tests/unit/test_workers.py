"""The worker loop: steps until stopped, woken early, and a failing step backs off and goes on."""

from __future__ import annotations

import asyncio

from shared.workers import Loop


async def test_a_wake_cuts_the_wait_short_and_stop_ends_the_loop() -> None:
    steps: list[float] = []
    loop: Loop

    async def step() -> float:
        steps.append(asyncio.get_running_loop().time())
        return 60.0  # nothing due for a minute

    loop = Loop("test", step)
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.05)
    loop.wake()
    await asyncio.sleep(0.05)
    loop.stop()
    await asyncio.wait_for(task, timeout=1)
    assert len(steps) == 2


async def test_a_wake_during_a_step_is_kept() -> None:
    calls = 0
    loop: Loop

    async def step() -> float:
        nonlocal calls
        calls += 1
        if calls == 1:
            loop.wake()  # work committed while this step ran
        if calls == 2:
            loop.stop()
        return 60.0

    loop = Loop("test", step)
    await asyncio.wait_for(loop.run(), timeout=1)
    assert calls == 2


async def test_a_failing_step_is_retried_with_back_off(caplog) -> None:
    calls = 0
    loop: Loop

    async def step() -> float:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("database away")
        loop.stop()
        return 0.0

    loop = Loop("test", step, backoff_s=0.01)
    await asyncio.wait_for(loop.run(), timeout=1)
    assert calls == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "shared.workers"]
    assert warnings == [
        "test failed (ConnectionError); retrying in 0.0s",
        "test failed (ConnectionError); retrying in 0.0s",
    ]
