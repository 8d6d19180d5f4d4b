"""The OpenAPI document and its two viewers, behind the bearer token like every ``/v1`` route.

FastAPI serves ``/openapi.json``, ``/docs`` and ``/redoc`` to anyone; the app turns those
off and serves them here instead, with the :data:`~engine.api.context.Identity`
dependency (401 without a known token when tokens are configured). The document is the
app's own (``app.openapi()``, the one ``flowrunner openapi`` writes) with what FastAPI
leaves out: the bearer scheme, and every error response in the API's one error shape.

The viewers load nothing from other hosts: Swagger UI and ReDoc ship in
``engine/api/assets`` (vendored, see the README there), served under ``/docs-assets/``,
which is open (they are the same for everyone), and their pages' Content-Security-Policy
allows no other origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from engine.api.context import Identity

DOCUMENT = "/openapi.json"
ASSETS = "/docs-assets"
FILES = {
    name: Path(__file__).parent / "assets" / name
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
}
"""The only files ``/docs-assets/`` serves."""
POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'"
)
"""The viewers' Content-Security-Policy: their own inline start-up code, nothing from other
hosts (ReDoc would fetch its logo from cdn.redoc.ly)."""

ERRORS = {
    "401": "Missing or unknown bearer token.",
    "404": "Unknown flow, run, step or route.",
    "409": "Not allowed in the current state (a decided gate, a finished run).",
    "406": "The route streams (Server-Sent Events) and the request did not accept it.",
    "413": "Body too large.",
    "422": "Malformed request, values not matching the flow, or a flow that does not lint.",
    "431": "Request headers too large.",
    "503": "The store cannot be reached.",
}
"""Status -> when; every ``/v1`` operation may answer each, always in the error shape."""

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "description": "A stable word: not_found, ..."},
                "message": {"type": "string", "description": "One line for a person."},
                "details": {"description": "What the code needs: fields, the decision, ..."},
            },
        }
    },
}

router = APIRouter(include_in_schema=False)


def openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with the bearer scheme and the error responses."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = document.setdefault("components", {})
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token of FLOWRUNNER_API_TOKEN or FLOWRUNNER_API_TOKENS_FILE "
                "(not needed when neither is set).",
            }
        }
        schemas = components.setdefault("schemas", {})
        schemas["Error"] = ERROR_SCHEMA
        for name in ("HTTPValidationError", "ValidationError"):  # the API answers Error
            schemas.pop(name, None)
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, operations in document["paths"].items():
            if not path.startswith("/v1/"):
                continue
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                responses = operation.setdefault("responses", {})
                for status, when in ERRORS.items():
                    responses[status] = {"description": when, "content": error}
        app.openapi_schema = document
    return app.openapi_schema


@router.get(DOCUMENT)
async def openapi_document(request: Request, who: Identity) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request, who: Identity) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=DOCUMENT,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/none",
        swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
    )
    page.headers["Content-Security-Policy"] = POLICY
    return page


@router.get("/redoc")
async def redoc(request: Request, who: Identity) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=DOCUMENT,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSETS}/none",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = POLICY
    return page


@router.get(ASSETS + "/{name}")
async def asset(name: str) -> FileResponse:
    path = FILES.get(name)
    if path is None:
        raise HTTPException(404, f"no asset '{name}'")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})
