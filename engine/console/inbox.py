"""The inbox: every gate waiting across all runs that the viewer may decide, oldest first.

It reads the running runs that wait on a gate (newest first, up to :data:`MAX_RUNS`),
their steps, and each run's flow snapshot (cached by hash) to know who may decide.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine.api.context import Api
from engine.console.pages import ConsoleRoute, page, signed_in
from engine.console.steps import may_decide
from engine.core.plan import StepStatus
from engine.model.documents import ApprovalStep
from engine.runner import service
from engine.runner.snapshot import CompiledFlow
from engine.store.base import RunRecord, StepRecord

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

MAX_RUNS = 2000
BATCH = 500
_COMPILED: OrderedDict[str, CompiledFlow] = OrderedDict()
CACHED = 64


@dataclass(frozen=True, slots=True)
class Waiting:
    run: RunRecord
    step: StepRecord
    gate: ApprovalStep
    since: float


async def compiled(context: Api, run: RunRecord) -> CompiledFlow:
    """The run's flow as launched, cached by snapshot hash (a few dozen at most)."""
    found = _COMPILED.get(run.snapshot_hash)
    if found is None:
        found = await service.compiled_flow(context.store, run.id)
        _COMPILED[run.snapshot_hash] = found
        while len(_COMPILED) > CACHED:
            _COMPILED.popitem(last=False)
    else:
        _COMPILED.move_to_end(run.snapshot_hash)
    return found


async def waiting_runs(context: Api) -> tuple[list[RunRecord], bool]:
    """Running runs waiting on a gate, and whether there were more than :data:`MAX_RUNS`."""
    runs: list[RunRecord] = []
    before = None
    while len(runs) < MAX_RUNS:
        batch = await context.store.list_runs(
            status="running", waiting=True, limit=BATCH, before=before
        )
        runs.extend(batch)
        if len(batch) < BATCH:
            return runs, False
        before = (batch[-1].created_at, batch[-1].id)
    return runs, True


async def gates_for(context: Api, who: str | None) -> tuple[list[Waiting], bool]:
    runs, more = await waiting_runs(context)
    found: list[Waiting] = []
    for run in runs:
        waiting = await context.store.waiting_steps(run.id)  # not every step of the run
        if not waiting:
            continue
        steps = [
            step
            for step in await context.store.get_steps(run.id, waiting)
            if step.kind == "approval" and step.status is StepStatus.WAITING
        ]
        flow = await compiled(context, run)
        for step in steps:
            gate = flow.steps.get(step.id)
            if isinstance(gate, ApprovalStep) and may_decide(gate, run, who) is None:
                since = step.started_at if step.started_at is not None else run.created_at
                found.append(Waiting(run, step, gate, since))
    found.sort(key=lambda waiting: (waiting.since, waiting.run.id, waiting.step.id))
    return found, more


@router.get("/inbox")
async def inbox(request: Request) -> Response:
    seen, who = signed_in(request)
    context: Api = request.app.state.api
    found, more = await gates_for(context, who)
    return page(request, seen, "inbox.html", waiting=found, more=more, title="Inbox")
