"""Live frames, fanned out to event streams: composed prompts and token deltas of workers
(this process's, and others' as the store passes them on), and word that a run changed
(from this process's worker or, on PostgreSQL, any process).

For each step running an agent call, the latest ``prompt`` frame and the reply streamed so
far are kept (:data:`STEP_TEXT` at most, for the :data:`STEPS` latest steps), so that a
stream opened mid-attempt starts with them (:meth:`Frames.so_far`).

Streams of one run subscribe to its frames; the feed of every run's changes
(``GET /v1/events``) subscribes to :attr:`Frames.changes`, a numbered log of the run
ids that changed, kept for the last :data:`KEPT` changes so that a client that
reconnects with the last number it saw gets what it missed.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

KEPT = 10_000
"""Run changes remembered for clients that reconnect."""

STEP_TEXT = 1024 * 1024
"""Characters of a reply kept for streams opened mid-attempt (past it, they get none)."""

STEPS = 256
"""Steps whose attempt in progress is kept (the oldest is forgotten first)."""

LIVE = frozenset({"delta", "prompt"})
"""Frames of an attempt in progress, not changes of a run."""


@dataclass
class Attempt:
    """What streamed so far of one step's attempt."""

    prompt: dict[str, Any] | None = None
    number: int | None = None
    reply: list[str] = field(default_factory=list)
    size: int = 0
    whole: bool = True


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
        self.attempts: OrderedDict[tuple[str, str], Attempt] = OrderedDict()

    def publish(self, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        if event in LIVE:
            self._keep(frame)
        elif event == "changed" and frame.get("step_id"):
            self.attempts.pop((frame["run_id"], frame["step_id"]), None)  # its attempt ended
        for queue in self.queues.get(frame["run_id"], ()):
            if queue.qsize() < self.size:
                queue.put_nowait(frame)
        if event not in LIVE:
            self._note(frame["run_id"])

    def _keep(self, frame: dict[str, Any]) -> None:
        key = (frame["run_id"], frame["step_id"])
        if frame["event"] == "prompt":
            self.attempts[key] = Attempt(frame, frame.get("attempt"))
        attempt = self.attempts.get(key)
        if attempt is None:  # deltas of an attempt that started before this process
            attempt = self.attempts[key] = Attempt()
        self.attempts.move_to_end(key)
        while len(self.attempts) > STEPS:
            self.attempts.popitem(last=False)
        if frame["event"] == "delta" and attempt.whole:
            attempt.size += len(frame["text"])
            attempt.whole = attempt.size <= STEP_TEXT
            if attempt.whole:
                attempt.reply.append(frame["text"])
            else:
                attempt.reply.clear()

    def so_far(self, run_id: str) -> list[dict[str, Any]]:
        """For each step of the run with an attempt in progress: its ``prompt`` frame and a
        ``delta`` frame of the reply so far (each with the attempt's number, when known)."""
        out = []
        for (run, step), attempt in self.attempts.items():
            if run != run_id:
                continue
            if attempt.prompt is not None:
                out.append(attempt.prompt)
            if attempt.reply and attempt.whole:
                text = "".join(attempt.reply)
                attempt.reply = [text]
                delta = {"run_id": run, "step_id": step, "event": "delta", "text": text}
                out.append({**delta, "attempt": attempt.number})
        return out

    def ended(self, run_id: str, step_id: str, number: int | None) -> None:
        """A stream read the end of attempt ``number`` (None: unknown) of a step."""
        attempt = self.attempts.get((run_id, step_id))
        if attempt is None:
            return
        if number is None or attempt.number is None or attempt.number <= number:
            del self.attempts[(run_id, step_id)]

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
