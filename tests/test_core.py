"""Property tests of ``engine.core``: runs driven only through the pure scheduling decisions.

A small in-memory simulator below plays the store's part exactly as
``engine/store/sqlite.py`` does (every step pending at launch, ``waiting_on``
counters decremented when a need settles, an excluded step settled as excluded
when its needs have settled, a final failure failing the run and cancelling
every live step, lease takeovers counting crashes), while hypothesis picks
which ready step starts or is reached, and how each running one ends.
Expectations are computed from the flow document (its needs, bands, retries),
not from the plan under test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.core.decisions import (
    DEFAULT_MAX_CRASHES,
    GiveUp,
    InitialStep,
    Retry,
    after_failure,
    after_lost_lease,
    backoff,
    cancel_targets,
    crash_counts,
    initial_steps,
    newly_ready,
    on_reached,
    reset_for_retry,
    run_finished,
)
from engine.core.plan import (
    SETTLED,
    TERMINAL,
    RunPlan,
    RunStatus,
    StepStatus,
    default_band,
    make_plan,
)
from engine.model.documents import Flow, seconds
from engine.model.graph import StepGraph

PENDING, RUNNING, WAITING = StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING
COMPLETED, SKIPPED, EXCLUDED = StepStatus.COMPLETED, StepStatus.SKIPPED, StepStatus.EXCLUDED
FAILED, CANCELLED = StepStatus.FAILED, StepStatus.CANCELLED
LIVE = frozenset({PENDING, RUNNING, WAITING})
ACTIVE = frozenset({RUNNING, WAITING})
MAX_TICKS = 20_000

# The flow under test


@dataclass(frozen=True)
class Case:
    """A flow document, the plan of one launch of it, and what the document says."""

    spec: Mapping[str, Any]
    plan: RunPlan
    band: str | None
    max_crashes: int
    needs: Mapping[str, tuple[str, ...]]
    kinds: Mapping[str, str]
    excluded: frozenset[str]
    max_attempts: Mapping[str, int]


def make_case(
    spec: Mapping[str, Any], band: str | None, max_crashes: int = DEFAULT_MAX_CRASHES
) -> Case:
    """Validate ``spec`` as a real flow, order it and plan its launch in ``band``."""
    flow = Flow.model_validate(spec).with_defaults()
    order = StepGraph({step.id: list(step.needs) for step in flow.steps}).execution_order()
    plan = make_plan(flow, tuple(order), band)
    defaults = spec.get("defaults", {})
    steps = spec["steps"]
    return Case(
        spec=spec,
        plan=plan,
        band=band,
        max_crashes=max_crashes,
        needs={s["id"]: tuple(s.get("needs", ())) for s in steps},
        kinds={s["id"]: s["kind"] for s in steps},
        excluded=frozenset(
            s["id"] for s in steps if s.get("bands") is not None and band not in s["bands"]
        ),
        max_attempts={
            s["id"]: 1
            if s["kind"] == "approval"
            else 1 + s.get("retries", defaults.get("retries", 0))
            for s in steps
        },
    )


def flow_spec(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, "name": "example", **top, "steps": list(steps)}


def code(step_id: str, *needs: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "kind": "code", "call": "m:f", "needs": list(needs), **extra}


def agent(step_id: str, *needs: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "kind": "agent", "prompt": "x", "needs": list(needs), **extra}


# Strategies

BAND_SETS: tuple[list[str] | None, ...] = (None, ["quick"], ["quick", "deep"], ["a", "b", "c"])
KINDS = ("code", "code", "agent", "agent", "approval")
RETRIES = (0, 1, 2, 3)
DELAYS = ("0s", "1s", "2s", "5s", "1m")
TIMEOUTS = ("0s", "30s", "15m", "2h", "1d")
MAX_PARALLEL = (1, 2, 3, 4)
STEP_BYTES = 11
durations = st.builds(
    lambda count, unit: f"{count}{unit}", st.integers(0, 90), st.sampled_from("smhd")
)


def optional(byte: int, values: Sequence[Any]) -> Any:
    """None for a multiple of ``len(values) + 1``, else one of ``values``."""
    choice = byte % (len(values) + 1)
    return values[choice - 1] if choice else None


def decode_step(index: int, raw: bytes, bands: list[str] | None) -> dict[str, Any]:
    """Step ``s<index>`` from ``STEP_BYTES`` bytes (all zeros: a bare code step).

    Steps are decoded from bytes rather than drawn key by key: one draw per
    flow keeps generation fast, and shrinking bytes towards zero still
    shrinks the flow towards bare steps without needs.
    """
    kind = KINDS[raw[0] % len(KINDS)]
    step: dict[str, Any] = {"id": f"s{index}", "kind": kind}
    if kind == "code":
        step["call"] = "m:f"
    elif kind == "agent":
        step["prompt"] = "x"
    if index:
        needs = list(dict.fromkeys(f"s{byte % index}" for byte in raw[2 : 2 + raw[1] % 5]))
        if needs:  # each listed once: validation rejects a repeated need
            step["needs"] = needs
    if bands and raw[6] & 1:
        step["bands"] = [band for bit, band in enumerate(bands) if raw[6] >> (bit + 1) & 1]
    elif not bands and raw[6] % 8 == 1:
        step["bands"] = []  # in no band (FR017 warns), the only choice lint accepts here
    extra = {"timeout": optional(raw[9], TIMEOUTS)}
    if kind != "approval":
        extra |= {"retries": optional(raw[7], RETRIES), "retry_delay": optional(raw[8], DELAYS)}
    return step | {key: value for key, value in extra.items() if value is not None}


@st.composite
def flow_specs(draw: st.DrawFn, min_steps: int = 1) -> dict[str, Any]:
    """``min_steps`` to 30 steps, each needing only earlier ones (so acyclic), in random order."""
    bands = draw(st.sampled_from(BAND_SETS))
    count = draw(st.integers(min_steps, 30))
    raw = draw(st.binary(min_size=count * STEP_BYTES + 4, max_size=count * STEP_BYTES + 4))
    chunks = [raw[i * STEP_BYTES : (i + 1) * STEP_BYTES] for i in range(count)]
    steps = [decode_step(i, chunk, bands) for i, chunk in enumerate(chunks)]
    file_order = sorted(range(count), key=lambda i: (chunks[i][10], i))
    spec: dict[str, Any] = {"version": 1, "name": "prop", "steps": [steps[i] for i in file_order]}
    if bands:
        spec["bands"] = bands
    top = raw[count * STEP_BYTES :]
    defaults = {
        "retries": optional(top[0], RETRIES),
        "retry_delay": optional(top[1], DELAYS),
        "timeout": optional(top[2], TIMEOUTS),
    }
    defaults = {key: value for key, value in defaults.items() if value is not None}
    if defaults:
        spec["defaults"] = defaults
    if (max_parallel := optional(top[3], MAX_PARALLEL)) is not None:
        spec["max_parallel"] = max_parallel
    return spec


@st.composite
def cases(draw: st.DrawFn) -> Case:
    spec = draw(flow_specs())
    bands = spec.get("bands")
    band = draw(st.sampled_from(bands)) if bands else None
    return make_case(spec, band, draw(st.integers(1, 4)))


@st.composite
def repeated_needs(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid generated flow, then one of its steps made to list one earlier step twice."""
    spec = draw(flow_specs(min_steps=2))
    steps = [dict(step) for step in spec["steps"]]
    position = draw(st.sampled_from([i for i, step in enumerate(steps) if step["id"] != "s0"]))
    step = steps[position]
    need = f"s{draw(st.integers(0, int(step['id'][1:]) - 1))}"
    needs = [n for n in step.get("needs", []) if n != need]
    for _ in range(2):
        needs.insert(draw(st.integers(0, len(needs))), need)
    steps[position] = step | {"needs": needs}
    return spec | {"steps": steps}, need


