"""Server-Sent Events of a run: every stored event in order, then live ones.

Each stored event is sent with its id, so a client that reconnects with
``Last-Event-ID`` resumes exactly after the last event it received. The
composed prompt of an agent call and its token deltas (from a worker in this
process or in another, see :mod:`engine.api.live`) are sent as ``prompt`` and
``delta`` frames without an id (they are not stored), always after their
step's ``step_started`` and before the event that ends its attempt. A stream
opened while a step's attempt runs starts, for that step, with its ``prompt``
frame and one ``delta`` frame of the reply so far. When the run has ended and
every event has been sent, a final ``end`` frame closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request

from engine.api.frames import LIVE, Frames
from engine.core.plan import RunStatus
from engine.store.base import Event, Store

POLL_SECONDS = 0.2


def event_stream(
    store: Store, frames: Frames, run_id: str, after: int, request: Request
) -> EventSourceResponse:
    return EventSourceResponse(_frames(store, frames, run_id, after, request), ping=15)


async def _frames(
    store: Store, frames: Frames, run_id: str, after: int, request: Request
) -> AsyncIterator[dict[str, Any]]:
    queue = frames.subscribe(run_id)
    so_far = frames.so_far(run_id)  # at once: what comes next is in the queue
    try:
        steps = await store.get_steps(run_id)
        order = Deltas({s.id for s in steps if s.status == "running"})
        attempts = {s.id: s.attempts for s in steps}  # a frame of an earlier one is stale
        order.take([f for f in so_far if f.get("attempt") in (None, attempts.get(f["step_id"]))])
        while True:
            events = await store.events(run_id, after=after)
            order.take(_drain(queue))  # every delta sent before those events were written
            for event in events:
                for delta in order.before(event):
                    yield {"event": delta["event"], "data": json.dumps(delta)}
                if event.step_id is not None and event.event in Deltas.ENDS:
                    frames.ended(run_id, event.step_id, event.payload.get("attempt"))
                after = event.id
                yield {
                    "id": str(event.id),
                    "event": event.event,
                    "data": json.dumps(event.as_json()),
                }
            for delta in order.now():
                yield {"event": delta["event"], "data": json.dumps(delta)}
            if (await store.get_run(run_id)).status is not RunStatus.RUNNING:
                if not await store.events(run_id, after=after):
                    yield {"event": "end", "data": json.dumps({"run_id": run_id, "last": after})}
                    return
                continue
            if await request.is_disconnected():
                return
            with contextlib.suppress(TimeoutError):
                order.take([await asyncio.wait_for(queue.get(), POLL_SECONDS)])
                # any frame but a delta says the run changed here: read the store at once
    finally:
        frames.unsubscribe(run_id, queue)


def _drain(queue: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    taken = []
    while not queue.empty():
        taken.append(queue.get_nowait())
    return taken


class Deltas:
    """Puts a step's token deltas (and prompts) where they belong among the stored events:
    after its ``step_started`` and before the event that ends its attempt, whatever the
    order in which the two reach the stream (deltas come live, events from the store)."""

    ENDS = frozenset({"step_completed", "step_failed", "step_retrying", "step_cancelled"})
    LIMIT = 10_000

    def __init__(self, running: set[str]) -> None:
        self.running = running  # steps whose step_started this stream has passed
        self.held: list[dict[str, Any]] = []

    def take(self, frames: list[dict[str, Any]]) -> None:
        self.held += [frame for frame in frames if frame.get("event") in LIVE]
        del self.held[: -self.LIMIT]  # a step that never starts here cannot grow it for ever

    def before(self, event: Event) -> list[dict[str, Any]]:
        """The deltas to send before ``event``; then note what it starts or ends."""
        step = event.step_id
        due = []
        if step is not None and event.event in self.ENDS:
            due = self._release(step)
            self.running.discard(step)
        elif step is not None and event.event == "step_started":
            self.running.add(step)
        return due

    def now(self) -> list[dict[str, Any]]:
        """Deltas of steps running as far as the stream has gone; the others wait."""
        due = [frame for frame in self.held if frame["step_id"] in self.running]
        self.held = [frame for frame in self.held if frame["step_id"] not in self.running]
        return due

    def _release(self, step: str) -> list[dict[str, Any]]:
        due = [frame for frame in self.held if frame["step_id"] == step]
        self.held = [frame for frame in self.held if frame["step_id"] != step]
        return due
