"""What the CLI and the HTTP API do to runs: launch, decide gates, cancel, retry, read.

Both shells call these; neither talks to the store for a state change itself.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.config import Project
from engine.core.decisions import initial_steps, on_reached, reset_for_retry
from engine.core.plan import StepStatus, default_band, make_plan
from engine.errors import Conflict, InvalidInput, NotAllowed, NotFound
from engine.lint import CheckedFlow
from engine.model.documents import ApprovalStep, Flow, InputSpec, type_error
from engine.runner.snapshot import CompiledFlow, Snapshot
from engine.store.base import Decision, NewRun, NewStep, RunRecord, StepRecord, Store


def new_run_id() -> str:
    """20 hex digits: the launch time in milliseconds, then 32 random bits.

    Ids in launch order put each launch's rows, steps and events at the end of
    their tables' indexes instead of on a random page of each: a launch wrote
    3.7 pages to SQLite's log with random ids, 2.1 with these. Two launches in
    the same millisecond collide with odds of one in four billion (and the
    store refuses the second rather than overwrite).
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(4)}"


def check_values(
    specs: Mapping[str, InputSpec], given: Mapping[str, Any], what: str
) -> dict[str, Any]:
    """``given`` checked against ``specs``, defaults applied; :class:`InvalidInput` lists
    every problem (missing, unknown, wrong type, not in enum)."""
    problems: dict[str, str] = {}
    values: dict[str, Any] = {}
    for name in given:
        if name not in specs:
            problems[name] = f"unknown {what} (declared: {', '.join(specs) or 'none'})"
    for name, spec in specs.items():
        if name not in given:
            if spec.required:
                problems[name] = f"missing required {what}"
            else:
                values[name] = spec.default
            continue
        value = given[name]
        problem = type_error(spec.type, spec.items, value)
        if problem is None and spec.enum is not None and value not in spec.enum:
            problem = f"{value!r} is not one of {spec.enum}"
        if problem is not None:
            problems[name] = problem
        else:
            values[name] = value
    if problems:
        listed = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        raise InvalidInput(f"invalid {what}s: {listed}", problems)
    return values


