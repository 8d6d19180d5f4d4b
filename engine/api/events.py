"""Server-Sent Events of a run: every stored event in order, then live ones.

Each stored event is sent with its id, so a client that reconnects with
``Last-Event-ID`` resumes exactly after the last event it received. Token
deltas of streaming agents run by this process are sent as ``delta`` frames
without an id (they are not stored). When the run has ended and every event
has been sent, a final ``end`` frame closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request

from engine.api.frames import Frames
from engine.core.plan import RunStatus
from engine.store.base import Store

POLL_SECONDS = 0.2


def event_stream(
    store: Store, frames: Frames, run_id: str, after: int, request: Request
) -> EventSourceResponse:
    return EventSourceResponse(_frames(store, frames, run_id, after, request), ping=15)


async def _frames(
    store: Store, frames: Frames, run_id: str, after: int, request: Request
) -> AsyncIterator[dict[str, Any]]:
    queue = frames.subscribe(run_id)
    try:
        while True:
            for event in await store.events(run_id, after=after):
                after = event.id
                yield {
                    "id": str(event.id),
                    "event": event.event,
                    "data": json.dumps(event.as_json()),
                }
            if (await store.get_run(run_id)).status is not RunStatus.RUNNING:
                if not await store.events(run_id, after=after):
                    yield {"event": "end", "data": json.dumps({"run_id": run_id, "last": after})}
                    return
                continue
            if await request.is_disconnected():
                return
            with contextlib.suppress(TimeoutError):
                frame = await asyncio.wait_for(queue.get(), POLL_SECONDS)
                if frame["event"] == "delta":
                    yield {"event": "delta", "data": json.dumps(frame)}
                # any other frame says the run changed here: read the store at once
    finally:
        frames.unsubscribe(run_id, queue)
