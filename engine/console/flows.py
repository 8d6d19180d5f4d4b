"""The console's flows: each with its lint status; a flow's graph, diagnostics and launch form."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from engine import errors
from engine.api.context import Api
from engine.api.flows import find, listed_flows
from engine.console import forms
from engine.console.graph import LAYOUTS, Spec
from engine.console.pages import ConsoleRoute, Viewer, first, page, posted, redirect, signed_in
from engine.lint.pipeline import FileResult
from engine.model.diagnostics import Diagnostic
from engine.runner import service

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


@dataclass(frozen=True, slots=True)
class Shown:
    """A diagnostic with the source line it points at."""

    diagnostic: Diagnostic
    line: str | None


@router.get("/flows")
async def flows_page(request: Request) -> Response:
    seen, _ = signed_in(request)
    context: Api = request.app.state.api
    listed = await asyncio.to_thread(listed_flows, context.project)
    return page(request, seen, "flows.html", flows=listed, title="Flows")


def _shown(result: FileResult) -> list[Shown]:
    try:
        with open(result.path, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        lines = []
    return [
        Shown(d, lines[d.line - 1] if 0 < d.line <= len(lines) else None)
        for d in result.diagnostics
    ]


async def _show(
    request: Request,
    seen: Viewer,
    name: str,
    status: int = 200,
    posted_form: dict[str, list[str]] | None = None,
    problems: dict[str, str] | None = None,
) -> Response:
    context: Api = request.app.state.api
    path = find(context, name)
    result = await context.look(path)
    values: dict[str, Any] = {"graph": None, "fields": [], "flow": None}
    if result.checked is not None:
        flow = result.checked.flow
        key = context.snapshot(result.checked).encoded[1]
        specs = [Spec(step.id, step.kind, tuple(step.needs)) for step in flow.steps]
        values = {
            "flow": flow,
            "graph": await LAYOUTS.get(key, specs),
            "fields": forms.fields(flow.inputs, posted_form, problems),
            "band": first(posted_form or {}, "band"),
            "model": first(posted_form or {}, "model"),
            "problem": "; ".join(
                f"{k}: {v}" for k, v in (problems or {}).items() if k not in flow.inputs
            )
            or None,
        }
    return page(
        request,
        seen,
        "flow.html",
        status,
        name=name,
        file=path.name,
        diagnostics=_shown(result),
        title=f"Flow {name}",
        **values,
    )


@router.get("/flows/{name}")
async def flow_page(name: str, request: Request) -> Response:
    seen, _ = signed_in(request)
    return await _show(request, seen, name)


@router.post("/flows/{name}")
async def launch(name: str, request: Request) -> Response:
    """Launch a run from the form, as the signed-in identity; then open its page."""
    seen, who = signed_in(request)
    form = await posted(request, seen.session)
    context: Api = request.app.state.api
    result = await context.look(find(context, name))
    if result.checked is None:
        raise errors.InvalidFlow(f"flow '{name}' does not pass lint", [])
    inputs, problems = forms.values(result.checked.flow.inputs, form)
    if problems:
        return await _show(request, seen, name, 422, form, problems)
    try:
        run_id, _ = await service.launch(
            context.store,
            context.project,
            result.checked,
            inputs=inputs,
            band=first(form, "band") or None,
            model=first(form, "model").strip() or None,
            launched_by=who,
            snapshot=context.snapshot(result.checked),
            now=time.time(),
        )
    except errors.InvalidInput as exc:
        details = exc.details if isinstance(exc.details, dict) else {}
        specs = result.checked.flow.inputs
        found = {k: str(v) for k, v in details.items() if k in specs} or {"launch": exc.message}
        return await _show(request, seen, name, 422, form, found)
    context.changed(run_id)
    return redirect(f"/runs/{run_id}")
