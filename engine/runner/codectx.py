"""What a code step receives as ``ctx``, and checkpointed dispatches of read-only agents."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.agents import AgentRequest, Backend
from engine.errors import FlowrunnerError
from engine.runner.outputs import compose
from engine.runner.render import StepView
from engine.store.base import AgentCall, Claim, Store


class DispatchError(FlowrunnerError):
    """A dispatch that cannot run: unknown persona, or a sequence that changed on re-run."""


@dataclass
class Dispatcher:
    """Runs ``ctx.dispatch`` calls on the worker's loop, each stored under (step, sequence).

    When a step runs again after a crash, the calls its earlier attempts
    completed are answered from the store, after checking that the same
    sequence asks for the same persona (as a durable-execution engine checks
    that a replayed workflow is deterministic).
    """

    store: Store
    backend: Backend
    claim: Claim
    model: str
    personas: Mapping[str, str]
    recorded: Mapping[int, AgentCall]
    clock: Callable[[], float]
    sequence: int = 0

    async def dispatch(self, persona: str, prompt: str) -> str:
        self.sequence += 1
        sequence = self.sequence
        prior = self.recorded.get(sequence)
        if prior is not None:
            if prior.persona != persona:
                raise DispatchError(
                    f"dispatch {sequence} asked for persona '{persona}' but the earlier attempt "
                    f"asked for '{prior.persona}': the code step is not deterministic"
                )
            return prior.output
        text = self._persona_text(persona)
        request = AgentRequest(compose(text, prompt, []), self.model, self.claim.step_id, sequence)
        reply = await self.backend.complete(request)
        await self.store.record_agent_call(
            AgentCall(
                self.claim.run_id,
                self.claim.step_id,
                self.claim.attempt,
                sequence,
                persona,
                request.prompt,
                reply.text,
                reply.backend,
                reply.scripted,
                self.clock(),
            )
        )
        return reply.text

    def _persona_text(self, persona: str) -> str:
        """From the run's snapshot: editing a persona never changes a run already started."""
        if persona not in self.personas:
            known = ", ".join(sorted(self.personas)) or "none"
            raise DispatchError(f"persona '{persona}' is not in this run's snapshot ({known})")
        return self.personas[persona]


def latest_calls(calls: list[AgentCall], attempt: int) -> dict[int, AgentCall]:
    """Dispatches (sequence > 0) completed by earlier attempts, the latest of each sequence."""
    found: dict[int, AgentCall] = {}
    for call in sorted(calls, key=lambda c: c.attempt):
        if call.sequence > 0 and call.attempt < attempt:
            found[call.sequence] = call
    return found


class StepContext:
    """``ctx``: the run's inputs and band, settled ancestors, the step's params, dispatch."""

    def __init__(
        self,
        *,
        inputs: Mapping[str, Any],
        band: str | None,
        steps: Mapping[str, StepView],
        params: Mapping[str, Any],
        run_id: str,
        flow: str,
        dispatcher: Dispatcher,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.inputs = inputs
        self.band = band
        self.steps = steps
        self.params = params
        self.run_id = run_id
        self.flow = flow
        self._dispatcher = dispatcher
        self._loop = loop

    async def dispatch(self, persona: str, prompt: str) -> str:
        """Ask a read-only agent (``await ctx.dispatch(...)`` in an async step)."""
        future = asyncio.run_coroutine_threadsafe(
            self._dispatcher.dispatch(persona, prompt), self._loop
        )
        return await asyncio.wrap_future(future)

    def dispatch_sync(self, persona: str, prompt: str) -> str:
        """Ask a read-only agent from a sync step."""
        future = asyncio.run_coroutine_threadsafe(
            self._dispatcher.dispatch(persona, prompt), self._loop
        )
        return future.result()


class ThreadCall:
    """Runs a code step's function in a worker thread, sync or async, cancellably.

    An async function gets its own event loop in that thread, so neither kind
    ever blocks the worker's loop. Cancelling cancels an async function's task;
    a sync function cannot be interrupted and its result is discarded.
    """

    def __init__(self, function: Callable[..., Any], ctx: StepContext, params: Mapping[str, Any]):
        self.function = function
        self.ctx = ctx
        self.params = dict(params)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def __call__(self) -> Any:
        result = self.function(self.ctx, **self.params)
        if not inspect.isawaitable(result):
            return result
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(_awaited(result))
            with self._lock:
                self._loop, self._task = loop, task
                if self._cancelled:
                    task.cancel()
            return loop.run_until_complete(task)
        finally:
            loop.close()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._loop is not None and self._task is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._task.cancel)


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value