scripts = st.binary(min_size=64, max_size=600)


# The simulator


class Outcome(StrEnum):
    COMPLETE = "complete"
    SKIP = "skip"
    FAIL = "fail"
    CRASH = "crash"
    CANCEL = "cancel"


RANDOM_OUTCOMES: tuple[Outcome, ...] = (
    (Outcome.COMPLETE,) * 36
    + (Outcome.SKIP,) * 8
    + (Outcome.FAIL,) * 12
    + (Outcome.CRASH,) * 7
    + (Outcome.CANCEL,)
)
COMPLETE_ONLY: tuple[Outcome, ...] = (Outcome.COMPLETE,)


@dataclass
class Choices:
    """Hypothesis's choices, one per decision; the first option once they run out."""

    values: Sequence[int]
    used: int = 0

    def pick(self, options: int) -> int:
        if self.used >= len(self.values):
            return 0
        self.used += 1
        return self.values[self.used - 1] % options


class Simulator:
    """One run of a plan, advanced only through ``engine.core`` decisions."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.plan = case.plan
        self.order = tuple(case.plan.steps)
        self.now = 0.0
        self.run_status = RunStatus.RUNNING
        self.statuses: dict[str, StepStatus] = {}
        self.waiting: dict[str, int] = {}
        self.ready_at = dict.fromkeys(self.order, 0.0)
        self.failures = dict.fromkeys(self.order, 0)
        self.crashes = dict.fromkeys(self.order, 0)
        self.alone = dict.fromkeys(self.order, False)  # the attempt runs alone on its worker
        self.losses = dict.fromkeys(self.order, 0)  # lost leases, counted as crashes or not
        self.starts = dict.fromkeys(self.order, 0)  # in the current round
        self.settlements = dict.fromkeys(self.order, 0)  # over every round
        self.settled_order: list[str] = []  # over every round
        self.gave_up: set[str] = set()
        self.rejected: set[str] = set()
        self.cancel_requested = False
        self.choices = Choices(())
        for step in initial_steps(self.plan):
            self.statuses[step.id] = step.status
            self.waiting[step.id] = step.waiting_on
        self.unsettled = len(self.statuses)  # every step, excluded ones included
        self.check_finished()

    # What can happen next

    def unblocked(self) -> list[str]:
        """Pending steps whose needs have all settled (by the counters)."""
        return [s for s in self.order if self.statuses[s] is PENDING and self.waiting[s] == 0]

    def reached(self) -> list[str]:
        """Unblocked steps that settle without running (excluded), as ``on_reached`` says."""
        return [s for s in self.unblocked() if on_reached(self.plan[s]) is not None]

    def ready(self) -> list[str]:
        cap = self.plan.max_parallel
        agents = sum(self.statuses[s] is RUNNING and self.plan[s].agent for s in self.order)
        full = cap is not None and agents >= cap
        return [
            s
            for s in self.unblocked()
            if on_reached(self.plan[s]) is None
            and self.ready_at[s] <= self.now
            and not (full and self.plan[s].agent)
        ]

    def active(self) -> list[str]:
        return [s for s in self.order if self.statuses[s] in ACTIVE]

    def delayed(self) -> list[str]:
        return [
            s
            for s in self.unblocked()
            if on_reached(self.plan[s]) is None and self.ready_at[s] > self.now
        ]

    def actions(self) -> list[str]:
        found = [
            ("start", self.ready()),
            ("exclude", self.reached()),
            ("finish", self.active()),
            ("wait", self.delayed()),
        ]
        return [name for name, steps in found if steps]

    def run(self, choices: Choices, outcomes: Sequence[Outcome]) -> None:
        """Tick until nothing is ready, running or waiting for its retry time."""
        self.choices = choices
        for _ in range(MAX_TICKS):
            actions = self.actions()
            if not actions:
                return
            action = actions[choices.pick(len(actions))]
            if action == "start":
                ready = self.ready()
                self.start(ready[choices.pick(len(ready))])
            elif action == "exclude":
                reached = self.reached()
                self.exclude(reached[choices.pick(len(reached))])
            elif action == "finish":
                active = self.active()
                step_id = active[choices.pick(len(active))]
                self.finish(step_id, outcomes[choices.pick(len(outcomes))])
            else:
                self.now = min(self.ready_at[s] for s in self.delayed())
        raise AssertionError("the run never ends")

    # Transitions, as the store applies them

    def start(self, step_id: str) -> None:
        assert self.run_status is RunStatus.RUNNING, f"{step_id} started after the run ended"
        assert self.statuses[step_id] is PENDING and self.waiting[step_id] == 0
        unsettled = [n for n in self.case.needs[step_id] if self.statuses[n] not in SETTLED]
        assert not unsettled, f"{step_id} started before {unsettled} settled"
        assert self.now >= self.ready_at[step_id], f"{step_id} started before its retry time"
        assert step_id not in self.case.excluded, f"{step_id} started outside its bands"
        assert on_reached(self.plan[step_id]) is None
        self.starts[step_id] += 1
        self.alone[step_id] = False
        self.statuses[step_id] = WAITING if self.case.kinds[step_id] == "approval" else RUNNING

    def finish(self, step_id: str, outcome: Outcome) -> None:
        self.now += self.choices.pick(3)
        if outcome is Outcome.CANCEL:
            self.cancel_requested = True
            self.end(RunStatus.CANCELLED)
        elif self.statuses[step_id] is WAITING:  # a gate: approved, or rejected
            if outcome is Outcome.FAIL:
                self.rejected.add(step_id)
                self.give_up(step_id)
            else:
                self.settle(step_id, COMPLETED)
        elif outcome is Outcome.COMPLETE:
            self.settle(step_id, COMPLETED)
        elif outcome is Outcome.SKIP:
            self.settle(step_id, SKIPPED)
        elif outcome is Outcome.FAIL:
            self.fail_attempt(step_id)
        else:
            self.lose_lease(step_id)

    def fail_attempt(self, step_id: str) -> None:
        self.failures[step_id] += 1
        decision = after_failure(self.plan[step_id], self.failures[step_id], self.now, "boom")
        if isinstance(decision, Retry):
            assert decision.at >= self.now
            self.statuses[step_id] = PENDING
            self.ready_at[step_id] = decision.at
        else:
            self.give_up(step_id)

    def lose_lease(self, step_id: str) -> None:
        """The worker died: a worker running nothing else takes the step over at once (a
        crash counted if the lost attempt ran alone too), or fails it."""
        alone, max_crashes = self.alone[step_id], self.case.max_crashes
        crashes, decision = after_lost_lease(self.crashes[step_id], alone, max_crashes)
        assert crashes == self.crashes[step_id] + alone
        self.losses[step_id] += 1
        self.crashes[step_id] = crashes
        if isinstance(decision, Retry):
            assert decision.at <= self.now
            self.statuses[step_id] = PENDING
            self.start(step_id)
            self.alone[step_id] = True
        else:
            self.give_up(step_id)

    def exclude(self, step_id: str) -> None:
        """The run reached a step outside its band: settled as excluded, never run."""
        assert self.run_status is RunStatus.RUNNING, f"{step_id} reached after the run ended"
        assert self.statuses[step_id] is PENDING and self.waiting[step_id] == 0
        unsettled = [n for n in self.case.needs[step_id] if self.statuses[n] not in SETTLED]
        assert not unsettled, f"{step_id} excluded before {unsettled} settled"
        assert step_id in self.case.excluded, f"{step_id} excluded though in band {self.case.band}"
        assert on_reached(self.plan[step_id]) is EXCLUDED
        self.settle(step_id, EXCLUDED)

    def settle(self, step_id: str, status: StepStatus) -> None:
        assert self.statuses[step_id] in ({PENDING} if status is EXCLUDED else ACTIVE)
        dependents = self.plan[step_id].dependents
        became = newly_ready(self.plan, step_id, {d: self.waiting[d] for d in dependents})
        self.statuses[step_id] = status
        self.settlements[step_id] += 1
        self.settled_order.append(step_id)
        self.unsettled -= 1
        for dependent in dependents:
            self.waiting[dependent] -= 1
        counted = [d for d in dependents if self.statuses[d] is PENDING and self.waiting[d] == 0]
        assert became == counted, f"newly_ready {became} but the counters make {counted} ready"
        for dependent in dependents:
            if self.statuses[dependent] is PENDING:
                assert self.waiting[dependent] == self.unsettled_needs(dependent)
        self.check_finished()

    def give_up(self, step_id: str) -> None:
        self.statuses[step_id] = FAILED
        self.gave_up.add(step_id)
        self.end(RunStatus.FAILED)

    def end(self, status: RunStatus) -> None:
        assert self.run_status is RunStatus.RUNNING
        targets = cancel_targets((s, self.statuses[s]) for s in self.order)
        assert targets == [s for s in self.order if self.statuses[s] in LIVE]
        for step_id in targets:
            self.statuses[step_id] = CANCELLED
        self.run_status = status

    def check_finished(self) -> None:
        if self.run_status is RunStatus.RUNNING and run_finished(self.unsettled):
            self.run_status = RunStatus.COMPLETED

    def unsettled_needs(self, step_id: str) -> int:
        return sum(self.statuses[n] not in SETTLED for n in self.case.needs[step_id])

    def retry(self) -> dict[str, int]:
        """Retry the failed or cancelled run in place, as the store's ``retry_run`` does."""
        assert self.run_status in (RunStatus.FAILED, RunStatus.CANCELLED)
        resets = reset_for_retry(self.plan, self.statuses)
        for step_id, waiting_on in resets.items():
            self.statuses[step_id] = PENDING
            self.waiting[step_id] = waiting_on
            self.failures[step_id] = self.crashes[step_id] = self.losses[step_id] = 0
            self.ready_at[step_id] = 0.0
        self.unsettled = len(resets)
        self.run_status = RunStatus.RUNNING
        self.starts = dict.fromkeys(self.order, 0)
        self.gave_up, self.rejected, self.cancel_requested = set(), set(), False
        return resets


