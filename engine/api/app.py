"""The HTTP API: a thin shell over the runner's operations, under /v1.

Errors have one shape, ``{"error": {"code", "message", "details"}}``, mapped
from the engine's error types in :data:`ERRORS`. Nothing a request sends is
rendered as a template or imported as code: flows come from the project's
``flows/`` folder, and ``POST /v1/lint`` only checks the text it is given.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from engine import errors
from engine.api import flows, runs
from engine.api.context import Api, error_body

ERRORS: dict[type[errors.FlowrunnerError], tuple[int, str]] = {
    errors.NotFound: (404, "not_found"),
    errors.Conflict: (409, "conflict"),
    errors.NotAllowed: (403, "not_allowed"),
    errors.InvalidInput: (422, "invalid_input"),
    errors.InvalidFlow: (422, "invalid_flow"),
    errors.StoreError: (503, "store_unavailable"),
    errors.ConfigError: (500, "configuration"),
}
"""Engine error type -> (HTTP status, error code): the one table the API maps through."""

HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def create_app(context: Api, *, max_body: int = 1024 * 1024) -> FastAPI:
    """The API over ``context``'s store and project; bodies over ``max_body`` bytes get 413."""
    app = FastAPI(title="flowrunner", version="1", docs_url="/docs")
    app.state.api = context
    too_large = error_body("too_large", f"request body larger than {max_body} bytes")

    @app.middleware("http")
    async def limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            return JSONResponse(too_large, status_code=413)
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body:
                    return JSONResponse(too_large, status_code=413)
            request._body = body  # the routes read the body already received
        return await call_next(request)

    @app.exception_handler(errors.FlowrunnerError)
    async def engine_error(request: Request, exc: errors.FlowrunnerError) -> JSONResponse:
        status, code = next(
            (mapped for kind, mapped in ERRORS.items() if isinstance(exc, kind)), (500, "error")
        )
        return JSONResponse(error_body(code, exc.message, exc.details), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"location": list(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        first = details[0] if details else {"location": [], "message": "invalid request"}
        where = ".".join(str(part) for part in first["location"])
        message = f"{where}: {first['message']}" if where else str(first["message"])
        return JSONResponse(error_body("invalid_request", message, details), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "error")
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(flows.router)
    app.include_router(runs.router)
    return app


def dump_openapi(app: FastAPI) -> str:
    """The OpenAPI document, as committed in docs/openapi.json."""
    document: dict[str, Any] = app.openapi()
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
