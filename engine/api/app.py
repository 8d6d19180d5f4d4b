"""The HTTP API: a thin shell over the runner's operations, under /v1.

Errors have one shape, ``{"error": {"code", "message", "details"}}``, mapped
from the engine's error types in :data:`ERRORS`. Nothing a request sends is
rendered as a template or imported as code: flows come from the project's
``flows/`` folder, and ``POST /v1/lint`` only checks the text it is given.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import console, errors
from engine.api import docs, flows, runs
from engine.api.context import ERRORS as ERRORS
from engine.api.context import Api, error_body, error_status

HTTP_CODES = {
    400: "bad_request",  # a body the JSON parser gave up on (nested thousands deep)
    401: "unauthorized",
    403: "not_allowed",  # a console session's unsafe request without its CSRF token
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",  # GET /v1/events without Accept: text/event-stream
}


def create_app(context: Api, *, max_body: int = 1024 * 1024) -> FastAPI:
    """The API over ``context``'s store and project; bodies over ``max_body`` bytes get 413."""
    # FastAPI's own /openapi.json, /docs and /redoc are open to anyone: engine.api.docs
    # serves them behind the token instead.
    app = FastAPI(title="flowrunner", version="1", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.api = context
    app.openapi = lambda: docs.openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(errors.FlowrunnerError)
    async def engine_error(request: Request, exc: errors.FlowrunnerError) -> JSONResponse:
        status, code = error_status(exc)
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

    app.include_router(docs.router)
    app.include_router(flows.router)
    app.include_router(runs.router)
    console.install(app)
    app.add_middleware(BodyLimit, max_body=max_body)
    return app


class BodyLimit:
    """413 for a request body over ``max_body`` bytes, declared or streamed.

    A plain ASGI middleware (Starlette's ``BaseHTTPMiddleware`` costs a task
    group per request, a third of a launch's time here). A body without a
    Content-Length is received in full, up to the limit, before the app sees it.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_body:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        received = 0
        while True:
            message = await receive()
            messages.append(message)
            received += len(message.get("body", b""))
            if received > self.max_body:
                await self._refuse(scope, receive, send)
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body("too_large", f"request body larger than {self.max_body} bytes")
        await JSONResponse(body, status_code=413)(scope, receive, send)


def dump_openapi(app: FastAPI) -> str:
    """The OpenAPI document, as committed in docs/openapi.json."""
    document: dict[str, Any] = app.openapi()
    return json.dumps(document, indent=2, sort_keys=True) + "\n"