# Checks shared by the properties


def check_launch(sim: Simulator) -> None:
    """Every step, excluded or not, starts pending and waiting on all its needs."""
    case = sim.case
    assert set(sim.statuses) == set(case.needs)
    assert sim.statuses == dict.fromkeys(case.needs, PENDING)
    assert sim.waiting == {s: len(needs) for s, needs in case.needs.items()}
    assert sim.unsettled == len(case.needs)
    assert sim.run_status is RunStatus.RUNNING
    assert sim.settled_order == []
    for step_id in case.needs:
        assert on_reached(case.plan[step_id]) == (EXCLUDED if step_id in case.excluded else None)


def check_ended(sim: Simulator) -> None:
    """The invariants of a round that has nothing left to do."""
    case, statuses = sim.case, sim.statuses
    assert sim.run_status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
    assert all(status in TERMINAL for status in statuses.values()), statuses
    assert sim.actions() == [], "a step can still start after the run ended"
    assert all(count <= 1 for count in sim.settlements.values()), sim.settlements
    assert sim.unsettled == sum(status not in SETTLED for status in statuses.values())
    position = {step_id: index for index, step_id in enumerate(sim.settled_order)}
    for step_id, index in position.items():  # each settled (excluded too) after its needs
        assert all(position.get(n, index) < index for n in case.needs[step_id]), step_id
    all_settled = all(status in SETTLED for status in statuses.values())
    assert (sim.run_status is RunStatus.COMPLETED) == all_settled
    assert (sim.run_status is RunStatus.FAILED) == bool(sim.gave_up)
    assert (sim.run_status is RunStatus.CANCELLED) == sim.cancel_requested
    assert {s for s, status in statuses.items() if status is FAILED} == sim.gave_up
    assert len(sim.gave_up) <= 1
    for step_id in case.needs:
        if step_id in case.excluded:  # never attempted; excluded, or cancelled before reached
            assert statuses[step_id] in (EXCLUDED, CANCELLED), (step_id, statuses[step_id])
            assert sim.starts[step_id] == sim.failures[step_id] == sim.crashes[step_id] == 0
        else:
            assert statuses[step_id] is not EXCLUDED, step_id
        assert sim.failures[step_id] <= case.max_attempts[step_id]
        assert sim.crashes[step_id] <= case.max_crashes
        assert sim.starts[step_id] <= 1 + sim.failures[step_id] + sim.losses[step_id]
        # A loss in company counts no crash, but the step then runs alone: at most one such
        # loss per attempt that ended otherwise (or per round).
        assert sim.losses[step_id] <= sim.crashes[step_id] + sim.failures[step_id] + 1
        assert sim.starts[step_id] <= 2 * case.max_attempts[step_id] + case.max_crashes - 1
        if step_id in sim.gave_up and step_id not in sim.rejected:
            assert (
                sim.failures[step_id] == case.max_attempts[step_id]
                or sim.crashes[step_id] == case.max_crashes
            )