def request_hash(flow: str, inputs: Mapping[str, Any], band: str | None, model: str | None) -> str:
    """What an idempotency key is bound to: the same key must come with the same request."""
    body = json.dumps(
        {"flow": flow, "inputs": inputs, "band": band, "model": model}, sort_keys=True
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _band(flow: Flow, band: str | None) -> str | None:
    if band is None:
        return default_band(flow)
    if not flow.bands or band not in flow.bands:
        declared = ", ".join(flow.bands or []) or "none"
        raise InvalidInput(f"unknown band '{band}' (declared: {declared})", {"band": band})
    return band


async def launch(
    store: Store,
    project: Project,
    checked: CheckedFlow,
    *,
    inputs: Mapping[str, Any],
    band: str | None = None,
    model: str | None = None,
    launched_by: str | None = None,
    idempotency_key: str | None = None,
    replay_of: str | None = None,
    snapshot: Snapshot | None = None,
    now: float,
) -> tuple[str, bool]:
    """Validate the inputs, snapshot the flow (unless ``snapshot``, taken of it already, is
    given) and store the run; returns (id, created)."""
    flow = checked.flow
    values = check_values(flow.inputs, inputs, "input")
    chosen = _band(flow, band)
    if replay_of is not None:
        await store.get_run(replay_of)  # NotFound when there is nothing to replay
    if snapshot is None:
        snapshot = Snapshot.take(checked, project)
    snapshot_json, snapshot_hash = snapshot.encoded
    plan = make_plan(flow, checked.order, chosen)
    steps = [
        NewStep(
            id=initial.id,
            kind=plan[initial.id].kind,
            agent=plan[initial.id].agent,
            position=plan[initial.id].position,
            waiting_on=initial.waiting_on,
            dependents=plan[initial.id].dependents,
            excluded=on_reached(plan[initial.id]) is StepStatus.EXCLUDED,
        )
        for initial in initial_steps(plan)
    ]
    run = NewRun(
        id=new_run_id(),
        flow=flow.name,
        band=chosen,
        model=model or project.settings.model,
        inputs=values,
        snapshot=snapshot_json,
        snapshot_hash=snapshot_hash,
        steps=steps,
        max_parallel=flow.max_parallel,
        launched_by=launched_by,
        idempotency_key=idempotency_key,
        request_hash=request_hash(flow.name, inputs, band, model) if idempotency_key else None,
        replay_of=replay_of,
    )
    try:
        return await store.create_run(run, now)
    except Conflict as exc:  # the key was used with another request: the request is wrong
        raise InvalidInput(exc.message, {"idempotency_key": idempotency_key}) from exc


async def compiled_flow(store: Store, run_id: str) -> CompiledFlow:
    return CompiledFlow.load(Snapshot.from_json(await store.get_snapshot(run_id)))


async def decide(
    store: Store,
    run_id: str,
    step_id: str,
    *,
    approve: bool,
    identity: str | None,
    comment: str = "",
    payload: Mapping[str, Any] | None = None,
    now: float,
) -> StepRecord:
    """Approve or reject a waiting gate as ``identity``.

    :class:`NotAllowed` when the identity is not an approver or launched the run
    under ``prevent_self_approval``; :class:`InvalidInput` for a payload that does
    not match the gate's form (the gate keeps waiting); :class:`Conflict` when the
    gate is not waiting (so of two concurrent decisions exactly one wins).
    """
    run = await store.get_run(run_id)
    compiled = await compiled_flow(store, run_id)
    gate = compiled.steps.get(step_id)
    if gate is None:
        raise NotFound(f"no step '{step_id}' in run '{run_id}'")
    if not isinstance(gate, ApprovalStep):
        raise Conflict(f"step '{step_id}' is not an approval gate (it is a {gate.kind} step)")
    if gate.approvers is not None and identity not in gate.approvers:
        raise NotAllowed(f"'{identity}' is not among the approvers of '{step_id}'")
    if gate.prevent_self_approval and identity is not None and identity == run.launched_by:
        raise NotAllowed(f"'{identity}' launched this run and may not decide its gates")
    values = check_values(gate.form, payload or {}, "payload field") if approve else {}
    settle = approve or gate.on_reject == "continue"
    decision = Decision(approve, identity, comment, values)
    return await store.decide_gate(run_id, step_id, decision, settle, now)


async def cancel(store: Store, run_id: str, now: float) -> RunRecord:
    return await store.cancel_run(run_id, now)


async def retry(store: Store, run_id: str, now: float) -> RunRecord:
    """Run a failed or cancelled run again in place: settled steps keep their results."""
    run = await store.get_run(run_id)
    compiled = await compiled_flow(store, run_id)
    statuses = {step.id: step.status for step in await store.get_steps(run_id)}
    return await store.retry_run(run_id, reset_for_retry(compiled.plan(run.band), statuses), now)


@dataclass(frozen=True, slots=True)
class RunDetails:
    run: RunRecord
    steps: list[StepRecord]
    gates: Mapping[str, ApprovalStep] = field(default_factory=dict)
    """The run's approval gates as its snapshot declares them (not the current file)."""

    def as_json(self) -> dict[str, Any]:
        """A run as ``show --json`` prints it: its summary, then everything else."""
        run = self.run
        return {
            **summary(run),
            "inputs": run.inputs,
            "report": run.report,
            "launched_by": run.launched_by,
            "replay_of": run.replay_of,
            "updated_at": run.updated_at,
            "steps": [
                {
                    "id": step.id,
                    "kind": step.kind,
                    "status": str(step.status),
                    "attempts": step.attempts,
                    "output": step.output,
                    "fields": step.fields,
                    "data": step.data,
                    "error": step.error,
                    "scripted": step.scripted,
                    "started_at": step.started_at,
                    "finished_at": step.finished_at,
                    "gate": gate_json(self.gates[step.id], step) if step.id in self.gates else None,
                }
                for step in self.steps
            ],
        }


def gate_json(gate: ApprovalStep, step: StepRecord) -> dict[str, Any]:
    """What deciding a gate takes: its rendered message (once reached), who may decide,
    until when, and the form a decision fills in (``required`` marks a field without a
    default)."""
    return {
        "message": step.input if step.status is not StepStatus.PENDING else None,
        "approvers": gate.approvers,
        "deadline": step.deadline,
        "on_timeout": gate.on_timeout,
        "on_reject": gate.on_reject,
        "prevent_self_approval": gate.prevent_self_approval,
        "form": {
            name: {**spec.model_dump(mode="json", exclude_unset=True), "required": spec.required}
            for name, spec in gate.form.items()
        },
    }


async def details(store: Store, run_id: str) -> RunDetails:
    run, steps = await store.get_run(run_id), await store.get_steps(run_id)
    gates: dict[str, ApprovalStep] = {}
    if any(step.kind == "approval" for step in steps):  # only then is the snapshot read
        compiled = await compiled_flow(store, run_id)
        gates = {k: v for k, v in compiled.steps.items() if isinstance(v, ApprovalStep)}
    return RunDetails(run, steps, gates)


def summary(run: RunRecord) -> dict[str, Any]:
    """A run as ``runs --json`` lists it."""
    return {
        "id": run.id,
        "flow": run.flow,
        "status": str(run.status),
        "band": run.band,
        "model": run.model,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
        "error": run.error,
    }
