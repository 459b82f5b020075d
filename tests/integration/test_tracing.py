"""One trace follows a complaint from HTTP through every service, with no personal data."""

from __future__ import annotations

from opentelemetry.trace import SpanKind

from tests.conftest import Running
from tests.support import eventually, submission

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


async def test_one_trace_covers_http_intake_resolution_and_notify(running: Running, smtp):
    key = await running.channel_key("web")
    data = submission("web", staff_involved=["emp-042"], desired_outcome="Een nieuwe jas")
    answer = await running.http.post(
        "/v1/complaints",
        json=data,
        headers={"Authorization": f"Bearer {key}", "traceparent": TRACEPARENT},
    )
    assert answer.status_code == 202
    await eventually(lambda: smtp.to(data["customer"]["email"]), what="receipt")

    def spans_of_trace():
        return [
            s
            for s in running.spans.get_finished_spans()
            if f"{s.context.trace_id:032x}" == TRACE_ID
        ]

    def covered():
        services = {s.resource.attributes["service.name"] for s in spans_of_trace()}
        names = {s.name for s in spans_of_trace()}
        # a consumer's span ends after its batch commits: the relay, woken by that commit,
        # may publish (and end its own span) before it, so wait for each consumer's span
        consuming = {
            s.resource.attributes["service.name"]
            for s in spans_of_trace()
            if s.kind == SpanKind.CONSUMER
        }
        done = {"complaints-intake", "complaints-resolution", "complaints-notify"} <= services
        return (
            done
            and {"complaints-resolution", "complaints-notify"} <= consuming
            and "notification deliver" in names
            and any(n.startswith("complaints.events.v1 process") for n in names)
        )

    await eventually(covered, what="spans from all three services")
    spans = spans_of_trace()
    by_service: dict[str, list] = {}
    for span in spans:
        by_service.setdefault(span.resource.attributes["service.name"], []).append(span)

    intake = by_service["complaints-intake"]
    server = [s for s in intake if s.kind == SpanKind.SERVER]
    assert [s.name for s in server] == ["POST /v1/complaints"]
    assert f"{server[0].parent.span_id:016x}" == "00f067aa0ba902b7"  # the channel's trace continued
    assert any(s.attributes.get("db.system") == "postgresql" for s in intake)
    # the relay's publish spans belong to the same trace
    assert any(s.kind == SpanKind.PRODUCER for s in intake)
    for service in ("complaints-resolution", "complaints-notify"):
        consumers = [s for s in by_service[service] if s.kind == SpanKind.CONSUMER]
        assert consumers, service
        assert any(s.attributes.get("db.system") == "postgresql" for s in by_service[service])

    personal = {
        data["customer"]["name"],
        data["customer"]["email"],
        data["customer"]["phone"],
        data["description"],
        data["desired_outcome"],
    }
    for span in spans:
        for attribute, value in (span.attributes or {}).items():
            for text in _strings(value):
                for secret in personal:
                    assert secret not in text, f"{span.name} {attribute} carries personal data"
