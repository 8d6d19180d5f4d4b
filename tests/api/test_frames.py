"""What Frames keeps of attempts in progress for streams opened mid-attempt."""

from __future__ import annotations

from typing import Any

import pytest

from engine.api import frames as module
from engine.api.frames import Frames


def live(event: str, text: str, step: str = "s", **extra: Any) -> dict[str, Any]:
    return {"run_id": "r", "step_id": step, "event": event, "text": text, **extra}


def test_a_new_stream_gets_the_prompt_and_the_reply_so_far() -> None:
    frames = Frames()
    frames.publish(live("prompt", "P", attempt=2))
    for piece in ("a", "b", "c"):
        frames.publish(live("delta", piece))
    frames.publish(live("delta", "z", step="t"))  # an attempt whose prompt came before
    assert frames.so_far("r") == [
        live("prompt", "P", attempt=2),
        live("delta", "abc", attempt=2),
        live("delta", "z", step="t", attempt=None),
    ]
    assert frames.so_far("other") == []
    assert frames.number == 0  # prompts and deltas are not run changes for the feed


def test_an_attempt_is_forgotten_when_it_ends_and_replaced_by_the_next() -> None:
    frames = Frames()
    frames.publish(live("prompt", "P1", attempt=1))
    frames.publish(live("delta", "old"))
    frames.ended("r", "s", 0)  # an earlier attempt's end, read late
    assert len(frames.so_far("r")) == 2
    frames.publish(live("prompt", "P2", attempt=2))
    assert frames.so_far("r") == [live("prompt", "P2", attempt=2)]
    frames.ended("r", "s", 2)
    assert frames.so_far("r") == []
    frames.publish(live("prompt", "P3", attempt=3))
    frames.publish({"run_id": "r", "step_id": "s", "event": "changed"})  # this worker's
    assert frames.so_far("r") == []


def test_what_is_kept_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the text limit a new stream gets no reply (not a part of it); past the step
    limit the oldest step is forgotten."""
    monkeypatch.setattr(module, "STEP_TEXT", 5)
    monkeypatch.setattr(module, "STEPS", 2)
    frames = Frames()
    frames.publish(live("prompt", "P", attempt=1))
    frames.publish(live("delta", "1234"))
    frames.publish(live("delta", "56"))
    assert frames.so_far("r") == [live("prompt", "P", attempt=1)]
    frames.publish(live("delta", "x", step="t"))
    frames.publish(live("delta", "y", step="u"))
    assert [f["step_id"] for f in frames.so_far("r")] == ["t", "u"]
