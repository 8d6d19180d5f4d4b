"""A step's page (status, attempts, prompt and reply, events) and a gate's decision form."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine import errors
from engine.api.context import Api
from engine.api.gates import decision_of
from engine.console import forms
from engine.console.pages import (
    FULL,
    ConsoleRoute,
    Viewer,
    first,
    page,
    posted,
    redirect,
    signed_in,
)
from engine.core.plan import StepStatus
from engine.model.documents import ApprovalStep, CodeStep
from engine.runner import service
from engine.store.base import Event, RunRecord, StepRecord

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

MAX_EVENTS = 20_000
"""Events of a run read to find one step's (a run of 1,000 steps has about 4,000)."""


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    started_at: float
    ended: str
    """How it ended: ``completed``, ``failed``, ``retrying``, ... or ``running``."""
    ended_at: float | None
    error: str | None


async def step_events(context: Api, run_id: str, step_id: str) -> list[Event]:
    found: list[Event] = []
    after, read = 0, 0
    while read < MAX_EVENTS:
        batch = await context.store.events(run_id, after=after)
        if not batch:
            break
        found.extend(event for event in batch if event.step_id == step_id)
        after, read = batch[-1].id, read + len(batch)
    return found


def attempts(events: list[Event]) -> list[Attempt]:
    """Each attempt of a step, from its events: when it started, how it ended, its error."""
    made: list[Attempt] = []
    for event in events:
        if event.event == "step_started":
            number = int(event.payload.get("attempt", len(made) + 1))
            made.append(Attempt(number, event.at, "running", None, None))
        elif made and made[-1].ended == "running" and event.event != "delta":
            ended = event.event.removeprefix("step_")
            error = event.payload.get("error")
            last = made[-1]
            made[-1] = Attempt(last.number, last.started_at, ended, event.at, error)
    return made


def may_decide(gate: ApprovalStep, run: RunRecord, who: str | None) -> str | None:
    """Why ``who`` may not decide ``gate``, or None when it may."""
    if gate.approvers is not None and who not in gate.approvers:
        return f"Only {', '.join(gate.approvers)} may decide this gate."
    if gate.prevent_self_approval and who is not None and who == run.launched_by:
        return "You launched this run, and this gate may not be decided by its launcher."
    return None


async def _show(
    request: Request,
    seen: Viewer,
    run_id: str,
    step_id: str,
    status: int = 200,
    posted_form: dict[str, list[str]] | None = None,
    problems: dict[str, str] | None = None,
    notice: str | None = None,
) -> Response:
    context: Api = request.app.state.api
    run = await context.store.get_run(run_id)
    found = await context.store.get_steps(run_id, [step_id])
    if not found:
        raise errors.NotFound(f"no step '{step_id}' in run '{run_id}'")
    step = found[0]
    compiled = await service.compiled_flow(context.store, run_id)
    spec = compiled.steps.get(step_id)
    events = await step_events(context, run_id, step_id)
    values: dict[str, Any] = {}
    if isinstance(spec, ApprovalStep):
        values = _gate(spec, step, run, seen, posted_form, problems)
    calls = await context.store.agent_calls(run_id, step_id) if step.kind == "agent" else []
    full = request.query_params.get("full") == "1"
    return page(
        request,
        seen,
        "step.html",
        status,
        run=run,
        step=step,
        spec=spec,
        code=spec if isinstance(spec, CodeStep) else None,
        arguments=json.loads(step.input) if step.kind == "code" and step.input else None,
        attempts=attempts(events),
        events=events,
        calls=calls,
        prompt=step.input if step.input is not None else (calls[-1].prompt if calls else None),
        limit=None if full else FULL,
        notice=notice,
        title=f"{step_id} of {run.flow} {run.id}",
        **values,
    )


def _gate(
    gate: ApprovalStep,
    step: StepRecord,
    run: RunRecord,
    seen: Viewer,
    posted_form: dict[str, list[str]] | None,
    problems: dict[str, str] | None,
) -> dict[str, Any]:
    return {
        "gate": service.gate_json(gate, step),
        "decision": decision_of(step),
        "waiting": step.status is StepStatus.WAITING,
        "refusal": may_decide(gate, run, seen.who),
        "fields": forms.fields(gate.form, posted_form, problems),
        "comment": first(posted_form or {}, "comment"),
        "problem": ", ".join(f"{k}: {v}" for k, v in (problems or {}).items() if k not in gate.form)
        or None,
    }


@router.get("/runs/{run_id}/steps/{step_id}")
async def step_page(run_id: str, step_id: str, request: Request) -> Response:
    seen, _ = signed_in(request)
    return await _show(request, seen, run_id, step_id)


@router.post("/runs/{run_id}/steps/{step_id}")
async def decide(run_id: str, step_id: str, request: Request) -> Response:
    """Approve or reject the gate with the form's typed values, as the signed-in identity."""
    seen, who = signed_in(request)
    form = await posted(request, seen.session)
    context: Api = request.app.state.api
    verdict = first(form, "decision")
    if verdict not in ("approve", "reject"):
        raise errors.InvalidInput("decision: press Approve or Reject")
    compiled = await service.compiled_flow(context.store, run_id)
    gate = compiled.steps.get(step_id)
    if not isinstance(gate, ApprovalStep):
        raise errors.Conflict(f"step '{step_id}' is not an approval gate")
    payload, problems = forms.values(gate.form, form) if verdict == "approve" else ({}, {})
    if problems:
        return await _show(request, seen, run_id, step_id, 422, form, problems)
    try:
        await service.decide(
            context.store,
            run_id,
            step_id,
            approve=verdict == "approve",
            identity=who,
            comment=first(form, "comment"),
            payload=payload,
            now=time.time(),
        )
    except errors.InvalidInput as exc:
        found = exc.details if isinstance(exc.details, dict) else {"payload": exc.message}
        return await _show(request, seen, run_id, step_id, 422, form, found)
    except errors.Conflict:
        notice = "This gate was decided before your decision arrived; yours was not recorded."
        return await _show(request, seen, run_id, step_id, 409, form, None, notice)
    except errors.NotAllowed as exc:
        return await _show(request, seen, run_id, step_id, 403, form, None, exc.message)
    context.changed(run_id)
    return redirect(f"/runs/{run_id}/steps/{step_id}")
