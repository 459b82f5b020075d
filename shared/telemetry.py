"""Tracing: one tracer provider per service, W3C context in Kafka headers, no personal data."""

from __future__ import annotations

import contextlib
import os
import re
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Status, StatusCode

INSTRUMENTATION = "complaints"


def otlp_exporter_from_env(env: Mapping[str, str] | None = None) -> SpanExporter | None:
    """The OTLP span exporter the standard `OTEL_*` variables ask for, or None for no export."""
    env = os.environ if env is None else env
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() in ("none", ""):
        return None
    if not (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        return None
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()


def service_name(service: str, *, alone: bool) -> str:
    """`complaints-<service>`; `OTEL_SERVICE_NAME` wins when one service runs alone."""
    override = os.environ.get("OTEL_SERVICE_NAME")
    if alone and override:
        return override
    return f"complaints-{service}"


def build_tracer_provider(name: str, *, processors: Sequence[SpanProcessor] = ()) -> TracerProvider:
    """A tracer provider for one service: its own `service.name`, exporting as `OTEL_*` says.

    With nothing to export to (no endpoint, no processor) the spans this service starts are
    sampled out: they cost next to nothing, yet each still has its context, so `traceparent`
    travels on every message and a complaint keeps one trace id end to end. A trace a caller
    already sampled stays sampled (parent-based), so services downstream that do export still
    see it whole. Otherwise the SDK's sampler is used (`OTEL_TRACES_SAMPLER`, parent-based
    always-on by default).
    """
    exporter = otlp_exporter_from_env()
    sampler = None if exporter is not None or processors else ParentBased(ALWAYS_OFF)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}), sampler=sampler)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    for processor in processors:
        provider.add_span_processor(processor)
    return provider


def inject_headers(context: otel_context.Context | None = None) -> dict[str, str]:
    """The trace context (default: the current one) as W3C headers (`traceparent`,
    `tracestate`)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract_context(headers: Mapping[str, str] | Iterable[tuple[str, bytes]] | None) -> Any:
    """An OpenTelemetry context from W3C headers (a dict, or Kafka's list of byte pairs)."""
    if headers is None:
        return otel_context.Context()
    return propagate.extract(carrier(headers))


def carrier(headers: Mapping[str, str] | Iterable[tuple[str, bytes]]) -> dict[str, str]:
    """Headers as a propagator reads them: names in lower case, values as text."""
    if isinstance(headers, Mapping):
        return {k.lower(): v for k, v in headers.items()}
    return {k.lower(): v.decode("latin-1") for k, v in headers if v is not None}


# A W3C traceparent of version 00 whose sampled flag (bit 0 of the last byte) is clear, its
# ids not all zeros.
_UNSAMPLED_PARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]")


def sampled_out_parent(headers: Mapping[str, str]) -> str | None:
    """The `traceparent` of headers (as `carrier` writes them) whose trace is not sampled and
    can travel on unchanged where a tracer that `drops_unsampled_children` would start a span
    recording nothing; None when a span is needed: no well-formed unsampled `traceparent`, or
    a `tracestate` to carry."""
    parent = headers.get("traceparent")
    if parent is None or "tracestate" in headers or not _UNSAMPLED_PARENT.fullmatch(parent):
        return None
    return parent


def drops_unsampled_children(tracer: trace.Tracer) -> bool:
    """Whether `tracer` never records a span whose (remote) parent is not sampled: a
    parent-based sampler as `OTEL_TRACES_SAMPLER=parentbased_*` and `build_tracer_provider`
    configure it (`ParentBased`'s default for unsampled remote parents is always-off)."""
    sampler = getattr(tracer, "sampler", None)
    if not isinstance(sampler, ParentBased):
        return False
    description: str = sampler.get_description()  # type: ignore[no-untyped-call]
    return "remoteParentNotSampled:AlwaysOffSampler" in description


# The sampler `build_tracer_provider` sets with nothing to export to, and the headers of the
# W3C propagators (OpenTelemetry's default) that a minted `traceparent` stands in for.
_QUIET_SAMPLER = ParentBased(ALWAYS_OFF).get_description()  # type: ignore[no-untyped-call]
_W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})
_ROOTS: weakref.WeakKeyDictionary[trace.Tracer, Callable[[], str] | None] = (
    weakref.WeakKeyDictionary()
)


def unsampled_roots(tracer: trace.Tracer) -> Callable[[], str] | None:
    """A maker of the `traceparent` a span without a parent would pass on, for a tracer that
    samples no new trace (`build_tracer_provider`'s with nothing to export to) while contexts
    travel in W3C headers: such a span records nothing, so a consumer can give a record that
    came without a trace context its new trace's context without starting one (a span costs
    about 4 µs, making it current and reading its context back as much again). The ids come
    from the tracer's own generator, the flags are those of a span it starts without a parent.
    None for any other tracer, or another propagator (b3, jaeger: its own headers). Decided
    once per tracer: the propagator is set before any record is consumed."""
    try:
        return _ROOTS[tracer]
    except (KeyError, TypeError):  # (TypeError: a tracer that takes no weak reference)
        pass
    maker = _roots_of(tracer)
    with contextlib.suppress(TypeError):
        _ROOTS[tracer] = maker
    return maker


def _roots_of(tracer: trace.Tracer) -> Callable[[], str] | None:
    sampler = getattr(tracer, "sampler", None)
    ids = getattr(tracer, "id_generator", None)
    if ids is None or not isinstance(sampler, ParentBased):
        return None
    if sampler.get_description() != _QUIET_SAMPLER:  # type: ignore[no-untyped-call]
        return None
    if not set(propagate.get_global_textmap().fields) <= _W3C_FIELDS:
        return None
    probe = tracer.start_span("probe", context=otel_context.Context())
    flags = f"{probe.get_span_context().trace_flags:02x}"
    probe.end()

    def new_root() -> str:
        return f"00-{ids.generate_trace_id():032x}-{ids.generate_span_id():016x}-{flags}"

    return new_root


def failed(span: trace.Span, exc: BaseException) -> None:
    """Mark `span` failed with the exception's type only (its text may quote personal data)."""
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def tracer(provider: trace.TracerProvider) -> trace.Tracer:
    return provider.get_tracer(INSTRUMENTATION)


def sampled() -> bool:
    """Whether the current trace is sampled (its spans are recorded)."""
    return bool(trace.get_current_span().get_span_context().trace_flags.sampled)


@contextlib.contextmanager
def traced(headers: Mapping[str, str]) -> Iterator[None]:
    """Make the trace context in `headers` current (work done in a batch on behalf of one
    record shows in that record's trace)."""
    token = otel_context.attach(extract_context(headers))
    try:
        yield
    finally:
        otel_context.detach(token)