def check_reset(case: Case, before: Mapping[str, StepStatus], resets: Mapping[str, int]) -> None:
    expected = [s for s in case.plan.steps if before[s] not in SETTLED]
    assert expected, "a failed or cancelled run has something to run again"
    assert list(resets) == expected
    for step_id, waiting_on in resets.items():
        assert waiting_on == sum(before[n] not in SETTLED for n in case.needs[step_id])
    for step_id in resets:  # descendants of a step run again run again too, excluded or not
        assert all(d in resets for d in case.plan[step_id].dependents)


def check_plan(case: Case) -> None:
    """Every fact of the plan, against the flow document and its defaults."""
    plan, spec = case.plan, case.spec
    order = list(plan.steps)
    assert sorted(order) == sorted(case.needs)
    defaults = spec.get("defaults", {})
    for position, step_id in enumerate(order):
        raw = next(s for s in spec["steps"] if s["id"] == step_id)
        step = plan[step_id]
        assert all(order.index(n) < position for n in case.needs[step_id])
        assert (step.id, step.position, step.kind) == (step_id, position, raw["kind"])
        assert step.needs == case.needs[step_id]
        assert len(set(step.needs)) == len(step.needs)
        assert step.dependents == tuple(d for d in order if step_id in case.needs[d])
        assert step.excluded == (step_id in case.excluded)
        assert step.max_attempts == case.max_attempts[step_id]
        assert step.agent == (raw["kind"] == "agent")
        retrying = raw["kind"] != "approval"
        delay = raw.get("retry_delay", defaults.get("retry_delay")) if retrying else None
        assert step.retry_delay == (seconds(delay) if delay else 0.0)
        timeout = raw.get("timeout", defaults.get("timeout"))
        assert step.timeout == (seconds(timeout) if timeout else None)
    assert plan.band == case.band
    assert plan.max_parallel == spec.get("max_parallel")


