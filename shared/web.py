"""HTTP edges shared by the services: problem documents, tracing, bearer authentication."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from shared import auth
from shared.telemetry import extract_context

PROBLEM = "application/problem+json"


class Problem(Exception):
    """An RFC 9457 problem: raise it from a handler to answer with that status and document."""

    def __init__(self, status: int, title: str, detail: str | None = None, **extra: Any) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra

    def document(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": "about:blank", "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if instance:
            doc["instance"] = instance
        doc.update(self.extra)
        return doc


def field_errors(errors: list[Any], *, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as `{field, rule, message}`, never echoing the value sent."""
    out = []
    for err in errors:
        loc = [p for p in (*prefix, *err.get("loc", ())) if p not in ("body",)]
        out.append(
            {
                "field": ".".join(str(p) for p in loc) or "(body)",
                "rule": err.get("type", "invalid"),
                "message": err.get("msg", "invalid"),
            }
        )
    return out


def summarise(errors: list[dict[str, Any]]) -> str:
    """Field errors in one line: `field: message; field: message`."""
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


def validation_problem(
    exc: ValidationError | RequestValidationError, *, prefix: tuple[str, ...] = ()
) -> Problem:
    """A 422 naming every bad field (under `prefix`, e.g. `data` inside a CloudEvent)."""
    errors = field_errors(list(exc.errors()), prefix=prefix)
    return Problem(422, "Invalid request", summarise(errors), errors=errors)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error as `application/problem+json`."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(
            exc.document(request.url.path), exc.status, media_type=PROBLEM, headers=headers
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return await on_problem(request, validation_problem(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return await on_problem(request, Problem(exc.status_code, str(exc.detail)))

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)


def traced_route_class(tracer: trace.Tracer) -> type[APIRoute]:
    """Routes whose requests become server spans of `tracer`, continuing a caller's W3C context."""

    class TracedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            inner = super().get_route_handler()
            route = self.path

            async def handler(request: Request) -> Response:
                with tracer.start_as_current_span(
                    f"{request.method} {route}",
                    context=extract_context(dict(request.headers)),
                    kind=SpanKind.SERVER,
                    attributes={"http.request.method": request.method, "http.route": route},
                ) as span:
                    try:
                        response = await inner(request)
                    except Problem as exc:
                        span.set_attribute("http.response.status_code", exc.status)
                        raise
                    span.set_attribute("http.response.status_code", response.status_code)
                    if response.status_code >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    return response

            return handler

    return TracedRoute


def bearer(request: Request) -> str:
    """The bearer token of the request, or a 401 problem."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "Unauthorized", "send Authorization: Bearer <token>")
    return token.strip()


def staff_principal(secret: bytes, request: Request) -> auth.Principal:
    """The staff member a request's token names, or a 401 problem."""
    try:
        return auth.verify_token(secret, bearer(request), kind=auth.STAFF)
    except auth.InvalidToken as exc:
        raise Problem(401, "Unauthorized", f"staff token rejected: {exc}") from None
