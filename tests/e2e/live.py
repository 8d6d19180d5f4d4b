"""The live-frames scenario, shared by the SQLite (tests/e2e) and PostgreSQL (tests/cluster)
tests: ``serve`` streams the prompt and the token deltas of an agent step that another
process runs, while a chat server holds the model's stream half-way."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx

from tests.e2e.conftest import E2EProject, wait_for
from tests.fakes.chat_server import ChatServer

FIRST = "first words "
REST = "and the rest"
PROMPT = "Tell a story about <b>{{ inputs.topic }}</b> & friends"


class Held:
    """A model reply that stops after :data:`FIRST` until :meth:`release`."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def __call__(self, prompt: str) -> Iterator[str]:
        yield FIRST
        self.released.wait(60)
        yield REST


class Follower:
    """An SSE client of a run's events in a thread; every frame as (event, id, data)."""

    def __init__(self, base: str, run_id: str, after: int = 0) -> None:
        self.url = f"{base}/v1/runs/{run_id}/events?after={after}"
        self.frames: list[tuple[str, str | None, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            headers = {"Accept": "text/event-stream"}
            with httpx.stream("GET", self.url, headers=headers, timeout=60) as response:
                assert response.status_code == 200, response.read()
                event, event_id, data = "message", None, ""
                for line in response.iter_lines():
                    if line == "":
                        if data:
                            self.frames.append((event, event_id, json.loads(data)))
                        event, event_id, data = "message", None, ""
                    elif line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("id:"):
                        event_id = line.partition(":")[2].strip()
                    elif line.startswith("data:"):
                        data += line.partition(":")[2].removeprefix(" ")
                    if event == "end" and data:
                        self.frames.append((event, event_id, json.loads(data)))
                        return
        except BaseException as exc:  # shown by the test, not lost in the thread
            self.error = exc

    def names(self) -> list[str]:
        return [event for event, _, _ in self.frames]

    def text(self) -> str:
        return "".join(data["text"] for event, _, data in self.frames if event == "delta")

    def has(self, event: str, text: str | None = None) -> bool:
        return any(
            e == event and (text is None or d.get("text") == text) for e, _, d in self.frames
        )

    def wait_end(self) -> None:
        self.thread.join(60)
        assert self.error is None, self.error
        assert self.names()[-1:] == ["end"], self.names()


def setup(project: E2EProject, chat: ChatServer) -> None:
    project.flow(
        "story",
        f"""
        inputs:
          topic: {{type: string}}
        steps:
          - id: talk
            kind: agent
            prompt: "{PROMPT}"
        """,
    )
    project.env.update(
        {"FLOWRUNNER_AGENT_BACKEND": "openai", "FLOWRUNNER_OPENAI_BASE_URL": chat.url}
    )


def check_streams(project: E2EProject, base: str, held: Held, chat: ChatServer) -> None:
    """A stream opened before the call and one opened mid-call both get the prompt and the
    reply so far before the step completes; every delta lies inside its step's events."""
    run_id = project.launch("story", "topic=dragons")
    early = Follower(base, run_id)
    wait_for(
        lambda: early.has("delta") or early.error, 30, "a delta", detail=lambda: str(early.frames)
    )
    assert early.error is None, early.error
    assert chat.prompts and early.has("prompt", chat.prompts[0]), early.frames
    assert "step_completed" not in early.names()  # the model is still streaming
    assert early.text() == FIRST
    prompt = next(d for e, _, d in early.frames if e == "prompt")
    assert prompt["attempt"] == 1 and prompt["step_id"] == "talk"

    last = max(int(i) for _, i, _ in early.frames if i is not None)
    late = Follower(base, run_id, after=last)  # a page opened mid-attempt
    wait_for(lambda: late.has("delta"), 10, "the reply so far on a late stream")
    assert late.names()[:2] == ["prompt", "delta"], late.frames
    assert late.frames[0][2]["text"] == chat.prompts[0]
    assert late.text() == FIRST

    held.released.set()
    early.wait_end()
    late.wait_end()
    assert early.text() == FIRST + REST
    assert late.text() == FIRST + REST
    names = [n for n in early.names() if n not in ("run_started", "run_completed", "end")]
    assert names[:2] == ["step_started", "prompt"], names
    assert names[-1] == "step_completed" and set(names[2:-1]) == {"delta"}, names
    assert names.count("prompt") == 1
