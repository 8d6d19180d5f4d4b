"""Live frames of a worker (token deltas, composed prompts) for ``serve`` processes.

A worker's frames reach the streams of ``serve`` in its own process directly; the
:class:`Sender` also hands them to the store (NOTIFY on PostgreSQL, a unix datagram
socket on SQLite) for ``serve`` processes elsewhere. Frames are batched (every
:data:`BATCH_SECONDS`), several to a payload, a long text split over payloads (the
pieces but the last marked ``more``). Sending never blocks a step: past
:data:`PENDING_BYTES` waiting, frames are dropped, and a failure to send is logged once.

A payload is ``{"worker": ID, "frames": [...]}``: a ``serve`` skips its own worker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from engine.errors import StoreError
from engine.store.base import Store

log = logging.getLogger("flowrunner.worker")

BATCH_SECONDS = 0.05
"""How long frames are collected before they are sent together."""

PENDING_BYTES = 4 * 1024 * 1024
"""Text waiting to be sent past which new frames are dropped."""

LIVE_EVENTS = frozenset({"delta", "prompt"})
"""The frames other processes get (a change is told by the store itself)."""

FLUSH_SECONDS = 1.0
"""How long a flush before a step's result is written may take (then it gives up)."""


class Sender:
    """Batches a worker's live frames to the store's live channel."""

    def __init__(self, store: Store, worker_id: str) -> None:
        self.store = store
        self.worker_id = worker_id
        self.limit = store.live_bytes
        self.pending: list[dict[str, Any]] = []
        self.pending_bytes = 0
        self.dropped = 0
        self.failed = False
        self._task: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()

    def send(self, frame: dict[str, Any]) -> None:
        """Queue a frame (at once; sent within :data:`BATCH_SECONDS`)."""
        if not self.limit or frame.get("event") not in LIVE_EVENTS:
            return
        size = len(frame.get("text", ""))
        if self.pending_bytes + size > PENDING_BYTES:
            self.dropped += 1
            return
        self.pending.append(frame)
        self.pending_bytes += size
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(BATCH_SECONDS)
        await self.flush()

    async def flush(self) -> None:
        """Send what is waiting now: before a step's result is written, so that ``serve``
        has its deltas before it reads the event that ends the attempt."""
        if not self.pending and not self._sending.locked():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_SECONDS):
                async with self._sending:  # in order, and after a send in flight
                    frames, self.pending, self.pending_bytes = self.pending, [], 0
                    if frames:
                        await self._send(frames)

    async def _send(self, frames: list[dict[str, Any]]) -> None:
        try:
            await self.store.send_live(payloads(self.worker_id, frames, self.limit))
        except StoreError as exc:
            if not self.failed:
                self.failed = True
                log.warning("live frames are not reaching other processes: %s", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


def payloads(worker_id: str, frames: list[dict[str, Any]], limit: int) -> list[str]:
    """``frames`` as payloads of at most ``limit`` bytes (UTF-8), in order."""
    head = json.dumps({"worker": worker_id, "frames": []})
    room = limit - len(head.encode()) - 2  # a comma between frames, and spare
    out: list[str] = []
    batch: list[str] = []
    used = 0
    for frame in frames:
        for piece in _pieces(frame, room):
            size = len(piece.encode()) + 1
            if batch and used + size > room:
                out.append(_payload(head, batch))
                batch, used = [], 0
            batch.append(piece)
            used += size
    if batch:
        out.append(_payload(head, batch))
    return out


def _payload(head: str, batch: list[str]) -> str:
    return head[:-2] + ",".join(batch) + "]}"


def _pieces(frame: dict[str, Any], room: int) -> list[str]:
    """A frame as JSON texts of at most ``room`` bytes: its text split when it is long."""
    whole = json.dumps(frame, ensure_ascii=False)
    if len(whole.encode()) <= room:
        return [whole]
    text: str = frame["text"]
    bare = len(json.dumps({**frame, "text": "", "more": True}, ensure_ascii=False).encode())
    out = []
    start = 0
    while start < len(text):
        size = max(1, room - bare)  # characters: at most one byte each, the first guess
        while True:
            piece = {**frame, "text": text[start : start + size]}
            if start + size < len(text):
                piece["more"] = True
            encoded = json.dumps(piece, ensure_ascii=False)
            if len(encoded.encode()) <= room or size == 1:
                break
            size = max(1, size * room // len(encoded.encode()) - 1)
        out.append(encoded)
        start += size
    return out
