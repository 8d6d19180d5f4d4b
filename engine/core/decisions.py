"""The scheduler's decisions, as pure functions of a run's state and the time passed in.

The runner asks these what to do, then applies the answer in one store
transaction. Each decision touches one step and its dependents, so a run of n
steps costs O(n + edges) decisions in all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from engine.core.plan import SETTLED, RunPlan, StepPlan, StepStatus

DEFAULT_MAX_CRASHES = 3
"""Lease expiries (a worker died holding the step) after which a step is failed."""


@dataclass(frozen=True, slots=True)
class InitialStep:
    id: str
    status: StepStatus
    waiting_on: int


def initial_steps(plan: RunPlan) -> list[InitialStep]:
    """Every step at launch: pending, waiting on all its needs.

    A step excluded by the run's band is settled as ``excluded`` when the run
    reaches it (once its own needs have settled), exactly where a skipped step
    would settle, so the steps after it still come after the steps before it.
    """
    return [InitialStep(s.id, StepStatus.PENDING, len(s.needs)) for s in plan.steps.values()]


def on_reached(step: StepPlan) -> StepStatus | None:
    """What a step whose needs have settled becomes without running: excluded, or nothing."""
    return StepStatus.EXCLUDED if step.excluded else None


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the step again once ``at`` has passed."""

    at: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Fail the step (and with it the run)."""

    reason: str


def backoff(step: StepPlan, failed_attempts: int) -> float:
    """Seconds before the next attempt: ``retry_delay`` doubled for each earlier failure."""
    return float(step.retry_delay * 2 ** max(failed_attempts - 1, 0))


MAX_ASKED_WAIT = 3600.0
"""Longest wait a model endpoint's ``Retry-After`` can impose on a step's retry."""


def after_failure(
    step: StepPlan, failed_attempts: int, now: float, error: str, asked: float = 0.0
) -> Retry | GiveUp:
    """An attempt failed (error, timeout, bad output): retry while attempts remain, after
    the step's backoff or the wait the failure ``asked`` for (a model's ``Retry-After``,
    at most an hour), whichever is longer."""
    if failed_attempts < step.max_attempts:
        return Retry(now + max(backoff(step, failed_attempts), min(asked, MAX_ASKED_WAIT)))
    attempts = "attempt" if step.max_attempts == 1 else f"{step.max_attempts} attempts"
    return GiveUp(f"{error} (after {attempts})" if step.max_attempts > 1 else error)


def crash_counts(kind: str, ran_alone: bool) -> bool:
    """Whether a lost lease counts as the step's own crash: only a code step's, lost while it
    ran alone. A code step runs the flow's Python in the worker, which can take the worker
    down; an agent step's work is I/O (an HTTP call, a subprocess) and a gate only waits, so
    their worker was lost to something else, however often, and they run again uncounted
    (each attempt still bounded by the step's timeout)."""
    return kind == "code" and ran_alone


def after_lost_lease(
    crashes: int, alone: bool, max_crashes: int = DEFAULT_MAX_CRASHES
) -> tuple[int, Retry | GiveUp]:
    """A worker stopped heartbeating while running the step: its crash count, and whether
    to run it again.

    A crash is counted against the step only when the lost attempt ran ``alone`` on its
    worker: with company, any of the worker's steps (or none: a kill, a lost machine)
    may have taken it down, so nothing is counted and the step is run again alone (the
    store hands a lost step only to a worker running nothing else). A step that takes
    its worker down every time is so failed after ``max_crashes`` crashes of its own,
    and no step fails because it shared a worker with one. A lost lease does not use up
    a retry.
    """
    if not alone:
        return crashes, Retry(0.0)
    crashes += 1
    if crashes >= max_crashes:
        reason = f"the worker running this step alone was lost {crashes} times; giving up"
        return crashes, GiveUp(reason)
    return crashes, Retry(0.0)


def newly_ready(plan: RunPlan, settled: str, waiting_on: Mapping[str, int]) -> list[str]:
    """Dependents of ``settled`` that become ready: their last unsettled need was it.

    ``waiting_on`` holds the dependents' counts before this settlement.
    """
    return [d for d in plan[settled].dependents if waiting_on[d] == 1]


def reset_for_retry(plan: RunPlan, statuses: Mapping[str, StepStatus]) -> dict[str, int]:
    """Steps to run again when a failed or cancelled run is retried, with their waiting counts.

    Completed, skipped and excluded steps keep their results; every other step
    (failed, cancelled, never started) is reset to pending, waiting on its
    needs that are not settled.
    """
    reset = [step_id for step_id in plan.steps if statuses[step_id] not in SETTLED]
    again = set(reset)
    return {step_id: sum(need in again for need in plan[step_id].needs) for step_id in reset}


def run_finished(unsettled: int) -> bool:
    """A run whose steps have all settled is complete (then its report is rendered)."""
    return unsettled == 0


def cancel_targets(statuses: Iterable[tuple[str, StepStatus]]) -> list[str]:
    """Steps a failing or cancelled run cancels: every one not yet terminal."""
    live = {StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING}
    return [step_id for step_id, status in statuses if status in live]
