"""A batch whose set-based apply fails is redone record by record: the good records land once,
the poison one is dead-lettered with `processing_error`, nothing is half-applied."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import db, kafka
from shared.kafka import Record, Rejected
from shared.telemetry import build_tracer_provider, drops_unsampled_children
from shared.telemetry import tracer as tracer_of
from tests.conftest import shared_schema


class Poison(Exception):
    """What a bug in `apply` looks like to the consumer: not transient, not a rejection."""


def _record(offset: int, value: bytes) -> Record:
    return Record(topic="t.v1", partition=3, offset=offset, key=b"k", value=value, headers=())


def _parse(record: Record) -> str:
    text = (record.value or b"").decode()
    if text == "unreadable":
        raise Rejected("not_json", "the value is not JSON")
    return text


async def _apply(conn: db.Conn, items: list[tuple[str, dict[str, str]]]) -> None:
    await conn.execute(
        "INSERT INTO applied (value) SELECT unnest($1::text[])", [v for v, _ in items]
    )
    if any(v == "poison" for v, _ in items):
        raise Poison("the apply step failed")  # after writing: the writes must be undone


async def test_a_failing_batch_is_redone_one_by_one_and_only_the_poison_is_deadlettered(
    database: str,
):
    async with shared_schema(database, "fallback") as (_, pool):
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE applied (value text PRIMARY KEY)")
        records = [
            _record(10, b"one"),
            _record(11, b"poison"),
            _record(12, b"unreadable"),
            _record(13, b"two"),
        ]

        await kafka.process_batch_together(
            pool=pool,
            tracer=trace.get_tracer("test"),
            consumer=kafka.Consumer("fallback-test"),
            records=records,
            parse=_parse,
            apply=_apply,
        )

        async with pool.acquire() as conn:
            applied = [r["value"] for r in await conn.fetch("SELECT value FROM applied ORDER BY 1")]
            letters = [
                json.loads(r["value"])["data"]
                for r in await conn.fetch("SELECT value FROM outbox ORDER BY id")
            ]
        assert applied == ["one", "two"]  # each once: the failed set-based attempt rolled back
        assert sorted((d["offset"], d["reason_code"]) for d in letters) == [
            (11, "processing_error"),
            (12, "not_json"),
        ]
        assert all(d["consumer"] == "fallback-test" for d in letters)


UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _count_spans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The offsets of the records a process span is started for, in order."""
    started: list[int] = []
    start = kafka._process_span

    def counted(tracer: Any, record: Record, consumer: str) -> Any:
        started.append(record.offset)
        return start(tracer, record, consumer)

    monkeypatch.setattr(kafka, "_process_span", counted)
    return started


async def test_an_unsampled_record_gets_no_span_and_its_context_goes_on_unchanged(
    database: str, monkeypatch: pytest.MonkeyPatch
):
    # with nothing exporting, a record's span would record nothing: none is started and the
    # context it came with is what `apply` continues (same trace, still unsampled), as the
    # relay does; a sampled record, or one with a tracestate, still gets its span
    exporter = InMemorySpanExporter()
    tracer = tracer_of(build_tracer_provider("batch", processors=[SimpleSpanProcessor(exporter)]))
    assert drops_unsampled_children(tracer)
    seen: list[dict[str, str]] = []

    async def apply(conn: db.Conn, items: list[tuple[str, dict[str, str]]]) -> None:
        seen.extend(headers for _, headers in items)

    def traced(offset: int, *headers: tuple[str, bytes]) -> Record:
        return Record(
            topic="t.v1", partition=0, offset=offset, key=b"k", value=b"v", headers=headers
        )

    started = _count_spans(monkeypatch)
    async with shared_schema(database, "carried") as (_, pool):
        await kafka.process_batch_together(
            pool=pool,
            tracer=tracer,
            consumer=kafka.Consumer("carried-test"),
            records=[
                traced(1, ("traceparent", UNSAMPLED.encode())),
                traced(2, ("traceparent", SAMPLED.encode())),
                traced(3, ("traceparent", UNSAMPLED.encode()), ("tracestate", b"a=b")),
                traced(4, ("traceparent", b"garbage\xff")),
            ],
            parse=_parse,
            apply=apply,
        )
    assert started == [2, 3, 4]  # no span, even a non-recording one, for the first
    assert seen[0] == {"traceparent": UNSAMPLED}
    assert seen[1]["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert seen[1]["traceparent"] != SAMPLED  # its own span's id: a child of the record's
    assert seen[2]["tracestate"] == "a=b"
    assert not seen[3]["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    recorded = {
        s.attributes["messaging.kafka.message.offset"]
        for s in exporter.get_finished_spans()
        if s.name == "t.v1 process" and s.attributes
    }
    assert recorded == {2, 4}  # the sampled one, and the new trace a bad traceparent starts


async def test_a_carried_record_redone_alone_runs_in_the_context_it_came_with(database: str):
    # a batch that fails is redone record by record; one carried without a span runs in its
    # own trace then, so what it writes (with the current context) continues that trace
    tracer = tracer_of(build_tracer_provider("batch", processors=[]))
    traces: dict[str, int] = {}

    async def apply(conn: db.Conn, items: list[tuple[str, dict[str, str]]]) -> None:
        if len(items) > 1:
            raise Poison("the batch fails as a whole")
        traces[items[0][0]] = trace.get_current_span().get_span_context().trace_id

    record = Record(
        topic="t.v1",
        partition=0,
        offset=1,
        key=b"k",
        value=b"one",
        headers=(("traceparent", UNSAMPLED.encode()),),
    )
    async with shared_schema(database, "carried_alone") as (_, pool):
        await kafka.process_batch_together(
            pool=pool,
            tracer=tracer,
            consumer=kafka.Consumer("carried-alone-test"),
            records=[record, _record(2, b"two")],
            parse=_parse,
            apply=apply,
        )
    assert traces["one"] == int(UNSAMPLED.split("-")[1], 16)


async def test_a_record_without_a_trace_starts_an_unsampled_one_without_a_span(
    database: str, monkeypatch: pytest.MonkeyPatch
):
    # nothing exports: a new trace would not be sampled, so a record that came without a
    # `traceparent` gets a new trace's context with no span started; one whose traceparent
    # is malformed still takes the span's path (a new trace as well)
    tracer = tracer_of(build_tracer_provider("batch", processors=[]))
    started = _count_spans(monkeypatch)
    seen: list[dict[str, str]] = []

    async def apply(conn: db.Conn, items: list[tuple[str, dict[str, str]]]) -> None:
        seen.extend(headers for _, headers in items)

    garbage = Record(
        topic="t.v1", partition=0, offset=3, key=b"k", value=b"v", headers=(("traceparent", b"x"),)
    )
    async with shared_schema(database, "new_roots") as (_, pool):
        await kafka.process_batch_together(
            pool=pool,
            tracer=tracer,
            consumer=kafka.Consumer("new-roots-test"),
            records=[_record(1, b"one"), _record(2, b"two"), garbage],
            parse=_parse,
            apply=apply,
        )
    assert started == [3]
    parents = [headers["traceparent"] for headers in seen]
    for parent in parents:
        version, trace_id, span_id, flags = parent.split("-")
        assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
        assert int(trace_id, 16) and int(span_id, 16)
        assert not int(flags, 16) & 1  # not sampled
    assert parents[0][-2:] == parents[2][-2:]  # the flags a started span gives
    assert len({parent.split("-")[1] for parent in parents}) == 3  # a trace each
