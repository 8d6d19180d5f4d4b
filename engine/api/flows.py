"""Routes about flows: list, read, lint, launch, and the flow schema."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine import errors
from engine.api.context import Api, Context, Identity, plain_json
from engine.config import Project
from engine.lint import CheckedFlow, check_file, check_text, flow_files
from engine.lint.pipeline import LintReport
from engine.runner import service
from engine.schema import render as render_schema

router = APIRouter(prefix="/v1")


class LaunchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict, description="The flow's inputs.")
    band: str | None = Field(default=None, description="The band (default: the first).")
    model: str | None = Field(default=None, description="The model (default: configured).")

    @model_validator(mode="after")
    def _plain(self) -> LaunchBody:
        plain_json(self.model_dump(), "launch")
        return self


def find(context: Api, name: str) -> Path:
    """``flows/NAME.yaml`` (or ``.yml``), as the CLI finds it; else the first file of that
    name in a subfolder. (``name`` is one path segment: it cannot leave ``flows/``.)"""
    found = context.project.named_flow(name)
    if found is not None:
        return found
    for path in flow_files([context.project.flows_dir]):
        if path.stem == name:
            return path
    raise errors.NotFound(f"no flow '{name}' in flows/")


async def checked(context: Api, name: str) -> CheckedFlow:
    result = await context.look(find(context, name))
    if result.checked is None:
        details = [d.as_json() for d in result.diagnostics]
        raise errors.InvalidFlow(f"flow '{name}' does not pass lint", details)
    return result.checked


@dataclass(frozen=True, slots=True)
class Listed:
    """A flow of the project with its lint status (the API's list and the console's)."""

    name: str
    file: str
    description: str | None
    valid: bool
    errors: int
    warnings: int


def listed_flows(project: Project) -> list[Listed]:
    """Every flow in the project's ``flows/``, checked."""
    found = []
    for path in flow_files([project.flows_dir]):
        result = check_file(path, project)
        errors_count = sum(d.severity == "error" for d in result.diagnostics)
        flow = result.checked.flow if result.checked else None
        name, description = (flow.name, flow.description) if flow else (path.stem, None)
        warnings = len(result.diagnostics) - errors_count
        found.append(
            Listed(name, path.name, description, result.checked is not None, errors_count, warnings)
        )
    return found


@router.get("/flows", tags=["flows"])
async def list_flows(context: Context, who: Identity) -> dict[str, Any]:
    """Every flow of the project with its lint status."""
    return {"flows": [asdict(listed) for listed in listed_flows(context.project)]}


@router.get("/flows/{name}", tags=["flows"])
async def get_flow(name: str, context: Context, who: Identity) -> dict[str, Any]:
    """A flow's definition, inputs, steps and graph (edges as [need, step])."""
    flow = (await checked(context, name)).flow
    return {
        "name": flow.name,
        "description": flow.description,
        "bands": flow.bands,
        "inputs": {k: v.model_dump(exclude_none=True) for k, v in flow.inputs.items()},
        "steps": [
            {"id": s.id, "kind": s.kind, "title": s.title, "needs": s.needs} for s in flow.steps
        ],
        "graph": [[need, step.id] for step in flow.steps for need in step.needs],
        "definition": flow.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


@router.post("/lint", tags=["flows"])
async def lint(request: Request, context: Context, who: Identity) -> dict[str, Any]:
    """Lint the YAML of the request body, exactly as ``flowrunner lint --format json``."""
    body = await request.body()
    text = body.decode("utf-8", errors="replace")
    path = context.project.flows_dir / "request.yaml"
    report = LintReport()
    report.add(check_text(text, path, context.project, shown="request.yaml"))
    return {"files": report.files, "diagnostics": [d.as_json() for d in report.diagnostics]}


@router.post("/flows/{name}/runs", status_code=201, tags=["runs"])
async def launch(
    name: str,
    body: LaunchBody,
    context: Context,
    who: Identity,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Launch a run; the same ``Idempotency-Key`` with the same body from the same identity
    returns the same run (another identity's same key is another key)."""
    flow = await checked(context, name)
    stored_key = None if idempotency_key is None else scoped_key(who, idempotency_key)
    try:
        run_id, created = await service.launch(
            context.store,
            context.project,
            flow,
            inputs=body.inputs,
            band=body.band,
            model=body.model,
            launched_by=who,
            idempotency_key=stored_key,
            snapshot=context.snapshot(flow),
            now=time.time(),
        )
    except errors.InvalidInput as exc:  # the key reused with another body: name the key sent
        if stored_key is None or exc.details != {"idempotency_key": stored_key}:
            raise
        raise errors.InvalidInput(exc.message, {"idempotency_key": idempotency_key}) from None
    context.changed(run_id)
    return {"id": run_id, "created": created}


def scoped_key(identity: str, key: str) -> str:
    """The ``Idempotency-Key`` as stored: qualified by the identity that sent it, so that
    another identity's same key is another key, and neither learns of the other's run.
    (JSON keeps the two parts apart whatever characters they hold.)"""
    return json.dumps([identity, key])


@router.get("/schema", tags=["flows"])
async def schema(who: Identity) -> Response:
    """``schema.json``: the JSON Schema of a flow file."""
    return Response(render_schema(), media_type="application/schema+json")
