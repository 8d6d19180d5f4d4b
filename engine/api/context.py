"""What every route needs: the project, the store, identities and live frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from starlette.exceptions import HTTPException

from engine.api.frames import Frames
from engine.config import Project
from engine.store.base import Store

ANONYMOUS = "anonymous"


@dataclass
class Api:
    """Set on ``app.state.api``; ``tokens`` maps bearer tokens to identities."""

    project: Project
    store: Store
    tokens: dict[str, str] | None = None
    frames: Frames = field(default_factory=Frames)


def api(request: Request) -> Api:
    found: Api = request.app.state.api
    return found


def identity(request: Request, authorization: Annotated[str | None, Header()] = None) -> str:
    """The identity of the bearer token (``anonymous`` when the API has no tokens)."""
    tokens = api(request).tokens
    if not tokens:
        return ANONYMOUS
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or token not in tokens:
        raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
    return tokens[token]


Identity = Annotated[str, Depends(identity)]
Context = Annotated[Api, Depends(api)]


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one shape of every error the API returns."""
    return {"error": {"code": code, "message": message, "details": details}}
