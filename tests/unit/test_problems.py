"""Every error answer is an RFC 9457 problem document, whoever raised it."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import BaseModel

from shared.web import (
    MAX_JSON_BODY_BYTES,
    PROBLEM,
    Problem,
    document_problems,
    install_problem_handlers,
    traced_route_class,
)

SECRET_TEXT = "Sanne de Vries, sanne@example.com"


class Action(BaseModel):
    action: str
    note: str | None = None


def _app(exporter: InMemorySpanExporter) -> FastAPI:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    router = APIRouter(route_class=traced_route_class(provider.get_tracer("test")))

    @router.post("/actions")
    async def act(body: Action) -> dict[str, str]:
        return {"action": body.action}

    @router.get("/crash")
    async def crash() -> None:
        raise RuntimeError(f"cannot store {SECRET_TEXT}")

    @router.get("/unavailable")
    async def unavailable() -> None:
        raise ConnectionRefusedError(f"no database for {SECRET_TEXT}")

    @router.get("/gone")
    async def gone() -> None:
        raise Problem(404, "Not found", "no such thing")

    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(router)
    return app


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def http(exporter: InMemorySpanExporter):
    transport = httpx.ASGITransport(app=_app(exporter), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def _problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    doc = answer.json()
    assert doc["status"] == status
    assert doc["type"] == "about:blank" and doc["title"] and doc["detail"]
    assert doc["instance"] == answer.request.url.path
    return doc


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def test_unknown_route_is_a_404_problem(http):
    _problem(await http.get("/nowhere"), 404)


async def test_wrong_method_is_a_405_problem_with_allow(http):
    answer = await http.delete("/actions")
    _problem(answer, 405)
    assert answer.headers["allow"] == "POST"


async def test_a_raised_problem_keeps_its_words(http):
    doc = _problem(await http.get("/gone"), 404)
    assert (doc["title"], doc["detail"]) == ("Not found", "no such thing")


async def test_an_unexpected_exception_is_a_500_problem_without_its_text(http, exporter, caplog):
    caplog.set_level(logging.DEBUG, logger="shared.web")
    answer = await http.get("/crash")
    doc = _problem(answer, 500)
    assert doc["title"] == "Internal Server Error"
    assert "Sanne" not in answer.text and "RuntimeError" not in answer.text
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert [r.getMessage() for r in above_debug] == ["unexpected RuntimeError answering GET /crash"]
    assert all(SECRET_TEXT not in r.getMessage() for r in above_debug)
    assert any(r.exc_info for r in caplog.records if r.levelno == logging.DEBUG)
    [span] = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 500
    assert span.status.status_code == StatusCode.ERROR
    assert not span.events  # the exception (and its text) is not recorded on the span
    assert SECRET_TEXT not in json.dumps(dict(span.attributes)) + str(span.status.description)


async def test_the_database_away_is_a_503_to_try_again_not_a_500(http, exporter, caplog):
    caplog.set_level(logging.DEBUG, logger="shared.web")
    answer = await http.get("/unavailable")
    doc = _problem(answer, 503)
    assert answer.headers["retry-after"] == "1"
    assert "Sanne" not in answer.text
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert [(r.levelno, r.getMessage()) for r in above_debug] == [
        (logging.WARNING, "unavailable: ConnectionRefusedError answering GET /unavailable")
    ]
    [span] = exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 503
    assert doc["title"] == "Service Unavailable"


@pytest.mark.parametrize("depth", [65, 1_000, 10_000, 100_000])
async def test_a_body_nested_too_deep_is_a_422_naming_the_body(http, depth):
    answer = await http.post(
        "/actions", content=_nested(depth), headers={"content-type": "application/json"}
    )
    doc = _problem(answer, 422)
    assert [(e["field"], e["rule"]) for e in doc["errors"]] == [("(body)", "json_too_deep")]


async def test_an_extra_field_nested_deep_in_a_valid_body_is_a_422(http):
    body = '{"action": "note", "extra": ' + _nested(1_000) + "}"
    answer = await http.post("/actions", content=body, headers={"content-type": "application/json"})
    doc = _problem(answer, 422)
    assert doc["errors"][0]["rule"] == "json_too_deep"


async def test_bodies_within_the_limits_are_parsed(http):
    body = {"action": "note", "note": json.dumps(json.loads(_nested(64)))}
    answer = await http.post("/actions", json=body)
    assert answer.status_code == 200 and answer.json() == {"action": "note"}
    answer = await http.post(
        "/actions",
        content='{"action": "note", "x": ' + _nested(63) + "}",
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 200  # 64 levels with the outer object: the limit, not past it


async def test_not_json_and_invalid_bodies_are_422_problems_naming_fields(http):
    answer = await http.post(
        "/actions", content=b"{nope", headers={"content-type": "application/json"}
    )
    doc = _problem(answer, 422)
    assert [(e["field"], e["rule"]) for e in doc["errors"]] == [("(body)", "json_invalid")]
    doc = _problem(await http.post("/actions", json={"note": SECRET_TEXT}), 422)
    assert [e["field"] for e in doc["errors"]] == ["action"]
    assert SECRET_TEXT not in json.dumps(doc)


async def test_an_oversized_json_body_is_a_413_problem(http):
    body = json.dumps({"action": "x" * MAX_JSON_BODY_BYTES})
    answer = await http.post("/actions", content=body, headers={"content-type": "application/json"})
    _problem(answer, 413)


def test_the_openapi_document_declares_problems_for_every_error():
    schema = document_problems(_app(InMemorySpanExporter()).openapi())
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in json.dumps(schema)
    for operations in schema["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            assert "500" in responses
            for status, response in responses.items():
                if int(status) >= 400:
                    assert list(response["content"]) == [PROBLEM]
    action = schema["paths"]["/actions"]["post"]["responses"]
    assert {"413", "422"} <= set(action)


class _DownService:
    """Enough of a service for `build_http_app`: no routes, a database that does not answer."""

    name = "down"
    router = APIRouter()

    async def ready(self) -> dict[str, str]:
        return {"database": "unreachable", "broker": "ok"}

    async def health(self) -> dict[str, object]:
        return {"outbox": {"status": "unknown (ConnectionRefusedError)"}}


async def test_readiness_failing_is_a_503_problem_with_the_checks():
    from complaints.api import build_http_app

    app = build_http_app([_DownService()])  # type: ignore[list-item]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        doc = _problem(await client.get("/readyz"), 503)
        assert doc["checks"] == {"down": {"database": "unreachable", "broker": "ok"}}
        assert doc["detail_by_service"]["down"]["outbox"]["status"].startswith("unknown")
        _problem(await client.post("/healthz"), 405)
        assert (await client.get("/healthz")).json() == {"status": "ok"}