# Properties


@settings(max_examples=200, deadline=None)
@given(case=cases(), rounds=st.lists(scripts, min_size=1, max_size=3), last=scripts)
def test_random_runs_then_retries(case: Case, rounds: list[bytes], last: bytes) -> None:
    """Random outcomes keep every invariant; retrying until all complete finishes the run."""
    sim = Simulator(case)
    check_launch(sim)
    for number, script in enumerate(rounds):
        settled_before = {s for s, status in sim.statuses.items() if status in SETTLED}
        if number:
            before = dict(sim.statuses)
            check_reset(case, before, sim.retry())
        sim.run(Choices(script), RANDOM_OUTCOMES)
        check_ended(sim)
        assert all(sim.starts[s] == 0 for s in settled_before), "a settled step ran again"
        if sim.run_status is RunStatus.COMPLETED:
            return
    before = dict(sim.statuses)
    resets = sim.retry()
    check_reset(case, before, resets)
    sim.run(Choices(last), COMPLETE_ONLY)
    check_ended(sim)
    assert sim.run_status is RunStatus.COMPLETED
    assert sim.starts == {s: int(s in resets and s not in case.excluded) for s in sim.order}
    for step_id in resets:
        assert sim.statuses[step_id] is (EXCLUDED if step_id in case.excluded else COMPLETED)


