"""`telemetry.unsampled_roots`: a new trace's context without a span, only where a span would
record nothing."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.telemetry import build_tracer_provider, inject_headers, unsampled_roots
from shared.telemetry import tracer as tracer_of


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
