"""Hostile records interleaved with good ones, on both topics the services consume: every good
record is processed once, every bad one is handled (dead-lettered with a reason, whole), no
partition is stuck, and the log grows by a few lines per bad record at most."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import topics
from shared.events import EventType, new_event
from tests.conftest import Running
from tests.support import eventually, submission


@dataclass(frozen=True)
class Planned:
    good: bool
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    marker: str = ""  # a good record's external id (submitted) or event id (events)


HEADER_NAMES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12
)
HEADERS = st.lists(
    st.tuples(
        st.one_of(st.just("traceparent"), st.just("event-type"), HEADER_NAMES),
        st.binary(max_size=64),
    ),
    max_size=4,
)
DEEP = st.integers(min_value=65, max_value=20_000).map(
    lambda n: b'{"type":"complaint.submitted","data":' + b"[" * n + b"]" * n + b"}"
)
HOSTILE_VALUES = st.one_of(
    st.binary(max_size=300),
    DEEP,
    st.just(b"{" + b'"a":' * 3 + b'"' + b"\xff" * 10 + b'"}'),  # not UTF-8 inside a string
    st.builds(lambda: b'{"padding": "' + b"p" * (1024 * 1024 + 10) + b'"}'),  # past 1 MiB
    st.just(b"[]"),
    st.just(b""),
)
HOSTILE = st.builds(
    lambda key, value, headers: Planned(False, key, value, headers),
    st.one_of(st.none(), st.binary(max_size=40)),
    HOSTILE_VALUES,
    HEADERS,
)


def _good_submission(headers: list[tuple[str, bytes]]) -> Planned:
    data = submission("phone")
    value = new_event(type=EventType.SUBMITTED, source="fuzz", data=data).to_bytes()
    key = topics.submission_key("phone", data["external_id"]).encode()
    # a good record's headers may be garbage too (it is processed on its content), but a type
    # header naming another type would rightly have it skipped: keep that one truthful
    headers = [(n, v) for n, v in headers if n != "event-type"]
    return Planned(True, key, value, headers, data["external_id"])


def _good_event(headers: list[tuple[str, bytes]]) -> Planned:
    complaint_id = str(uuid.uuid4())
    # a type resolution keeps on its timeline (it skips its own decisions, such as
    # complaint.acknowledged, whoever claims to send them) and notify on its stream
    event = new_event(
        type=EventType.NOTIFICATION_SENT,
        source="fuzz",
        subject=complaint_id,
        data={"complaint_id": complaint_id, "actor": "fuzz", "kind": "receipt"},
    )
    headers = [(n, v) for n, v in headers if n != "event-type"]
    return Planned(True, complaint_id.encode(), event.to_bytes(), headers, event.id)


def _plans(good: Any) -> st.SearchStrategy[list[Planned]]:
    return st.lists(st.one_of(HEADERS.map(good), HOSTILE), min_size=2, max_size=8).filter(
        lambda plan: any(p.good for p in plan)
    )


class Lines(logging.Handler):
    """Counts the warning-and-above lines the services log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def _produce(running: Running, topic: str, plan: list[Planned], partition: int) -> list[int]:
    producer = AIOKafkaProducer(
        bootstrap_servers=running.settings.kafka_bootstrap,
        acks="all",
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    try:
        offsets = []
        for p in plan:
            meta = await producer.send_and_wait(
                topic, p.value, key=p.key, headers=p.headers, partition=partition
            )
            offsets.append(meta.offset)
        return offsets
    finally:
        await producer.stop()


async def _dead_lettered(
    running: Running, schema: str, topic: str, partition: int, offsets: list[int]
) -> dict[int, Any]:
    rows = await running.sql(
        f'SELECT "offset", reason_code, reason, value FROM {schema}.deadletters '
        'WHERE topic = $1 AND partition = $2 AND "offset" = ANY($3::bigint[])',
        topic,
        partition,
        offsets,
    )
    return {r["offset"]: r for r in rows}


async def _check(
    running: Running,
    topic: str,
    plan: list[Planned],
    partition: int,
    processed: Any,
    schemas: tuple[str, ...],
) -> None:
    root = logging.getLogger()
    lines = Lines()
    root.addHandler(lines)
    try:
        offsets = await _produce(running, topic, plan, partition)
        bad = [o for o, p in zip(offsets, plan, strict=True) if not p.good]
        good = [p.marker for p in plan if p.good]

        async def settled() -> bool:
            if not await processed(good):
                return False
            for schema in schemas:
                if len(await _dead_lettered(running, schema, topic, partition, bad)) < len(bad):
                    return False
            return True

        await eventually(settled, timeout_s=45, what="every record handled")
    finally:
        root.removeHandler(lines)
    for schema in schemas:
        letters = await _dead_lettered(running, schema, topic, partition, bad)
        for offset, p in zip(offsets, plan, strict=True):
            if p.good:
                assert offset not in letters, f"{schema} dead-lettered a good record"
            else:
                letter = letters[offset]
                assert letter["reason_code"] and letter["reason"]
                assert bytes(letter["value"] or b"") == p.value  # kept whole
    assert lines.count <= 5 + 3 * len(bad), f"{lines.count} log lines for {len(bad)} bad records"


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=_plans(_good_submission), partition=st.integers(0, 7))
async def test_hostile_submissions_among_good_ones(running: Running, plan, partition):
    async def processed(external_ids: list[str]) -> bool:
        rows = await running.sql(
            "SELECT external_id, count(*) AS n FROM intake.complaints "
            "WHERE external_id = ANY($1::text[]) GROUP BY 1",
            external_ids,
        )
        assert all(r["n"] == 1 for r in rows)
        return len(rows) == len(external_ids)

    await _check(running, topics.SUBMITTED, plan, partition, processed, ("intake",))


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(plan=_plans(_good_event), partition=st.integers(0, 7))
async def test_hostile_events_among_good_ones(running: Running, plan, partition):
    async def processed(event_ids: list[str]) -> bool:
        timeline = await running.sql(
            "SELECT count(*) AS n FROM resolution.timeline WHERE event_id = ANY($1::text[])",
            event_ids,
        )
        stream = await running.sql(
            "SELECT count(*) AS n FROM notify.stream_events WHERE event_id = ANY($1::text[])",
            event_ids,
        )
        return timeline[0]["n"] == len(event_ids) == stream[0]["n"]

    # intake's follower may skip a hostile record unread when its type header names a type it
    # does not follow; resolution and notify read everything
    await _check(running, topics.EVENTS, plan, partition, processed, ("resolution", "notify"))
