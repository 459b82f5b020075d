"""The relay loop: a wake-up that arrives while it is draining is not lost; each row's outcome
is its own, rows sent in batches per partition; the trace context each message carries."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer

from shared.outbox import OutboxRelay, sampled_out_headers, wire_headers
from shared.telemetry import (
    build_tracer_provider,
    drops_unsampled_children,
    extract_context,
    tracer,
)


class ScriptedRelay(OutboxRelay):
    """A relay whose drains are timed instead of reading a database."""

    def __init__(self) -> None:
        super().__init__(pool=None, publisher=None, tracer=NoOpTracer(), poll_interval_s=5.0)  # type: ignore[arg-type]
        self.drains: list[float] = []

    async def drain_once(self) -> int:
        self.drains.append(time.monotonic())
        if len(self.drains) == 1:
            await asyncio.sleep(0.05)
            self.wake()  # a commit lands while the first drain is still publishing
        if len(self.drains) == 2:
            self.stop()
        return 0


async def test_a_wake_during_a_drain_starts_the_next_drain_at_once():
    relay = ScriptedRelay()
    await asyncio.wait_for(relay.run(), timeout=2)  # the poll interval is 5 s
    assert len(relay.drains) == 2
    assert relay.drains[1] - relay.drains[0] < 0.5


class FakePublisher:
    """Batches of `capacity` rows, a partition per key unless given; each batch answered (on
    the next turn of the loop) as its rows are scripted: an ack, a failure of its
    acknowledgement (its first scripted row's), or a raise when handed over; a row scripted
    "huge" fits no batch."""

    def __init__(
        self,
        script: dict[int, object] | None = None,
        *,
        capacity: int = 100,
        partitions: dict[bytes, int] | None = None,
    ) -> None:
        self.script = script or {}
        self.capacity = capacity
        self.partitions = dict(partitions or {})
        self.sent: list[int] = []  # rows handed over, in order
        self.handed: list[tuple[int, list[int]]] = []  # (partition, rows) per batch
        self.events: list[tuple[str, tuple[int, ...]]] = []
        self.headers: list[dict[str, str]] = []

    async def partitioner(self, topic):
        return lambda key: self.partitions.setdefault(key, len(self.partitions))

    def batch(self):
        return []

    def append(self, batch, key, value, headers):
        if self.script.get(int(value)) == "huge":
            raise MessageSizeTooLargeError()
        if len(batch) >= self.capacity:
            return False
        batch.append((int(value), {k: v.decode() for k, v in headers}))
        return True

    async def send(self, batch, topic, partition):
        rows = [n for n, _ in batch]
        self.sent.extend(rows)
        self.handed.append((partition, rows))
        self.headers.extend(h for _, h in batch)
        self.events.append(("hand", tuple(rows)))
        outcomes = [self.script.get(n, "ack") for n in rows]
        if "raise" in outcomes:
            raise KafkaTimeoutError()
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def answer() -> None:
            self.events.append(("ack", tuple(rows)))
            if failures:
                future.set_exception(failures[0])
            else:
                future.set_result("ok")

        asyncio.get_running_loop().call_soon(answer)
        return future


def _rows(*keys: str) -> list[dict]:
    return [
        {"id": n, "topic": "t", "key": k.encode(), "value": str(n).encode(), "headers": {}}
        for n, k in enumerate(keys, start=1)
    ]


async def test_each_row_has_its_own_outcome_and_one_stream_never_reorders():
    publisher = FakePublisher({1: KafkaTimeoutError(), 4: MessageSizeTooLargeError()})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "a", "b", "b", "b"))  # type: ignore[arg-type]
    by_id = {o.row_id: o for o in outcomes}
    assert not by_id[1].sent and by_id[1].park_reason is None  # a passing failure: try again
    assert not by_id[2].sent  # after a failed row of its stream: again, after
    assert by_id[3].sent  # another stream goes on
    assert by_id[4].park_reason and "MessageSizeTooLargeError" in by_id[4].park_reason
    assert by_id[5].sent  # parked rows do not hold their stream back


async def test_a_send_that_raises_stops_the_pass_but_keeps_what_was_acknowledged():
    publisher = FakePublisher({3: "raise"})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "b", "c", "d"))  # type: ignore[arg-type]
    assert [o.sent for o in outcomes] == [True, True, False, False]
    assert publisher.sent == [1, 2, 3]  # nothing handed over after the failure


async def test_rows_go_in_one_batch_per_partition_in_id_order():
    publisher = FakePublisher(partitions={b"a": 0, b"b": 1, b"c": 0})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "b", "c", "a", "b", "c"))  # type: ignore[arg-type]
    assert all(o.sent for o in outcomes)
    assert publisher.handed == [(0, [1, 3, 4, 6]), (1, [2, 5])]


async def test_a_partitions_next_batch_waits_for_the_last_ack_and_a_passing_failure_ends_it():
    # partition 0: batches [1, 2] and [3, 4]; partition 1: [5, 6] and [7]
    publisher = FakePublisher(
        {1: KafkaTimeoutError()}, capacity=2, partitions={b"a": 0, b"b": 0, b"c": 1}
    )
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "b", "a", "b", "c", "c", "c"))  # type: ignore[arg-type]
    assert [o.sent for o in outcomes] == [False] * 4 + [True] * 3
    assert [o.park_reason for o in outcomes] == [None] * 7
    # the failed batch's partition hands nothing more over in this pass (3 and 4 share its keys)
    assert [rows for partition, rows in publisher.handed if partition == 0] == [[1, 2]]
    events = publisher.events
    assert events.index(("ack", (5, 6))) < events.index(("hand", (7,)))
    assert events.index(("hand", (5, 6))) < events.index(("ack", (1, 2)))  # partitions overlap


async def test_a_batch_refused_whole_for_good_is_sent_again_row_by_row():
    publisher = FakePublisher({3: MessageSizeTooLargeError()}, partitions={b"a": 0, b"b": 0})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "b", "a", "b"))  # type: ignore[arg-type]
    assert [o.sent for o in outcomes] == [True, True, False, True]
    assert [o.park_reason is not None for o in outcomes] == [False, False, True, False]
    assert publisher.handed == [(0, [1, 2, 3, 4]), (0, [1]), (0, [2]), (0, [3]), (0, [4])]


async def test_a_passing_failure_while_sending_row_by_row_stops_the_partition():
    script: dict[int, object] = {2: MessageSizeTooLargeError(), 3: KafkaTimeoutError()}
    publisher = FakePublisher(script, partitions={b"a": 0, b"b": 0})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "b", "a", "b"))  # type: ignore[arg-type]
    assert [o.sent for o in outcomes] == [True, False, False, False]
    assert [o.park_reason is not None for o in outcomes] == [False, True, False, False]
    assert publisher.handed[-1] == (0, [3])  # row 4 waits for the next pass, after row 3


async def test_a_row_too_large_for_any_batch_is_parked_alone():
    publisher = FakePublisher({2: "huge"})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "a", "a"))  # type: ignore[arg-type]
    assert [o.sent for o in outcomes] == [True, False, True]
    assert outcomes[1].park_reason == "MessageSizeTooLargeError: 1 bytes to t"
    assert publisher.handed == [(0, [1, 3])]


async def test_a_huge_first_row_of_a_partition_leaves_no_empty_batch():
    publisher = FakePublisher({1: "huge"})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "a"))  # type: ignore[arg-type]
    assert [o.sent for o in outcomes] == [False, True]
    assert publisher.handed == [(0, [2])]


async def test_a_topic_that_refuses_batches_but_takes_rows_alone_gets_batches_of_one(caplog):
    class Small(FakePublisher):
        async def send(self, batch, topic, partition):
            if len(batch) > 1:
                self.handed.append((partition, [n for n, _ in batch]))
                raise MessageSizeTooLargeError()
            return await super().send(batch, topic, partition)

    publisher = Small(partitions={b"a": 0})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=NoOpTracer())  # type: ignore[arg-type]
    first = await relay._publish(_rows("a", "a"))  # type: ignore[arg-type]
    assert [o.sent for o in first] == [True, True]
    assert "message size limit" in caplog.text
    publisher.handed.clear()
    second = await relay._publish(_rows("a", "a", "a"))  # type: ignore[arg-type]
    assert [o.sent for o in second] == [True, True, True]
    assert publisher.handed == [(0, [1]), (0, [2]), (0, [3])]  # no refused batch first


async def test_rows_a_failure_kept_from_going_end_their_span_in_error():
    exporter = InMemorySpanExporter()
    recording = tracer(build_tracer_provider("relay", processors=[SimpleSpanProcessor(exporter)]))
    publisher = FakePublisher({1: KafkaTimeoutError()}, capacity=1, partitions={b"a": 0})
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=recording)  # type: ignore[arg-type]
    rows = [{**row, "headers": {"traceparent": SAMPLED}} for row in _rows("a", "a")]
    outcomes = await relay._publish(rows)  # type: ignore[arg-type]
    assert not any(o.sent for o in outcomes)
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    assert all(span.status.status_code is trace.StatusCode.ERROR for span in spans)


UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _traced_row(traceparent: str, **more: str) -> dict:
    stored = {"traceparent": traceparent, **more, "content-type": "ct", "event-type": "e.t"}
    return {"id": 1, "topic": "t", "key": b"k", "value": b"1", "headers": stored}


async def _published(tracer, row: dict) -> dict[str, str]:
    publisher = FakePublisher()
    relay = OutboxRelay(pool=None, publisher=publisher, tracer=tracer)  # type: ignore[arg-type]
    (outcome,) = await relay._publish([row])  # type: ignore[arg-type]
    assert outcome.sent
    return publisher.headers[0]


async def test_an_unsampled_row_keeps_its_trace_as_a_sampled_out_publish_span_would():
    sampled_out = tracer(build_tracer_provider("relay"))  # nothing to export: parent-based off
    assert drops_unsampled_children(sampled_out)
    sent = await _published(sampled_out, _traced_row(UNSAMPLED))
    assert sent == {"content-type": "ct", "event-type": "e.t", "traceparent": UNSAMPLED}
    # what the SDK's publish span would have sent: the same trace, unsampled, nothing recorded
    exporter = InMemorySpanExporter()
    recording = tracer(build_tracer_provider("relay", processors=[SimpleSpanProcessor(exporter)]))
    span = recording.start_span("t publish", context=extract_context({"traceparent": UNSAMPLED}))
    by_span = dict(wire_headers({}, trace.set_span_in_context(span)))["traceparent"].decode()
    assert by_span.split("-")[1] == UNSAMPLED.split("-")[1]
    assert by_span.endswith("-00") and not span.is_recording()
    await _published(recording, _traced_row(UNSAMPLED))
    assert not exporter.get_finished_spans()


@pytest.mark.parametrize(
    ("traceparent", "more"),
    [
        (SAMPLED, {}),
        (UNSAMPLED, {"tracestate": "vendor=1"}),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-00", {}),
        ("garbage", {}),
    ],
)
async def test_other_rows_get_a_publish_span_of_their_own(traceparent, more):
    exporter = InMemorySpanExporter()
    recording = tracer(build_tracer_provider("relay", processors=[SimpleSpanProcessor(exporter)]))
    sent = await _published(recording, _traced_row(traceparent, **more))
    assert sampled_out_headers(_traced_row(traceparent, **more)["headers"]) is None
    assert sent["traceparent"] != traceparent  # the publish span's own context
    if traceparent == SAMPLED:
        (span,) = exporter.get_finished_spans()
        assert span.name == "t publish"
        assert sent["traceparent"].split("-")[1] == SAMPLED.split("-")[1]


def test_a_legacy_type_header_is_renamed_on_the_sampled_out_path_too():
    stored = {"traceparent": UNSAMPLED, "ce_type": "e.t"}
    assert sampled_out_headers(stored) == [
        ("event-type", b"e.t"),
        ("traceparent", UNSAMPLED.encode()),
    ]


def test_a_sampled_out_row_goes_out_with_its_headers_as_stored():
    stored = {"event-type": "e.t", "traceparent": UNSAMPLED, "content-type": "application/json"}
    assert sampled_out_headers(stored) == [
        ("event-type", b"e.t"),
        ("traceparent", UNSAMPLED.encode()),
        ("content-type", b"application/json"),
    ]
