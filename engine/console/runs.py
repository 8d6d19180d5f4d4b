"""The console's runs: the list, a run's page with its graph, and its Cancel and Retry."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine import errors
from engine.api.context import Api
from engine.api.runs import next_cursor, parse_cursor
from engine.console.graph import LAYOUTS, Layout, Spec
from engine.console.pages import ConsoleRoute, page, posted, redirect, signed_in
from engine.console.report import render
from engine.core.plan import RunStatus
from engine.runner import service
from engine.store.base import RunRecord, StepRecord

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

PAGE = 50
STATUSES = [status.value for status in RunStatus]


def _filters(request: Request) -> dict[str, Any]:
    query = request.query_params
    status = query.get("status") or None
    if status is not None and status not in STATUSES:
        raise errors.InvalidInput(f"status: not one of {', '.join(STATUSES)}")
    waiting = {"true": True, "false": False}.get(query.get("waiting", ""))
    return {"flow": query.get("flow") or None, "status": status, "waiting": waiting}


@router.get("/")
async def runs_page(request: Request) -> Response:
    seen, _ = signed_in(request)
    context: Api = request.app.state.api
    chosen = _filters(request)
    runs = await context.store.list_runs(
        **chosen, limit=PAGE, before=parse_cursor(request.query_params.get("cursor"))
    )
    last = runs[-1] if len(runs) == PAGE else None
    following = None
    if last is not None:
        params = {k: str(v).lower() for k, v in chosen.items() if v is not None}
        params["cursor"] = next_cursor(last.created_at, last.id)
        following = params
    return page(
        request,
        seen,
        "runs.html",
        runs=runs,
        chosen=chosen,
        statuses=STATUSES,
        following=following,
        paged="cursor" in request.query_params,
        title="Runs",
    )


async def run_layout(context: Api, run: RunRecord, steps: list[StepRecord]) -> Layout:
    """The run's graph, laid out once per flow snapshot."""
    found = LAYOUTS.cached(run.snapshot_hash)
    if found is not None:
        return found
    compiled = await service.compiled_flow(context.store, run.id)
    specs = [Spec(step.id, step.kind, tuple(step.needs)) for step in compiled.flow.steps]
    return await LAYOUTS.get(run.snapshot_hash, specs)


@router.get("/runs/{run_id}")
async def run_page(run_id: str, request: Request) -> Response:
    seen, _ = signed_in(request)
    context: Api = request.app.state.api
    run = await context.store.get_run(run_id)
    steps = await context.store.get_steps(run_id)
    graph = await run_layout(context, run, steps)
    return page(
        request,
        seen,
        "run.html",
        run=run,
        steps=steps,
        statuses={step.id: str(step.status) for step in steps},
        graph=graph,
        report=render(run.report) if run.report else None,
        running=run.status is RunStatus.RUNNING,
        retryable=run.status in (RunStatus.FAILED, RunStatus.CANCELLED),
        title=f"{run.flow} {run.id}",
    )


@router.post("/runs/{run_id}/cancel")
async def cancel(run_id: str, request: Request) -> Response:
    seen, _ = signed_in(request)
    await posted(request, seen.session)
    context: Api = request.app.state.api
    await service.cancel(context.store, run_id, time.time())
    context.changed(run_id)
    return redirect(f"/runs/{run_id}")


@router.post("/runs/{run_id}/retry")
async def retry(run_id: str, request: Request) -> Response:
    seen, _ = signed_in(request)
    await posted(request, seen.session)
    context: Api = request.app.state.api
    await service.retry(context.store, run_id, time.time())
    context.changed(run_id)
    return redirect(f"/runs/{run_id}")