@settings(max_examples=200, deadline=None)
@given(case=cases(), script=scripts)
def test_runs_where_every_step_completes(case: Case, script: bytes) -> None:
    """The plan reflects the flow; excluded steps never run; every other one runs once.

    Excluded steps are exactly those whose bands lack the launch band; each is
    settled once, after its needs, and the steps after it still run.
    """
    check_plan(case)
    sim = Simulator(case)
    check_launch(sim)
    sim.run(Choices(script), COMPLETE_ONLY)
    check_ended(sim)
    assert sim.run_status is RunStatus.COMPLETED
    assert sorted(sim.settled_order) == sorted(case.needs)
    for step_id in case.needs:
        excluded = step_id in case.excluded
        assert sim.statuses[step_id] is (EXCLUDED if excluded else COMPLETED)
        assert sim.starts[step_id] == (0 if excluded else 1)


@settings(max_examples=200, deadline=None)
@given(case_and_need=repeated_needs())
def test_a_repeated_need_is_rejected(case_and_need: tuple[dict[str, Any], str]) -> None:
    """Validation refuses a step that lists the same need twice, wherever it is listed."""
    spec, need = case_and_need
    with pytest.raises(ValidationError, match=f"needs: '{need}' listed more than once"):
        Flow.model_validate(spec)
    once = [step | {"needs": list(dict.fromkeys(step.get("needs", [])))} for step in spec["steps"]]
    Flow.model_validate(spec | {"steps": once})  # the repetition was the only problem


@settings(max_examples=200, deadline=None)
@given(
    delay=durations,
    retries=st.integers(0, 100),
    failed=st.integers(1, 100),
    now=st.floats(0, 1e9),
)
def test_backoff_doubles_and_retries_run_out(
    delay: str, retries: int, failed: int, now: float
) -> None:
    case = make_case(flow_spec(code("a", retries=retries, retry_delay=delay)), None)
    step = case.plan["a"]
    assert backoff(step, 1) == seconds(delay)
    assert backoff(step, failed + 1) == 2 * backoff(step, failed)
    assert isinstance(after_failure(step, step.max_attempts, now, "boom"), GiveUp)
    decision = after_failure(step, failed, now, "boom")
    if failed < step.max_attempts:
        assert decision == Retry(now + backoff(step, failed))
    else:
        assert isinstance(decision, GiveUp)


@settings(max_examples=200, deadline=None)
@given(crashes=st.integers(1, 20), max_crashes=st.integers(1, 10))
def test_lost_leases_are_bounded(crashes: int, max_crashes: int) -> None:
    """Only a loss while the step ran alone counts, and counting stops at the limit."""
    counted, decision = after_lost_lease(crashes - 1, True, max_crashes)
    assert counted == crashes
    assert isinstance(decision, GiveUp) == (crashes >= max_crashes)
    _, default = after_lost_lease(crashes - 1, True)
    assert isinstance(default, GiveUp) == (crashes >= DEFAULT_MAX_CRASHES)
    assert after_lost_lease(crashes - 1, False, max_crashes) == (crashes - 1, Retry(0.0))


