"""HTTP edges shared by the services: problem documents, tracing, bearer authentication."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import jsonsafe
from shared.kafka import is_transient
from shared.telemetry import extract_context

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"
# JSON bodies parsed for a route (not those a route reads itself, like intake's submissions).
MAX_JSON_BODY_BYTES = 256 * 1024


class Problem(Exception):
    """An RFC 9457 problem: raise it from a handler to answer with that status and document."""

    def __init__(self, status: int, title: str, detail: str | None = None, **extra: Any) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra

    def document(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail or self.title,
        }
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


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# Details for the framework's own answers, whose `detail` is only the status phrase.
_FRAMEWORK_DETAILS = {
    404: "nothing is served at this path",
    405: "this path does not answer this method; the Allow header lists those it does",
}


def http_problem(exc: HTTPException) -> Problem:
    """The problem for an `HTTPException` (Starlette's, FastAPI's or a `BodyRejected`)."""
    if isinstance(exc, BodyRejected):
        return exc.problem
    phrase = _phrase(exc.status_code)
    detail = str(exc.detail) if exc.detail and exc.detail != phrase else None
    return Problem(exc.status_code, phrase, detail or _FRAMEWORK_DETAILS.get(exc.status_code))


def problem_response(
    problem: Problem, instance: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """`problem` as an `application/problem+json` answer."""
    headers = dict(headers or {})
    if problem.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse(
        problem.document(instance), problem.status, media_type=PROBLEM, headers=headers or None
    )


INTERNAL_ERROR = Problem(
    500, "Internal Server Error", "the request could not be answered; the failure is logged"
)
UNAVAILABLE = Problem(
    503, "Service Unavailable", "the database or broker is unavailable; try again shortly"
)


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error as `application/problem+json`: raised problems, invalid requests,
    the framework's own answers (404, 405, 413, ...), the database or broker being away (503
    with `Retry-After`) and unexpected exceptions (500)."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(validation_problem(exc), request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # Starlette's: FastAPI's derives from it
        return problem_response(http_problem(exc), request.url.path, exc.headers)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_middleware(UnexpectedErrors)


class UnexpectedErrors:
    """ASGI middleware: an exception no handler took becomes a 500 problem. Only its type is
    logged above debug; its text (which may quote personal data) is never sent or logged
    higher. Nothing is re-raised, so the server does not log the traceback at error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            # the database or broker away is not the request's fault: 503, try again shortly
            away = is_transient(exc)
            log.log(
                logging.WARNING if away else logging.ERROR,
                "%s %s answering %s %s",
                "unavailable:" if away else "unexpected",
                type(exc).__name__,
                scope["method"],
                scope["path"],
            )
            log.debug("unexpected error in detail", exc_info=exc)
            if started:
                return  # the answer is under way: the server closes the connection
            if away:
                answer = problem_response(UNAVAILABLE, scope["path"], {"Retry-After": "1"})
            else:
                answer = problem_response(INTERNAL_ERROR, scope["path"])
            await answer(scope, receive, send)


class BodyRejected(HTTPException):
    """A JSON body refused before parsing. An `HTTPException`, because FastAPI passes those
    through from reading the body (it turns other exceptions there into a bare 400)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.status, problem.title)
        self.problem = problem


def body_problem(exc: jsonsafe.JsonRejected, max_bytes: int) -> Problem:
    """The problem for a body `jsonsafe` refused: 413 when too large, else a 422 naming it."""
    if exc.code == "oversized":
        return Problem(413, "Content Too Large", f"the limit is {max_bytes} bytes")
    rule = "json_too_deep" if exc.code == "too_deep" else "json_invalid"
    detail = f"the body is {exc.message}" if exc.code == "too_deep" else "the body is not JSON"
    return Problem(
        422,
        "Invalid request",
        detail,
        errors=[{"field": "(body)", "rule": rule, "message": exc.message}],
    )


class SafeJsonRequest(Request):
    """A request whose JSON body is parsed with `jsonsafe`: a size and a nesting limit, never
    a `RecursionError`."""

    max_json_bytes = MAX_JSON_BODY_BYTES

    async def json(self) -> Any:
        if not hasattr(self, "_safe_json"):
            body = await self.body()
            try:
                self._safe_json = jsonsafe.loads(body, max_bytes=self.max_json_bytes)
            except jsonsafe.JsonRejected as exc:
                raise BodyRejected(body_problem(exc, self.max_json_bytes)) from None
        return self._safe_json


class ProblemRoute(APIRoute):
    """Routes whose JSON bodies go through `SafeJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            return await inner(SafeJsonRequest(request.scope, request.receive))

        return handler


def status_of(exc: Exception) -> int:
    """The status the problem handlers answer `exc` with."""
    if isinstance(exc, Problem):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    return 503 if is_transient(exc) else 500


def traced_route_class(tracer: trace.Tracer) -> type[APIRoute]:
    """Routes whose requests become server spans of `tracer`, continuing a caller's W3C context
    (and whose JSON bodies are parsed safely, as `ProblemRoute`'s)."""

    class TracedRoute(ProblemRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            inner = super().get_route_handler()
            route = self.path

            async def handler(request: Request) -> Response:
                # exceptions are not recorded: their text may quote what the caller sent
                with tracer.start_as_current_span(
                    f"{request.method} {route}",
                    context=extract_context(dict(request.headers)),
                    kind=SpanKind.SERVER,
                    attributes={"http.request.method": request.method, "http.route": route},
                    record_exception=False,
                    set_status_on_exception=False,
                ) as span:
                    try:
                        response = await inner(request)
                    except Exception as exc:
                        status = status_of(exc)
                        span.set_attribute("http.response.status_code", status)
                        if status >= 500:
                            span.set_attribute("error.type", type(exc).__qualname__)
                            span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
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


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem document; `errors` names each bad field of a 422.",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "rule", "message"],
                "properties": {
                    "field": {"type": "string"},
                    "rule": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}
_PROBLEM_CONTENT = {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}
_BODY_ERRORS = {
    "413": "the body is too large",
    "422": "malformed body (not JSON, nested too deep, or invalid); `errors` names each field",
}


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Declare every error answer of an OpenAPI document as an `application/problem+json`
    Problem, and the errors every operation may give (500, 503; 413 and 422 with a body)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                for status, description in _BODY_ERRORS.items():
                    responses.setdefault(status, {"description": description})
            responses.setdefault("500", {"description": "an unexpected failure"})
            responses.setdefault(
                "503",
                {
                    "description": "the database or broker is unavailable; retry after "
                    "`Retry-After` seconds"
                },
            )
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = dict(_PROBLEM_CONTENT)
    if "#/components/schemas/HTTPValidationError" not in json.dumps(schema.get("paths")):
        # FastAPI's own 422 shape (and its item), which no answer has any more
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
    return schema
