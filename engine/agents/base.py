"""The contract every agent backend keeps: one prompt in, one reply out, deltas on the way.

A backend receives the whole composed prompt as one user message and adds
nothing to it, so a recorded run can be replayed on any backend. Timeouts and
cancellation belong to the caller (``asyncio.wait_for``, ``task.cancel()``);
a backend only promises to release what it holds (a stream, a process group)
when its ``complete`` coroutine is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine import errors

OnDelta = Callable[[str], None]
"""Receives each piece of a reply as it arrives; the pieces join to the reply text."""


@dataclass(frozen=True, slots=True)
class AgentRequest:
    """One call to a model: the composed prompt, the model name and where the call belongs."""

    prompt: str
    """The whole composed prompt, sent as one user message with nothing added."""
    model: str
    step_id: str
    """The step making the call, for replay look-ups and logs."""
    sequence: int = 0
    """0 for the step's own call; 1, 2, ... for ``ctx.dispatch`` calls within one attempt."""


@dataclass(frozen=True, slots=True)
class AgentReply:
    """What a backend answered, and whether a real model produced it."""

    text: str
    backend: str
    """``openai``, ``command``, ``scripted`` or ``replay``."""
    scripted: bool = False
    """True when no real model produced the text (scripted, or a replay of a scripted call)."""


class AgentError(Exception):
    """A failed attempt; the message is shown to users as one clear line.

    The command backend appends the tail of the command's stderr on the lines
    after the first.
    """


class RetryLater(AgentError):
    """The model refused for now (HTTP 429 or 503) and said when to ask again.

    The ``openai`` backend waits and asks again within the call while its caps
    allow; this is raised once they do not, ``retry_after`` seconds being what
    the server last asked for.
    """

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(errors.ConfigError):
    """A backend cannot be built from the settings or files it was given."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Backend(Protocol):
    """An agent backend chosen by the operator, never by the flow."""

    name: str

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        """Answer ``request``, passing each piece of the reply to ``on_delta`` as it arrives."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds (connections); it is not used afterwards."""
        ...


def split_text(text: str, pieces: int = 4) -> list[str]:
    """``text`` cut into at most ``pieces`` non-empty parts that join back to it."""
    if not text:
        return []
    size = max(1, -(-len(text) // pieces))
    return [text[start : start + size] for start in range(0, len(text), size)]


async def stream_text(text: str, on_delta: OnDelta | None, pieces: int = 4) -> None:
    """Hand a canned ``text`` to ``on_delta`` in a few parts, yielding to the loop in between.

    Canned backends use it so progress views see a reply arrive like a model's.
    """
    for part in split_text(text, pieces):
        if on_delta is not None:
            on_delta(part)
        await asyncio.sleep(0)