# Examples with exact expectations


def test_diamond() -> None:
    case = make_case(
        flow_spec(code("a"), agent("b", "a"), code("c", "a"), agent("d", "b", "c")), None
    )
    plan = case.plan
    assert list(plan.steps) == ["a", "b", "c", "d"]
    assert plan["a"].dependents == ("b", "c")
    assert plan["d"].dependents == ()
    assert initial_steps(plan) == [
        InitialStep("a", PENDING, 0),
        InitialStep("b", PENDING, 1),
        InitialStep("c", PENDING, 1),
        InitialStep("d", PENDING, 2),
    ]
    assert newly_ready(plan, "a", {"b": 1, "c": 1}) == ["b", "c"]
    assert newly_ready(plan, "b", {"d": 2}) == []
    assert newly_ready(plan, "c", {"d": 1}) == ["d"]

    sim = Simulator(case)
    sim.run(Choices(()), COMPLETE_ONLY)
    assert sim.run_status is RunStatus.COMPLETED
    assert sim.statuses == dict.fromkeys("abcd", COMPLETED)

    statuses = {"a": COMPLETED, "b": SKIPPED, "c": FAILED, "d": CANCELLED}
    assert reset_for_retry(plan, statuses) == {"c": 0, "d": 1}
    live = [("a", COMPLETED), ("b", RUNNING), ("c", WAITING), ("d", PENDING)]
    assert cancel_targets(live) == ["b", "c", "d"]


def test_diamond_failure_cancels_the_rest() -> None:
    case = make_case(
        flow_spec(code("a"), code("b", "a"), code("c", "a"), code("d", "b", "c")), None
    )
    sim = Simulator(case)
    sim.start("a")
    sim.finish("a", Outcome.COMPLETE)
    sim.start("b")
    sim.start("c")
    sim.finish("c", Outcome.FAIL)  # no retries: gives up at once
    assert sim.run_status is RunStatus.FAILED
    assert sim.statuses == {"a": COMPLETED, "b": CANCELLED, "c": FAILED, "d": CANCELLED}
    assert sim.retry() == {"b": 0, "c": 0, "d": 2}


def chain_with_excluded_middle(band: str | None) -> Case:
    spec = flow_spec(
        code("a"), agent("b", "a", bands=["deep"]), code("c", "b"), bands=["quick", "deep"]
    )
    return make_case(spec, band)


def test_chain_with_excluded_middle() -> None:
    flow = Flow.model_validate(chain_with_excluded_middle(None).spec)
    assert default_band(flow) == "quick"
    plan = chain_with_excluded_middle("quick").plan
    assert [plan[s].excluded for s in "abc"] == [False, True, False]
    assert [on_reached(plan[s]) for s in "abc"] == [None, EXCLUDED, None]
    assert initial_steps(plan) == [
        InitialStep("a", PENDING, 0),
        InitialStep("b", PENDING, 1),  # excluded only once reached, after a
        InitialStep("c", PENDING, 1),  # after b is excluded
    ]
    assert newly_ready(plan, "a", {"b": 1}) == ["b"]
    assert newly_ready(plan, "b", {"c": 1}) == ["c"]
    sim = Simulator(chain_with_excluded_middle("quick"))
    assert sim.unsettled == 3
    assert (sim.ready(), sim.reached(), sim.actions()) == (["a"], [], ["start"])
    sim.start("a")
    sim.finish("a", Outcome.COMPLETE)
    assert (sim.ready(), sim.reached(), sim.actions()) == ([], ["b"], ["exclude"])
    assert (sim.waiting["c"], sim.unsettled) == (1, 2)
    sim.exclude("b")
    assert (sim.ready(), sim.reached(), sim.unsettled) == (["c"], [], 1)
    sim.run(Choices(()), COMPLETE_ONLY)
    assert sim.run_status is RunStatus.COMPLETED
    assert sim.statuses == {"a": COMPLETED, "b": EXCLUDED, "c": COMPLETED}
    assert sim.starts == {"a": 1, "b": 0, "c": 1}
    assert sim.settled_order == ["a", "b", "c"]

    deep = chain_with_excluded_middle("deep").plan
    assert [on_reached(deep[s]) for s in "abc"] == [None, None, None]
    assert initial_steps(deep) == initial_steps(plan)


