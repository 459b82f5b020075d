"""`telemetry.unsampled_roots`: a new trace's context without a span, only where a span would
record nothing, and only for a record that came with no `traceparent` at all."""

from __future__ import annotations

import pytest
from opentelemetry import propagate
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared import kafka
from shared.kafka import Record
from shared.telemetry import build_tracer_provider, inject_headers, unsampled_roots
from shared.telemetry import tracer as tracer_of

UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


@pytest.fixture(autouse=True)
def nothing_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_new_roots_are_minted_only_for_a_tracer_that_samples_no_new_trace() -> None:
    quiet = tracer_of(build_tracer_provider("quiet"))
    new_root = unsampled_roots(quiet)
    assert new_root is not None
    # what a root span of the same tracer passes on, but for the ids
    with quiet.start_as_current_span("root"):
        started = inject_headers()["traceparent"]
    minted = new_root()
    assert minted.split("-")[0] == started.split("-")[0]
    assert minted.split("-")[3] == started.split("-")[3]
    assert minted != new_root()
    exporting = tracer_of(
        build_tracer_provider("exporting", processors=[SimpleSpanProcessor(InMemorySpanExporter())])
    )
    assert unsampled_roots(exporting) is None  # its new traces are sampled: they need spans


class B3Like(TextMapPropagator):
    """A propagator whose context travels in headers of its own."""

    def extract(self, carrier, context=None, getter=None):  # type: ignore[no-untyped-def]
        return context

    def inject(self, carrier, context=None, setter=None):  # type: ignore[no-untyped-def]
        pass

    @property
    def fields(self) -> set[str]:
        return {"b3"}


def test_no_new_root_where_contexts_travel_in_other_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(propagate, "get_global_textmap", lambda: B3Like())
    assert unsampled_roots(tracer_of(build_tracer_provider("b3"))) is None
    monkeypatch.setattr(propagate, "get_global_textmap", lambda: TraceContextTextMapPropagator())
    assert unsampled_roots(tracer_of(build_tracer_provider("w3c"))) is not None


def _record(*headers: tuple[str, bytes | None]) -> Record:
    return Record(topic="t.v1", partition=0, offset=1, key=None, value=b"v", headers=headers)


@pytest.mark.parametrize(
    ("headers", "minted"),
    [
        ((), True),
        ((("tracestate", b"a=b"),), True),  # a tracestate alone is no context
        ((("traceparent", None),), True),  # a header without a value is none
        ((("Traceparent", b"garbage"),), False),  # any case: the span's path starts anew
        ((("traceparent", b""),), False),
    ],
)
def test_which_records_get_a_new_root(
    headers: tuple[tuple[str, bytes | None], ...], minted: bool
) -> None:
    def new_root() -> str:
        return "minted"

    carried = kafka._sampled_out_context(_record(*headers), new_root)
    assert carried == ({"traceparent": "minted"} if minted else None)


def test_an_unsampled_context_goes_on_as_it_came() -> None:
    def new_root() -> str:
        raise AssertionError("no new trace for a record that has one")

    carried = kafka._sampled_out_context(_record(("TraceParent", UNSAMPLED.encode())), new_root)
    assert carried == {"traceparent": UNSAMPLED}
