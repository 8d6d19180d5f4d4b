"""The OpenAPI document and its two viewers, behind the bearer token like every ``/v1`` route.

FastAPI serves ``/openapi.json``, ``/docs`` and ``/redoc`` to anyone; the app turns those
off and serves them here instead, with the :data:`~engine.api.context.Identity`
dependency (401 without a known token when tokens are configured). The document itself
is the app's own (``app.openapi()``), the one ``flowrunner openapi`` writes.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from engine.api.context import Identity

DOCUMENT = "/openapi.json"

router = APIRouter(include_in_schema=False)


@router.get(DOCUMENT)
async def openapi_document(request: Request, who: Identity) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs")
async def swagger_ui(request: Request, who: Identity) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=DOCUMENT, title=f"{request.app.title} - Swagger UI")


@router.get("/redoc")
async def redoc(request: Request, who: Identity) -> HTMLResponse:
    return get_redoc_html(openapi_url=DOCUMENT, title=f"{request.app.title} - ReDoc")
