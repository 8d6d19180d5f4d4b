"""Executing one claimed step: `when`, then the agent, the code or the gate.

Each function returns what happened; the worker records it through the store.
An :class:`AttemptFailed` may be retried; a :class:`StepFailed` may not (it
would fail the same way again: a template error, an unresolvable call).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from engine import calls
from engine.agents import AgentError, AgentRequest, Backend
from engine.config import Project
from engine.errors import FlowrunnerError
from engine.model.documents import AgentStep, ApprovalStep, CodeStep, OutputSpec, Step, seconds
from engine.runner.codectx import Dispatcher, DispatchError, StepContext, ThreadCall, latest_calls
from engine.runner.outputs import OutputError, compose, parse_fields, parse_json
from engine.runner.render import Renderer, RenderError
from engine.runner.state import LazySteps, RunState
from engine.store.base import AgentCall, Claim, StepResult, Store

Publish = Callable[[dict[str, Any]], None]


class AttemptFailed(FlowrunnerError):
    """This attempt failed; a retry may succeed, not before ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StepFailed(FlowrunnerError):
    """The step failed in a way a retry would repeat."""


@dataclass(frozen=True, slots=True)
class Done:
    result: StepResult


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    message: str
    deadline: float | None


Outcome = Done | Skip | Wait


@dataclass
class Executor:
    """The services a step needs; one per worker."""

    store: Store
    project: Project
    renderer: Renderer
    threads: ThreadPoolExecutor
    clock: Callable[[], float]
    publish: Publish
    _functions: dict[str, Callable[..., Any]] = field(default_factory=dict)

    async def run(
        self,
        state: RunState,
        claim: Claim,
        backend: Backend,
        load: Callable[[list[str]], None],
    ) -> Outcome:
        step = state.compiled.steps[claim.step_id]
        names = state.names({k: state.views[k] for k in state.needed(step.id) if k in state.views})
        try:
            if step.when is not None and not await self._when(step, names):
                return Skip("`when` is false")
            if isinstance(step, AgentStep):
                return await self._agent(state, claim, step, names, backend)
            if isinstance(step, CodeStep):
                return await self._code(state, claim, step, names, backend, load)
            return await self._gate(step, names)
        except RenderError as exc:
            raise StepFailed(exc.message) from exc

    async def _when(self, step: Step, names: dict[str, Any]) -> bool:
        if isinstance(step.when, bool):
            return step.when
        assert step.when is not None
        renderer = self.renderer
        return await renderer.run(renderer.test, step.when, names, f"step '{step.id}' when")

    async def _agent(
        self,
        state: RunState,
        claim: Claim,
        step: AgentStep,
        names: dict[str, Any],
        backend: Backend,
    ) -> Done:
        snapshot = state.compiled.snapshot
        prompt = await self.renderer.run(
            self.renderer.render, snapshot.prompts[step.id], names, f"step '{step.id}' prompt"
        )
        persona = snapshot.personas.get(step.persona) if step.persona else None
        contracts = [state.compiled.flow.contracts[name] for name in step.contracts or []]
        full = compose(persona, prompt, contracts)

        def delta(text: str) -> None:
            self.publish(
                {"run_id": claim.run_id, "step_id": step.id, "event": "delta", "text": text}
            )

        self.publish(
            {
                "run_id": claim.run_id,
                "step_id": step.id,
                "event": "prompt",
                "attempt": claim.attempt,
                "text": full,
            }
        )
        request = AgentRequest(full, state.record.model, step.id, 0)
        try:
            reply = await backend.complete(request, on_delta=delta)
        except AgentError as exc:
            raise AttemptFailed(str(exc), getattr(exc, "retry_after", 0.0)) from exc
        call = AgentCall(
            claim.run_id,
            step.id,
            claim.attempt,
            0,
            step.persona,
            full,
            reply.text,
            reply.backend,
            reply.scripted,
            self.clock(),
        )
        try:
            fields = parse_fields(reply.text, step.fields)
            data = None
            if step.output == "json" or isinstance(step.output, OutputSpec):
                spec = step.output if isinstance(step.output, OutputSpec) else None
                data = parse_json(reply.text, spec.json_schema if spec else None)
        except OutputError as exc:
            await self.store.record_agent_call(call)  # a reply that failed is recorded too
            raise AttemptFailed(exc.message) from exc
        result = StepResult(
            reply.text, fields, data, input=full, scripted=reply.scripted, call=call
        )
        return Done(result)  # the call is recorded with the result, in the same transaction

    async def _code(
        self,
        state: RunState,
        claim: Claim,
        step: CodeStep,
        names: dict[str, Any],
        backend: Backend,
        load: Callable[[list[str]], None],
    ) -> Done:
        function = self._resolve(step.call)
        params = await self.renderer.run(
            self.renderer.render_value, step.with_, names, f"step '{step.id}' with"
        )
        recorded = {}
        if claim.attempt > 1:  # only an earlier attempt can have left dispatches behind
            calls_made = await self.store.agent_calls(claim.run_id, step.id)
            recorded = latest_calls(calls_made, claim.attempt)
        loop = asyncio.get_running_loop()
        dispatcher = Dispatcher(
            self.store,
            backend,
            claim,
            state.record.model,
            state.compiled.snapshot.personas,
            recorded,
            self.clock,
        )
        ctx = StepContext(
            inputs=state.record.inputs,
            band=state.record.band,
            steps=LazySteps(state, step.id, load),
            params=params,
            run_id=claim.run_id,
            flow=state.record.flow,
            dispatcher=dispatcher,
            loop=loop,
        )
        call = ThreadCall(function, ctx, params)
        future = loop.run_in_executor(self.threads, call)
        try:
            value = await future
        except asyncio.CancelledError:
            call.cancel()
            raise
        except (DispatchError, AgentError) as exc:
            raise AttemptFailed(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # the step's own code raised: its error, one line
            raise AttemptFailed(f"{type(exc).__name__}: {exc}") from exc
        # The arguments as rendered are kept with the result (the step's input), as an
        # agent step keeps the prompt it sent.
        arguments = json.dumps(params, ensure_ascii=False, default=str)
        return Done(replace(_code_result(value), input=arguments))

    def _resolve(self, call: str) -> Callable[..., Any]:
        """The function a call names, resolved once per worker (modules load once anyway)."""
        function = self._functions.get(call)
        if function is None:
            try:
                function = calls.resolve(call, self.project.code_roots)
            except calls.CallError as exc:
                raise StepFailed(f"cannot resolve '{call}': {exc}") from exc
            self._functions[call] = function
        return function

    async def _gate(self, step: ApprovalStep, names: dict[str, Any]) -> Wait:
        renderer, what = self.renderer, f"step '{step.id}' message"
        message = (
            await renderer.run(renderer.render, step.message, names, what) if step.message else ""
        )
        deadline = self.clock() + seconds(step.timeout) if step.timeout else None
        return Wait(message, deadline)


def _code_result(value: Any) -> StepResult:
    """A returned str is the output; a mapping or list is data, with its JSON as output."""
    if value is None:
        return StepResult("")
    if isinstance(value, str):
        return StepResult(value)
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise AttemptFailed(
            f"the step returned a {type(value).__name__}, which is not JSON: {exc}"
        ) from exc
    return StepResult(text, data=json.loads(text))
