"""``GET /v1/events``: one Server-Sent Events feed of every run's changes, for lists and
inboxes that must not poll.

Each ``run`` frame is a run as ``GET /v1/runs`` lists it, plus ``waiting``: the ids of
its steps waiting for a decision. Frames are numbered ``BOOT:N``, N counting the changes
this process has seen; a client that reconnects with ``Last-Event-ID`` gets every run
that changed since (each once, as it is now). A number from another process, or older
than the changes kept (:data:`engine.api.frames.KEPT`), gets a ``reset`` frame instead:
read the list again. Changes come from this process (its API and worker) and, on
PostgreSQL, every process; once a second the feed also looks at the newest runs, which
catches a separate worker's changes on SQLite (which cannot notify other processes).
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
from engine.errors import NotFound
from engine.runner.service import summary
from engine.store.base import Store

LOOK_SECONDS = 1.0
"""How often the feed looks at the newest runs for changes nobody announced."""
BATCH_SECONDS = 0.1
"""Changes that come within this long of each other are sent together."""
NEWEST = 50


def feed_stream(
    store: Store, frames: Frames, last: str | None, request: Request
) -> EventSourceResponse:
    return EventSourceResponse(_feed(store, frames, last, request), ping=15)


async def _feed(
    store: Store, frames: Frames, last: str | None, request: Request
) -> AsyncIterator[dict[str, Any]]:
    watcher = frames.watch()
    try:
        number, runs = _resume(frames, last)
        if runs is None:
            yield {"event": "reset", "id": f"{frames.boot}:{number}", "data": "{}"}
            runs = []
        seen: dict[str, float] = {}
        while True:
            for run_id in runs:
                frame = await _frame(store, run_id)
                if frame is not None:
                    seen[run_id] = frame["updated_at"]
                    yield {
                        "event": "run",
                        "id": f"{frames.boot}:{number}",
                        "data": json.dumps(frame),
                    }
            if await request.is_disconnected():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.wait(), LOOK_SECONDS)
                await asyncio.sleep(BATCH_SECONDS)
            watcher.clear()
            changed = frames.since(number)
            number = frames.number
            if changed is None:
                yield {"event": "reset", "id": f"{frames.boot}:{number}", "data": "{}"}
                changed = []
            runs = [run for run in changed if run] + await _unannounced(store, seen)
            runs = list(dict.fromkeys(runs))
    finally:
        frames.unwatch(watcher)


def _resume(frames: Frames, last: str | None) -> tuple[int, list[str] | None]:
    """Where a feed starts: now, or after ``last`` with the runs changed since (None when
    that cannot be known)."""
    if last is None:
        return frames.number, []
    boot, _, number = last.partition(":")
    if boot != frames.boot or not number.isdecimal():
        return frames.number, None
    changed = frames.since(int(number))
    if changed is None or "" in changed:
        return frames.number, None
    return frames.number, changed


async def _unannounced(store: Store, seen: dict[str, float]) -> list[str]:
    """The newest runs that changed since the feed last saw them (another process's worker,
    on SQLite), or that are new to it."""
    newest = await store.list_runs(limit=NEWEST)
    changed = [run.id for run in newest if seen.get(run.id, -1.0) < run.updated_at]
    seen.update((run.id, run.updated_at) for run in newest)
    return changed


async def _frame(store: Store, run_id: str) -> dict[str, Any] | None:
    try:
        run = await store.get_run(run_id)
    except NotFound:
        return None
    waiting = await store.waiting_steps(run_id) if run.status is RunStatus.RUNNING else []
    return {**summary(run), "updated_at": run.updated_at, "waiting": waiting}
