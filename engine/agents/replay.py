"""The ``replay`` backend: answers from the agent calls recorded by an earlier run.

Each call is looked up by (step id, sequence number), so a replayed run gets
exactly the outputs the recorded one got, whichever backend produced them.
A recorded scripted reply stays marked as scripted.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.agents.base import AgentError, AgentReply, AgentRequest, OnDelta, stream_text


class ReplayBackend:
    """Replays ``calls``: (step id, sequence) -> (output, scripted) of run ``source_run``."""

    name: str = "replay"

    def __init__(self, calls: Mapping[tuple[str, int], tuple[str, bool]], source_run: str) -> None:
        self.calls = dict(calls)
        self.source_run = source_run

    async def complete(self, request: AgentRequest, on_delta: OnDelta | None = None) -> AgentReply:
        """The recorded output of this step's call, streamed in a few pieces."""
        recorded = self.calls.get((request.step_id, request.sequence))
        if recorded is None:
            raise AgentError(
                f"run {self.source_run} has no recorded call for step {request.step_id} "
                f"(call {request.sequence})"
            )
        text, scripted = recorded
        await stream_text(text, on_delta)
        return AgentReply(text=text, backend=self.name, scripted=scripted)

    async def aclose(self) -> None:
        """Nothing to release."""
