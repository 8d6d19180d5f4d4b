"""Live frames, fanned out to event streams: token deltas of this process's worker, and
word that a run changed (from this process's worker or, on PostgreSQL, any process)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any


class Frames:
    """Subscribers by run: each gets a bounded queue; a slow one loses deltas, not events."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.queues: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)

    def publish(self, frame: dict[str, Any]) -> None:
        for queue in self.queues.get(frame["run_id"], ()):
            if queue.qsize() < self.size:
                queue.put_nowait(frame)

    def changed(self, run_id: str) -> None:
        """A run changed (every run, when ``run_id`` is empty): its streams read the store."""
        runs = list(self.queues) if not run_id else [run_id]
        for run in runs:
            self.publish({"run_id": run, "event": "changed"})

    def subscribe(self, run_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.queues[run_id].add(queue)
        return queue

    def unsubscribe(self, run_id: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.queues[run_id].discard(queue)
        if not self.queues[run_id]:
            del self.queues[run_id]
