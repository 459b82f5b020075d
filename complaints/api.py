"""One FastAPI application over the routers of the services it hosts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.requests import Request

from complaints import __version__
from shared.events import CloudEvent, SubmittedData
from shared.service import Service
from shared.web import (
    Problem,
    ProblemRoute,
    document_problems,
    install_problem_handlers,
    problem_response,
)


def build_http_app(services: Sequence[Service]) -> FastAPI:
    """The HTTP API of `services`, with health, readiness and problem documents."""
    app = FastAPI(
        title="complaints",
        version=__version__,
        description="Complaint intake, resolution and notification (see docs/ and CONTRACT).",
    )
    app.router.route_class = ProblemRoute
    install_problem_handlers(app)
    for service in services:
        app.include_router(service.router)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: each hosted service reaches its database and the broker",
        responses={503: {"description": "a dependency is unreachable"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        checks = {service.name: await service.ready() for service in services}
        # shared by every replica (the outbox, say): shown, never a reason to leave service
        detail = {service.name: await service.health() for service in services}
        if all(v == "ok" for check in checks.values() for v in check.values()):
            return JSONResponse({"status": "ok", "checks": checks, "detail": detail})
        unavailable = Problem(
            503,
            "Service Unavailable",
            "a dependency is unreachable",
            checks=checks,
            detail_by_service=detail,
        )
        return problem_response(unavailable, request.url.path)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            template = "#/components/schemas/{model}"
            for name, model in (("SubmittedData", SubmittedData), ("SubmittedEvent", CloudEvent)):
                model_schema = model.model_json_schema(ref_template=template)
                components.update(model_schema.pop("$defs", {}))
                components[name] = model_schema
            app.openapi_schema = document_problems(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
