"""Live frames, fanned out to event streams: token deltas of this process's worker, and
word that a run changed (from this process's worker or, on PostgreSQL, any process).

Streams of one run subscribe to its frames; the feed of every run's changes
(``GET /v1/events``) subscribes to :attr:`Frames.changes`, a numbered log of the run
ids that changed, kept for the last :data:`KEPT` changes so that a client that
reconnects with the last number it saw gets what it missed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict, deque
from typing import Any

KEPT = 10_000
"""Run changes remembered for clients that reconnect."""


class Frames:
    """Subscribers by run: each gets a bounded queue; a slow one loses deltas, not events."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.queues: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self.boot = secrets.token_hex(4)
        """Names this process's numbering: a number from another boot means nothing here."""
        self.changes: deque[tuple[int, str]] = deque(maxlen=KEPT)
        self.number = 0
        self.watchers: set[asyncio.Event] = set()

    def publish(self, frame: dict[str, Any]) -> None:
        for queue in self.queues.get(frame["run_id"], ()):
            if queue.qsize() < self.size:
                queue.put_nowait(frame)
        if frame.get("event") != "delta":
            self._note(frame["run_id"])

    def changed(self, run_id: str) -> None:
        """A run changed (every run, when ``run_id`` is empty): its streams read the store."""
        runs = list(self.queues) if not run_id else [run_id]
        for run in runs:
            self.publish({"run_id": run, "event": "changed"})
        if not run_id:
            self._note("")

    def _note(self, run_id: str) -> None:
        """Number a change of ``run_id`` (``""``: any run may have changed) for the feed."""
        self.number += 1
        self.changes.append((self.number, run_id))
        for watcher in self.watchers:
            watcher.set()

    def since(self, number: int) -> list[str] | None:
        """Run ids changed after change ``number`` (``""`` among them: any may have), or
        None when that is no longer known (more than :data:`KEPT` changes ago)."""
        if number > self.number:
            return None
        if number < self.number and (not self.changes or self.changes[0][0] > number + 1):
            return None
        return list(dict.fromkeys(run for n, run in self.changes if n > number))

    def watch(self) -> asyncio.Event:
        """An event set at every run change (the feed clears it when it has looked)."""
        watcher = asyncio.Event()
        self.watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: asyncio.Event) -> None:
        self.watchers.discard(watcher)

    def subscribe(self, run_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.queues[run_id].add(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.queues[run_id].discard(queue)
        if not self.queues[run_id]:
            del self.queues[run_id]
