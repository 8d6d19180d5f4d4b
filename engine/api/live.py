"""Live frames of workers in other processes, as the store passes them on (see
:mod:`engine.runner.live`): pieces of a long text joined again, this process's own
worker skipped (its frames come directly), the rest published to the run's streams."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flowrunner.api")

PIECES = 1000
"""Frames being joined at once (a sender that died half-way cannot grow it for ever)."""


class Receiver:
    def __init__(self, publish: Callable[[dict[str, Any]], None], own: str | None) -> None:
        self.publish = publish
        self.own = own
        self.joining: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}

    def payload(self, text: str) -> None:
        try:
            loaded = json.loads(text)
            worker, frames = str(loaded["worker"]), list(loaded["frames"])
        except (ValueError, TypeError, KeyError):
            log.warning("a live payload that is not one: %.80r", text)
            return
        if worker == self.own:
            return
        for frame in frames:
            if isinstance(frame, dict) and _valid(frame):
                self._take(worker, frame)

    def _take(self, worker: str, frame: dict[str, Any]) -> None:
        key = (worker, frame["run_id"], frame["step_id"], frame["event"])
        if frame.pop("more", False):
            if key not in self.joining and len(self.joining) >= PIECES:
                self.joining.pop(next(iter(self.joining)))
            self.joining.setdefault(key, []).append(frame)
            return
        pieces = self.joining.pop(key, [])
        if pieces:
            frame = {**pieces[0], "text": "".join(p["text"] for p in pieces) + frame["text"]}
        self.publish(frame)


def _valid(frame: dict[str, Any]) -> bool:
    return (
        frame.get("event") in ("delta", "prompt")
        and isinstance(frame.get("run_id"), str)
        and isinstance(frame.get("step_id"), str)
        and isinstance(frame.get("text"), str)
    )
