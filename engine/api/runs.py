"""Routes about runs: list, read, cancel, retry, decide gates, follow events."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from engine import errors
from engine.api.context import Context, Identity, plain_json
from engine.api.events import event_stream
from engine.api.feed import feed_stream
from engine.api.gates import Asked, decided_conflict
from engine.core.plan import RunStatus
from engine.runner import service
from engine.store.base import MAX_INTEGER

router = APIRouter(prefix="/v1")


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str = Field(default="", max_length=10_000, description="Why.")
    payload: dict[str, Any] = Field(default_factory=dict, description="The gate's form values.")

    @model_validator(mode="after")
    def _plain(self) -> DecisionBody:
        plain_json(self.model_dump(), "decision")
        return self


def parse_cursor(value: str | None) -> tuple[float, str] | None:
    if value is None:
        return None
    try:
        created, _, run_id = base64.urlsafe_b64decode(value.encode()).decode().partition("|")
        return float(created), run_id
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise errors.InvalidInput("cursor: not a cursor from this API", {"cursor": value}) from exc


def next_cursor(created_at: float, run_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{run_id}".encode()).decode()


@router.get("/runs", tags=["runs"])
async def list_runs(
    context: Context,
    who: Identity,
    flow: str | None = None,
    status: RunStatus | None = None,
    waiting: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Runs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page.
    A ``status`` that is not a run status is a 422."""
    runs = await context.store.list_runs(
        flow=flow,
        status=None if status is None else status.value,
        waiting=waiting,
        limit=limit,
        before=parse_cursor(cursor),
    )
    last = runs[-1] if len(runs) == limit else None
    return {
        "runs": [service.summary(run) for run in runs],
        "next_cursor": next_cursor(last.created_at, last.id) if last else None,
    }


@router.get("/runs/{run_id}", tags=["runs"])
async def get_run(run_id: str, context: Context, who: Identity) -> dict[str, Any]:
    """A run with its steps in DAG order."""
    return (await service.details(context.store, run_id)).as_json()


@router.post("/runs/{run_id}/cancel", tags=["runs"])
async def cancel(run_id: str, context: Context, who: Identity) -> dict[str, Any]:
    """Cancel a running run: its running steps stop within a second."""
    run = await service.cancel(context.store, run_id, time.time())
    context.changed(run_id)
    return service.summary(run)


@router.post("/runs/{run_id}/retry", tags=["runs"])
async def retry(run_id: str, context: Context, who: Identity) -> dict[str, Any]:
    """Run a failed or cancelled run again in place; completed steps keep their outputs."""
    run = await service.retry(context.store, run_id, time.time())
    context.changed(run_id)
    return service.summary(run)


async def _decide(
    context: Context, run_id: str, step_id: str, approve: bool, body: DecisionBody, who: str
) -> dict[str, Any]:
    try:
        record = await service.decide(
            context.store,
            run_id,
            step_id,
            approve=approve,
            identity=who,
            comment=body.comment,
            payload=body.payload,
            now=time.time(),
        )
    except errors.Conflict as exc:  # decided already: say how, and whether it was this one
        asked = Asked(approve, who, body.comment, body.payload)
        raise await decided_conflict(context.store, run_id, step_id, exc, asked) from None
    context.changed(run_id)
    return {"id": record.id, "status": str(record.status), "data": record.data}


@router.post("/runs/{run_id}/steps/{step_id}/approve", tags=["approvals"])
async def approve(
    run_id: str, step_id: str, body: DecisionBody, context: Context, who: Identity
) -> dict[str, Any]:
    """Approve a waiting gate as the token's identity; 409 when it is not waiting."""
    return await _decide(context, run_id, step_id, True, body, who)


@router.post("/runs/{run_id}/steps/{step_id}/reject", tags=["approvals"])
async def reject(
    run_id: str, step_id: str, body: DecisionBody, context: Context, who: Identity
) -> dict[str, Any]:
    """Reject a waiting gate as the token's identity; 409 when it is not waiting."""
    return await _decide(context, run_id, step_id, False, body, who)


@router.get("/events", tags=["events"])
async def feed(
    context: Context,
    who: Identity,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> Any:
    """Server-Sent Events of every run's changes: a ``run`` frame (the run as listed, with
    ``waiting``, the ids of its steps waiting for a decision) whenever one changes. Resume
    with ``Last-Event-ID``; a ``reset`` frame means the changes missed are not known. The
    feed never ends, so only a client that accepts ``text/event-stream`` gets it (406)."""
    if "text/event-stream" not in request.headers.get("accept", ""):
        raise HTTPException(406, "GET /v1/events is a text/event-stream: send that Accept")
    return feed_stream(context.store, context.frames, last_event_id, request)


@router.get("/runs/{run_id}/events", tags=["events"])
async def events(
    run_id: str,
    request: Request,
    context: Context,
    who: Identity,
    after: Annotated[int, Query(ge=0, le=MAX_INTEGER)] = 0,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_INTEGER)] = None,
) -> Any:
    """Stored events after ``after`` as JSON, or Server-Sent Events when the client accepts
    ``text/event-stream``: every stored event, then live ones, resuming after
    ``Last-Event-ID``, with an agent call's composed prompt as a ``prompt`` frame and its
    token deltas as ``delta`` frames (a stream opened mid-call first gets the prompt and
    the reply so far), and a final ``end`` frame.
    Both are event ids: integers from 0 to 2**63-1 (422 otherwise)."""
    await context.store.get_run(run_id)  # 404 for an unknown run
    if "text/event-stream" in request.headers.get("accept", ""):
        start = after if last_event_id is None else last_event_id
        return event_stream(context.store, context.frames, run_id, start, request)
    found = await context.store.events(run_id, after=after)
    return {"events": [event.as_json() for event in found]}
