"""Consumers stay on the event loop: no thread hand-off per batch."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import pytest

from tests.conftest import Running
from tests.support import eventually, submission


async def test_a_batch_reaches_its_handler_without_a_worker_thread(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastStream's dependency injection runs what is synchronous in a worker thread (a
    `KafkaMessage` parameter was: one hand-off per batch, in every consumer); a complaint
    going through intake, resolution and notify must need none."""
    handed_off: list[Any] = []
    original = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        handed_off.append(func)
        return await original(func, *args, **kwargs)

    # every hand-off goes through anyio's
    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    answer = await running.http.post(
        "/v1/complaints",
        json=submission("web"),
        headers={"Authorization": f"Bearer {running.web_key}"},
    )
    assert answer.status_code == 202, answer.text
    complaint_id = answer.json()["complaint_id"]

    async def seen_by_all() -> bool:
        rows = await running.sql(
            "SELECT (SELECT count(*) FROM resolution.cases WHERE complaint_id = $1)"
            " + (SELECT count(*) FROM notify.stream_events WHERE complaint_id = $1"
            "    AND type = 'complaint.case_opened') AS n",
            complaint_id,
        )
        return bool(rows[0]["n"] == 2)

    await eventually(seen_by_all, what="resolution and notify to take the complaint")
    assert handed_off == []
