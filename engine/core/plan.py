"""A run's plan: the static facts about each step that every decision needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from engine.model.documents import AgentStep, Flow, RetryingStep, seconds


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    SKIPPED = "skipped"
    EXCLUDED = "excluded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


SETTLED = frozenset({StepStatus.COMPLETED, StepStatus.SKIPPED, StepStatus.EXCLUDED})
"""Statuses that satisfy a dependent step."""

TERMINAL = SETTLED | {StepStatus.FAILED, StepStatus.CANCELLED}


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What the scheduler knows of one step before the run starts."""

    id: str
    kind: str
    position: int
    needs: tuple[str, ...]
    dependents: tuple[str, ...]
    excluded: bool
    max_attempts: int
    retry_delay: float
    timeout: float | None
    agent: bool


@dataclass(frozen=True, slots=True)
class RunPlan:
    """Every step of a run in execution order (each after what it needs)."""

    band: str | None
    steps: Mapping[str, StepPlan]
    max_parallel: int | None
    sinks: int  # steps nothing needs: when they have all settled, so has every step

    def __getitem__(self, step_id: str) -> StepPlan:
        return self.steps[step_id]


def make_plan(flow: Flow, order: tuple[str, ...], band: str | None) -> RunPlan:
    """The plan of ``flow`` (defaults applied) launched in ``band``; ``order`` is its DAG order."""
    by_id = {step.id: step for step in flow.steps}
    dependents: dict[str, list[str]] = {step_id: [] for step_id in order}
    for step_id in order:
        for need in by_id[step_id].needs:
            dependents[need].append(step_id)
    steps = {}
    for position, step_id in enumerate(order):
        step = by_id[step_id]
        retries, retry_delay = 0, 0.0
        if isinstance(step, RetryingStep):
            retries = step.retries or 0
            retry_delay = float(seconds(step.retry_delay)) if step.retry_delay else 0.0
        steps[step_id] = StepPlan(
            id=step_id,
            kind=step.kind,
            position=position,
            needs=tuple(step.needs),
            dependents=tuple(dependents[step_id]),
            excluded=step.bands is not None and band not in step.bands,
            max_attempts=1 + retries,
            retry_delay=retry_delay,
            timeout=float(seconds(step.timeout)) if step.timeout else None,
            agent=isinstance(step, AgentStep),
        )
    sinks = sum(not step.dependents for step in steps.values())
    return RunPlan(band, steps, flow.max_parallel, sinks)


def default_band(flow: Flow) -> str | None:
    """The band a launch gets when it names none: the first declared, if any."""
    return flow.bands[0] if flow.bands else None
