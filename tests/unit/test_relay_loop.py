"""The relay loop: a wake-up that arrives while it is draining is not lost; each row's outcome
is its own; the trace context each message carries."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer

from shared.outbox import OutboxRelay, drops_unsampled_children, sampled_out_headers, wire_headers
from shared.telemetry import build_tracer_provider, extract_context, tracer


class ScriptedRelay(OutboxRelay):
    """A relay whose drains are timed instead of reading a database."""

    def __init__(self) -> None:
        super().__init__(pool=None, send=None, tracer=NoOpTracer(), poll_interval_s=5.0)  # type: ignore[arg-type]
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


class FakeProducer:
    """Answers each send as scripted: an ack, a failure of the future, or a raise at once."""

    def __init__(self, script: dict[int, object]) -> None:
        self.script = script
        self.sent: list[int] = []

    async def send(self, topic, value, key, headers):
        n = int(value)
        self.sent.append(n)
        outcome = self.script.get(n, "ack")
        if outcome == "raise":
            raise KafkaTimeoutError()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result("ok")
        return future


def _rows(*keys: str) -> list[dict]:
    return [
        {"id": n, "topic": "t", "key": k.encode(), "value": str(n).encode(), "headers": {}}
        for n, k in enumerate(keys, start=1)
    ]


async def test_each_row_has_its_own_outcome_and_one_stream_never_reorders():
    producer = FakeProducer({1: KafkaTimeoutError(), 4: MessageSizeTooLargeError()})
    relay = OutboxRelay(pool=None, send=producer.send, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "a", "b", "b", "b"))  # type: ignore[arg-type]
    by_id = {o.row_id: o for o in outcomes}
    assert not by_id[1].sent and by_id[1].park_reason is None  # a passing failure: try again
    assert not by_id[2].sent  # acknowledged, but after a failed row of its stream: again, after
    assert by_id[3].sent  # another stream goes on
    assert by_id[4].park_reason and "MessageSizeTooLargeError" in by_id[4].park_reason
    assert by_id[5].sent  # parked rows do not hold their stream back


async def test_a_send_that_raises_stops_the_pass_but_keeps_what_was_acknowledged():
    producer = FakeProducer({3: "raise"})
    relay = OutboxRelay(pool=None, send=producer.send, tracer=NoOpTracer())  # type: ignore[arg-type]
    outcomes = await relay._publish(_rows("a", "b", "c", "d"))  # type: ignore[arg-type]
    assert [o.sent for o in outcomes] == [True, True, False, False]
    assert producer.sent == [1, 2, 3]  # nothing handed over after the failure


UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class HeaderProducer(FakeProducer):
    def __init__(self) -> None:
        super().__init__({})
        self.headers: list[dict[str, str]] = []

    async def send(self, topic, value, key, headers):
        self.headers.append({k: v.decode() for k, v in headers})
        return await super().send(topic, value, key, headers)


def _traced_row(traceparent: str, **more: str) -> dict:
    stored = {"traceparent": traceparent, **more, "content-type": "ct", "event-type": "e.t"}
    return {"id": 1, "topic": "t", "key": b"k", "value": b"1", "headers": stored}


async def _published(tracer, row: dict) -> dict[str, str]:
    producer = HeaderProducer()
    relay = OutboxRelay(pool=None, send=producer.send, tracer=tracer)  # type: ignore[arg-type]
    (outcome,) = await relay._publish([row])  # type: ignore[arg-type]
    assert outcome.sent
    return producer.headers[0]


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