def test_an_excluded_step_behind_a_failure_is_cancelled_then_reached_on_retry() -> None:
    sim = Simulator(chain_with_excluded_middle("quick"))
    sim.start("a")
    sim.finish("a", Outcome.FAIL)
    assert sim.run_status is RunStatus.FAILED
    assert sim.statuses == {"a": FAILED, "b": CANCELLED, "c": CANCELLED}
    assert sim.retry() == {"a": 0, "b": 1, "c": 1}
    sim.run(Choices(()), COMPLETE_ONLY)
    assert sim.run_status is RunStatus.COMPLETED
    assert sim.statuses == {"a": COMPLETED, "b": EXCLUDED, "c": COMPLETED}
    assert sim.starts == {"a": 1, "b": 0, "c": 1}


def test_a_run_with_every_step_excluded_completes_once_each_is_reached() -> None:
    spec = flow_spec(
        code("a", bands=["deep"]), agent("b", "a", bands=["deep"]), bands=["quick", "deep"]
    )
    sim = Simulator(make_case(spec, "quick"))
    assert (sim.run_status, sim.unsettled) == (RunStatus.RUNNING, 2)  # not complete at launch
    assert (sim.ready(), sim.reached(), sim.actions()) == ([], ["a"], ["exclude"])
    sim.exclude("a")
    assert (sim.run_status, sim.unsettled, sim.reached()) == (RunStatus.RUNNING, 1, ["b"])
    sim.exclude("b")
    assert (sim.run_status, sim.unsettled) == (RunStatus.COMPLETED, 0)
    assert sim.statuses == {"a": EXCLUDED, "b": EXCLUDED}
    assert sim.starts == {"a": 0, "b": 0}
    assert sim.actions() == []


def test_retry_delays() -> None:
    case = make_case(flow_spec(code("a", retries=3, retry_delay="10s")), None)
    step = case.plan["a"]
    assert [backoff(step, n) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]
    assert after_failure(step, 1, 100.0, "boom") == Retry(110.0)
    assert after_failure(step, 3, 100.0, "boom") == Retry(140.0)
    assert after_failure(step, 4, 100.0, "boom") == GiveUp("boom (after 4 attempts)")
    once = make_case(flow_spec(code("a")), None).plan["a"]
    assert after_failure(once, 1, 100.0, "boom") == GiveUp("boom")
    assert [after_lost_lease(n, True) for n in (0, 1)] == [(1, Retry(0.0)), (2, Retry(0.0))]
    assert isinstance(after_lost_lease(2, True)[1], GiveUp)
    assert after_lost_lease(2, False) == (2, Retry(0.0))


def test_defaults_apply_to_retrying_steps_only() -> None:
    spec = flow_spec(
        code("a"),
        {"id": "gate", "kind": "approval", "needs": ["a"]},
        defaults={"retries": 2, "retry_delay": "1m", "timeout": "5m"},
    )
    plan = make_case(spec, None).plan
    assert (plan["a"].max_attempts, plan["a"].retry_delay, plan["a"].timeout) == (3, 60.0, 300.0)
    assert (plan["gate"].max_attempts, plan["gate"].retry_delay) == (1, 0.0)
    assert plan["gate"].timeout == 300.0


def test_step_in_no_band_is_excluded_without_flow_bands() -> None:
    """`bands: []` in a flow without bands: excluded, as FR017 says ("excluded from every band")."""
    case = make_case(flow_spec(code("a"), code("b", bands=[])), None)
    assert case.excluded == {"b"}
    assert case.plan["b"].excluded


# Repeated needs


def test_repeated_need_is_rejected() -> None:
    with pytest.raises(ValidationError, match="needs: 'a' listed more than once"):
        Flow.model_validate(flow_spec(code("a"), code("b", "a", "a")))
    with pytest.raises(ValidationError, match="needs: 'a', 'b' listed more than once"):
        Flow.model_validate(flow_spec(code("a"), code("b"), code("c", "b", "a", "b", "a")))
    plan = make_case(flow_spec(code("a"), code("b", "a")), None).plan
    assert plan["a"].dependents == ("b",)
    assert initial_steps(plan)[1] == InitialStep("b", PENDING, 1)
    assert newly_ready(plan, "a", {"b": 1}) == ["b"]


def test_only_a_code_step_lost_alone_counts_a_crash() -> None:
    """An agent step's work is I/O and a gate only waits: their worker was lost to
    something else, so only in-process code, run alone, is suspected."""
    assert crash_counts("code", ran_alone=True)
    assert not crash_counts("code", ran_alone=False)
    assert not crash_counts("agent", ran_alone=True)
    assert not crash_counts("approval", ran_alone=True)
