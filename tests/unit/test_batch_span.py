"""A batch applied together runs in a span of its own, which never records exception text (it
may quote personal data: asyncpg quotes the offending argument)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared import kafka


def test_a_failing_batch_leaves_no_exception_text_in_its_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    records = [tracer.start_span(f"record {n}") for n in range(3)]
    good = [(SimpleNamespace(topic="complaints.submitted.v1"), None, {}) for _ in records]
    with pytest.raises(ValueError), kafka._batch_span(tracer, good, records):  # type: ignore[arg-type]
        assert trace.get_current_span().get_span_context().trace_id == (
            records[0].get_span_context().trace_id
        )
        raise ValueError("invalid input for query argument $2: 'Sanne de Vries'")
    [batch] = [s for s in exporter.get_finished_spans() if s.name.endswith(" apply")]
    assert batch.parent is not None
    assert batch.parent.span_id == records[0].get_span_context().span_id
    assert {link.context.span_id for link in batch.links} == {
        r.get_span_context().span_id for r in records[1:]
    }
    assert not batch.events
    assert "Sanne" not in (batch.status.description or "")
