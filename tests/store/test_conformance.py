"""The store contract, run against every implementation with a real database."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from engine.core.plan import RunStatus, StepStatus
from engine.store.base import (
    AgentCall,
    Capacity,
    Claim,
    Conflict,
    Decision,
    Eager,
    Finish,
    NewRun,
    NewStep,
    NotFound,
    StepResult,
    Store,
)

ALL = Capacity(agents=10, others=10)
DEPENDENTS = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}
NEEDS = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}
KINDS = {"a": "code", "b": "agent", "c": "code", "d": "approval"}


def diamond(run_id: str = "r1", **extra: object) -> NewRun:
    """a -> (b, c) -> d, with b an agent step."""
    excluded = set(extra.pop("excluded", ()))  # type: ignore[call-overload]
    steps = [
        NewStep(
            step,
            kind,
            kind == "agent",
            index,
            len(NEEDS[step]),
            tuple(DEPENDENTS[step]),
            step in excluded,
        )
        for index, (step, kind) in enumerate(KINDS.items())
    ]
    return NewRun(
        id=run_id,
        flow="diamond",
        band=None,
        model="m",
        inputs={"q": 1},
        snapshot="{}",
        snapshot_hash="h",
        steps=steps,
        **extra,  # type: ignore[arg-type]
    )


async def claim_ids(
    store: Store, now: float = 1.0, worker: str = "w1", *, alone: bool = False
) -> list[str]:
    return [c.step_id for c in await store.claim(worker, now, 30, ALL, 3, alone=alone)]


async def claim_one(
    store: Store, step: str, now: float = 1.0, worker: str = "w1", *, alone: bool = False
) -> Claim:
    claims = await store.claim(worker, now, 30, ALL, 3, alone=alone)
    return next(c for c in claims if c.step_id == step)


async def event_names(store: Store, run_id: str = "r1") -> list[str]:
    return [e.event for e in await store.events(run_id)]


async def test_a_run_is_stored_with_its_steps_in_order(store: Store) -> None:
    run_id, created = await store.create_run(diamond(), now=1.0)
    assert (run_id, created) == ("r1", True)
    run = await store.get_run("r1")
    assert (run.status, run.inputs, run.unsettled) == (RunStatus.RUNNING, {"q": 1}, 4)
    assert [s.id for s in await store.get_steps("r1")] == ["a", "b", "c", "d"]
    assert await store.get_snapshot("r1") == "{}"
    assert await event_names(store) == ["run_started"]


async def test_unknown_runs_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get_run("nope")
    with pytest.raises(NotFound):
        await store.cancel_run("nope", 1.0)


async def test_an_idempotency_key_returns_the_same_run(store: Store) -> None:
    first = diamond("r1", idempotency_key="k", request_hash="h1")
    assert await store.create_run(first, 1.0) == ("r1", True)
    again = diamond("r2", idempotency_key="k", request_hash="h1")
    assert await store.create_run(again, 2.0) == ("r1", False)
    with pytest.raises(Conflict):
        await store.create_run(diamond("r3", idempotency_key="k", request_hash="h2"), 3.0)


async def test_concurrent_launches_with_one_key_make_one_run(
    store: Store, second_store: Store
) -> None:
    launches = [
        (store if i % 2 else second_store).create_run(
            diamond(f"r{i}", idempotency_key="k", request_hash="h"), 1.0
        )
        for i in range(20)
    ]
    results = await asyncio.gather(*launches)
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_only_steps_whose_needs_settled_are_claimed(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    assert await claim_ids(store) == []  # b and c wait on a
    assert await store.complete_step(a, StepResult("out"), 2.0)
    assert sorted(await claim_ids(store, 2.0)) == ["b", "c"]


async def test_capacity_counts_agent_steps_apart(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    await store.complete_step(a, StepResult("out"), 2.0)
    claims = await store.claim("w1", 2.0, 30, Capacity(agents=0, others=5), 3)
    assert [c.step_id for c in claims] == ["c"]
    claims = await store.claim("w1", 2.0, 30, Capacity(agents=1, others=0), 3)
    assert [c.step_id for c in claims] == ["b"]


async def test_max_parallel_caps_agent_steps_of_one_run(store: Store) -> None:
    steps = [NewStep(f"s{i}", "agent", True, i, 0) for i in range(5)]
    run = NewRun("r1", "wide", None, "m", {}, "{}", "h", steps, max_parallel=2)
    await store.create_run(run, 1.0)
    assert len(await claim_ids(store)) == 2
    assert await claim_ids(store) == []


async def test_a_result_settles_the_step_and_its_run(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    result = StepResult("out", {"k": "v"}, {"n": [1, 2]}, input="in", scripted=True)
    assert await store.complete_step(a, result, 2.0)
    (step,) = await store.get_steps("r1", ["a"])
    assert (step.status, step.output, step.fields, step.data) == (
        StepStatus.COMPLETED,
        "out",
        {"k": "v"},
        {"n": [1, 2]},
    )
    assert (step.input, step.scripted, step.attempts) == ("in", True, 1)
    assert (await store.get_run("r1")).unsettled == 3


async def test_a_stale_result_is_refused_and_counted(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    old = await claim_one(store, "a", now=1.0, worker="w1")
    taken = await claim_one(store, "a", now=100.0, worker="w2", alone=True)  # w1's expired
    assert (taken.attempt, taken.alone) == (2, True)
    assert not await store.complete_step(old, StepResult("stale"), 101.0)
    assert await store.heartbeat("w1", [old], 101.0, 30) == set()
    assert await store.complete_step(taken, StepResult("fresh"), 102.0)
    (step,) = await store.get_steps("r1", ["a"])
    assert (step.output, step.crashes) == ("fresh", 0)  # w1 ran it in company: not counted
    names = await event_names(store)
    assert names.count("stale_result_refused") == 1
    assert names.count("lease_expired") == 1


async def test_a_stale_result_after_its_run_ended_is_not_in_the_run_log(store: Store) -> None:
    """A client that follows a run until its ending event must have seen every event."""
    await store.create_run(diamond(), 1.0)
    old = await claim_one(store, "a", now=1.0, worker="w1")
    await store.cancel_run("r1", 2.0)
    assert not await store.complete_step(old, StepResult("late"), 3.0)
    assert not await store.refuse_stale(old, 3.0, "heartbeat")
    names = await event_names(store)
    assert names[-1] == "run_cancelled" and "stale_result_refused" not in names


async def test_a_lost_step_is_taken_over_only_by_a_worker_running_nothing_else(
    store: Store,
) -> None:
    """Any step of a lost worker may have taken it down: the step runs next on a worker
    with nothing else (``alone``), in a claim of that step only."""
    await store.create_run(diamond("r1"), 1.0)
    await claim_one(store, "a", now=1.0, worker="w1")
    await store.create_run(diamond("r2"), 50.0)
    assert await store.has_lost(100.0)
    assert await claim_ids(store, now=100.0, worker="w2") == ["a"]  # r2's, not r1's lost one
    (step,) = await store.get_steps("r1", ["a"])
    assert (step.status, step.attempts) == (StepStatus.RUNNING, 1)
    claims = await store.claim("w3", 100.0, 30, ALL, 3, alone=True)
    assert [(c.run_id, c.step_id, c.attempt, c.alone) for c in claims] == [("r1", "a", 2, True)]
    assert not await store.has_lost(100.0)


async def test_heartbeats_keep_a_lease(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a", now=1.0)
    assert await store.heartbeat("w1", [a], 25.0, 30) == {("r1", "a")}
    assert await claim_ids(store, now=40.0, worker="w2") == []  # lease now ends at 55


async def test_a_step_that_keeps_killing_workers_fails_the_run(store: Store) -> None:
    """Its first loss, in company, counts nothing; each loss while it ran alone counts."""
    await store.create_run(diamond(), 1.0)
    await store.claim("w", 1.0, 30, ALL, 3)
    now = 101.0
    for attempt in (2, 3, 4):
        (claim,) = await store.claim("w", now, 30, ALL, 3, alone=True)
        assert (claim.attempt, claim.alone) == (attempt, True)
        now += 100
    assert await claim_ids(store, now, alone=True) == []
    (step,) = await store.get_steps("r1", ["a"])
    assert (step.status, step.crashes) == (StepStatus.FAILED, 3)
    run = await store.get_run("r1")
    assert run.status is RunStatus.FAILED
    assert "alone was lost 3 times" in (run.error or "")
    expired = [e.payload["alone"] for e in await store.events("r1") if e.event == "lease_expired"]
    assert expired == [False, True, True, True]


async def test_a_retry_waits_until_its_time(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    assert await store.fail_attempt(a, "boom", retry_at=10.0, now=2.0)
    assert await claim_ids(store, 5.0) == []
    again = await claim_one(store, "a", now=10.0)
    assert (again.attempt, again.failures) == (2, 1)


async def test_ready_steps_are_claimed_in_the_order_they_joined_the_queue(store: Store) -> None:
    """A launch queues its first steps, a settlement the steps it makes ready, a retry its
    step when the delay ends. Claims took the steps made ready by launches and settlements
    first (their ready_at was 0), so under a backlog that never emptied, a retry waited
    for ever."""
    await store.create_run(diamond("r1"), 1.0)
    a1 = await claim_one(store, "a", now=1.0)
    assert await store.fail_attempt(a1, "boom", retry_at=5.0, now=2.0)  # queued at 5
    await store.create_run(diamond("r2"), 2.0)
    (a2,) = await store.claim("w1", 2.0, 30, ALL, 3)
    await store.create_run(diamond("r3"), 3.0)  # its a queued at 3
    assert await store.complete_step(a2, StepResult("A"), 6.0)  # r2's c queued at 6
    claims = await store.claim("w1", 7.0, 30, Capacity(agents=0, others=2), 3)
    assert {(c.run_id, c.step_id) for c in claims} == {("r3", "a"), ("r1", "a")}
    claims = await store.claim("w1", 7.0, 30, Capacity(agents=0, others=2), 3)
    assert [(c.run_id, c.step_id) for c in claims] == [("r2", "c")]


async def test_a_final_failure_fails_the_run_and_cancels_the_rest(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    assert await store.fail_attempt(a, "boom", retry_at=None, now=2.0)
    run = await store.get_run("r1")
    assert (run.status, run.error) == (RunStatus.FAILED, "step 'a' failed: boom")
    statuses = {s.id: s.status for s in await store.get_steps("r1")}
    assert statuses == {
        "a": StepStatus.FAILED,
        "b": StepStatus.CANCELLED,
        "c": StepStatus.CANCELLED,
        "d": StepStatus.CANCELLED,
    }
    assert (await event_names(store))[-2:] == ["step_cancelled", "run_failed"]
    assert await claim_ids(store, 3.0) == []


async def _gate(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    await store.complete_step(a, StepResult("x"), 2.0)
    for step in await store.claim("w1", 2.0, 30, ALL, 3):
        await store.complete_step(step, StepResult("x"), 3.0)
    d = await claim_one(store, "d", now=3.0)
    assert await store.wait_for_gate(d, "Publish?", deadline=50.0, now=3.0)


async def test_a_gate_waits_and_one_decision_wins(store: Store) -> None:
    await _gate(store)
    assert (await store.get_steps("r1", ["d"]))[0].status is StepStatus.WAITING
    assert await store.waiting_steps("r1") == ["d"]
    assert await store.waiting_steps("nope") == []
    assert await store.expired_gates(10.0) == []
    assert await store.expired_gates(60.0) == [("r1", "d")]
    decision = Decision(True, "ann", "ship it", {"audience": "team"})
    step = await store.decide_gate("r1", "d", decision, True, 4.0)
    assert (step.status, step.output) == (StepStatus.COMPLETED, "ship it")
    assert step.data["approved"] is True and step.data["by"] == "ann"
    assert step.data["payload"] == {"audience": "team"}
    with pytest.raises(Conflict):
        await store.decide_gate("r1", "d", decision, True, 5.0)
    assert (await store.get_run("r1")).unsettled == 0
    assert await store.runs_to_finish() == ["r1"]
    assert await store.waiting_steps("r1") == []


async def test_concurrent_decisions_on_one_gate(store: Store, second_store: Store) -> None:
    await _gate(store)

    async def decide(index: int) -> bool:
        target = store if index % 2 else second_store
        decision = Decision(index % 3 == 0, f"user{index}", "", {})
        try:
            await target.decide_gate("r1", "d", decision, index % 3 == 0, 4.0)
        except Conflict:
            return False
        return True

    results = await asyncio.gather(*(decide(i) for i in range(30)))
    assert sum(results) == 1
    assert (await event_names(store)).count("gate_decided") == 1


async def test_a_rejection_that_fails_ends_the_run(store: Store) -> None:
    await _gate(store)
    await store.decide_gate("r1", "d", Decision(False, "bob", "no", {}), False, 4.0)
    run = await store.get_run("r1")
    assert run.status is RunStatus.FAILED
    assert run.error == "step 'd' rejected: no"


async def test_cancel_stops_everything_once(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    run = await store.cancel_run("r1", 2.0)
    assert run.status is RunStatus.CANCELLED
    assert not await store.complete_step(a, StepResult("late"), 3.0)
    with pytest.raises(Conflict):
        await store.cancel_run("r1", 3.0)
    assert {s.status for s in await store.get_steps("r1")} == {StepStatus.CANCELLED}
    assert await claim_ids(store, 4.0) == []


async def test_a_failed_run_is_retried_in_place(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    await store.complete_step(a, StepResult("kept"), 2.0)
    b = await claim_one(store, "b", now=2.0)
    await store.fail_attempt(b, "boom", None, 3.0)
    run = await store.retry_run("r1", {"b": 0, "c": 0, "d": 2}, 4.0)
    assert (run.status, run.unsettled, run.error) == (RunStatus.RUNNING, 3, None)
    assert sorted(await claim_ids(store, 5.0)) == ["b", "c"]
    (kept,) = await store.get_steps("r1", ["a"])
    assert kept.output == "kept"
    with pytest.raises(Conflict):
        await store.retry_run("r1", {}, 6.0)


async def test_finish_only_a_settled_run(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    assert not await store.finish_run("r1", RunStatus.COMPLETED, "r", None, 2.0)
    await _settle_everything(store)
    assert await store.finish_run("r1", RunStatus.COMPLETED, "report", None, 9.0)
    run = await store.get_run("r1")
    assert (run.status, run.report, run.finished_at) == (RunStatus.COMPLETED, "report", 9.0)
    assert not await store.finish_run("r1", RunStatus.COMPLETED, "again", None, 10.0)


async def _settle_everything(store: Store) -> None:
    now = 2.0
    while claims := await store.claim("w1", now, 30, ALL, 3):
        for claim in claims:
            await store.complete_step(claim, StepResult("x"), now)
        now += 1


async def test_event_ids_are_gapless_and_increasing(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    await _settle_everything(store)
    ids = [e.id for e in await store.events("r1")]
    assert ids == list(range(1, len(ids) + 1))
    assert [e.id for e in await store.events("r1", after=3, limit=2)] == [4, 5]


async def test_excluded_steps_settle_when_reached(store: Store) -> None:
    """b is excluded: it settles when a does, and d still waits for c."""
    await store.create_run(diamond(excluded=["b"]), 1.0)
    a = await claim_one(store, "a")
    assert {s.id: s.status for s in await store.get_steps("r1", ["b"])} == {"b": StepStatus.PENDING}
    settled = await store.complete_step(a, StepResult("x"), 2.0)
    assert settled is not None and settled.unsettled == 2  # a and b settled
    (b,) = await store.get_steps("r1", ["b"])
    assert (b.status, b.attempts, b.started_at) == (StepStatus.EXCLUDED, 0, None)
    c = await claim_one(store, "c", now=2.0)
    assert await claim_ids(store, 2.0) == []
    await store.complete_step(c, StepResult("x"), 3.0)
    assert await claim_ids(store, 3.0) == ["d"]
    names = await event_names(store)
    assert names.index("step_excluded") == names.index("step_completed") + 1


async def test_an_excluded_root_settles_at_launch(store: Store) -> None:
    await store.create_run(diamond(excluded=["a", "b"]), 1.0)
    statuses = {s.id: s.status for s in await store.get_steps("r1")}
    assert statuses == {
        "a": StepStatus.EXCLUDED,
        "b": StepStatus.EXCLUDED,
        "c": StepStatus.PENDING,
        "d": StepStatus.PENDING,
    }
    assert (await store.get_run("r1")).unsettled == 2
    assert await claim_ids(store) == ["c"]
    assert await event_names(store) == [
        "run_started",
        "step_excluded",
        "step_excluded",
        "step_started",
    ]


async def test_agent_calls_are_recorded_by_step_attempt_and_sequence(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    for sequence in (1, 0):
        call = AgentCall("r1", "b", 1, sequence, "p", f"prompt {sequence}", "out", "scripted", True)
        await store.record_agent_call(call)
    calls = await store.agent_calls("r1", "b")
    assert [(c.sequence, c.prompt) for c in calls] == [(0, "prompt 0"), (1, "prompt 1")]
    assert await store.agent_calls("r1", "a") == []


async def test_an_agent_call_is_recorded_with_its_result_even_when_refused(
    store: Store,
) -> None:
    """The call comes with the result (one transaction); a stale result's call was made
    all the same, and is kept."""
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    await store.complete_step(a, StepResult("x"), 2.0)
    b = await claim_one(store, "b", now=2.0)
    call = AgentCall("r1", "b", 1, 0, "p", "the prompt", "reply", "scripted", True, 3.0)
    settled = await store.complete_step(b, StepResult("reply", input="the prompt", call=call), 3.0)
    assert settled is not None
    assert await store.agent_calls("r1", "b") == [call]
    stale = replace(b, attempt=2)
    late = replace(call, attempt=2, output="late")
    assert await store.complete_step(stale, StepResult("late", call=late), 4.0) is None
    assert [c.output for c in await store.agent_calls("r1", "b")] == ["reply", "late"]
    (step,) = await store.get_steps("r1", ["b"])
    assert step.output == "reply"


async def test_the_last_settlement_finishes_its_run_when_told_how(store: Store) -> None:
    """With a Finish, the settlement that leaves nothing unsettled ends the run, its event
    right after the step's; an earlier settlement ignores it."""
    await store.create_run(diamond(), 1.0)
    finish = Finish(RunStatus.COMPLETED, "the report", None)
    a = await claim_one(store, "a")
    settled = await store.complete_step(a, StepResult("x"), 2.0, None, finish)
    assert settled is not None and not settled.finished
    assert (await store.get_run("r1")).status == RunStatus.RUNNING
    b, c = await store.claim("w1", 2.0, 30, ALL, 3)
    await store.complete_step(b, StepResult("x"), 3.0)
    await store.skip_step(c, "no", 3.0, None, finish)
    assert (await store.get_run("r1")).status == RunStatus.RUNNING
    d = await claim_one(store, "d", now=3.0)
    settled = await store.complete_step(d, StepResult("x"), 4.0, Eager("w1", 30, 5, 5), finish)
    assert settled is not None and (settled.unsettled, settled.finished) == (0, True)
    run = await store.get_run("r1")
    assert (run.status, run.report, run.finished_at) == (RunStatus.COMPLETED, "the report", 4.0)
    events = await store.events("r1")
    assert [e.event for e in events][-2:] == ["step_completed", "run_completed"]
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert not await store.finish_run("r1", RunStatus.COMPLETED, "again", None, 5.0)


async def test_a_run_finished_by_its_last_skip_can_fail(store: Store) -> None:
    """A report that did not render fails the run, with the error in its event."""
    steps = [NewStep("a", "code", False, 0, 0, ())]
    await store.create_run(replace(diamond(), steps=steps), 1.0)
    a = await claim_one(store, "a")
    finish = Finish(RunStatus.FAILED, None, "report: boom")
    settled = await store.skip_step(a, "no", 2.0, None, finish)
    assert settled is not None and settled.finished
    run = await store.get_run("r1")
    assert (run.status, run.report, run.error) == (RunStatus.FAILED, None, "report: boom")
    (last,) = (await store.events("r1"))[-1:]
    assert (last.event, last.payload) == ("run_failed", {"error": "report: boom"})


async def test_runs_are_listed_newest_first_with_filters_and_pages(store: Store) -> None:
    for index in range(5):
        await store.create_run(diamond(f"r{index}"), float(index))
    await store.cancel_run("r1", 9.0)
    runs = await store.list_runs(limit=2)
    assert [r.id for r in runs] == ["r4", "r3"]
    page = await store.list_runs(limit=2, before=(runs[-1].created_at, runs[-1].id))
    assert [r.id for r in page] == ["r2", "r1"]
    assert [r.id for r in await store.list_runs(status="cancelled")] == ["r1"]
    assert await store.list_runs(flow="other") == []
    assert await store.list_runs(waiting=True) == []


async def test_has_work_ignores_waiting_gates(store: Store) -> None:
    assert not await store.has_work(1.0)
    await _gate(store)
    assert not await store.has_work(4.0)


async def test_released_steps_go_back_untouched(store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    await store.release([a], 2.0)
    again = await claim_one(store, "a", now=2.0, worker="w2")
    assert again.attempt == 1


async def test_reopening_a_store_keeps_its_data(store: Store, second_store: Store) -> None:
    await store.create_run(diamond(), 1.0)
    assert (await second_store.get_run("r1")).flow == "diamond"


async def test_a_settlement_can_claim_what_it_made_ready(store: Store) -> None:
    """Eager claims take what the settlement made ready, up to each kind's capacity."""
    await store.create_run(diamond(), 1.0)
    a = await claim_one(store, "a")
    settled = await store.complete_step(a, StepResult("x"), 2.0, Eager("w1", 30, 5, agents=0))
    assert settled is not None and settled.ready_left
    assert [(c.step_id, c.attempt, c.worker) for c in settled.claims] == [("c", 1, "w1")]
    assert await claim_ids(store, 2.0, worker="w2") == ["b"]  # no agent slot: b is left
    c = settled.claims[0]
    none = await store.complete_step(c, StepResult("x"), 3.0, Eager("w1", 30, 0))
    assert none is not None and none.claims == ()


async def test_a_settlement_claims_agent_steps_within_the_runs_max_parallel(
    store: Store,
) -> None:
    """a -> (b, c, d), all agent steps; the run runs at most 2 agent steps at once."""
    steps = [NewStep("a", "code", False, 0, 0, ("b", "c", "d"))] + [
        NewStep(step, "agent", True, index, 1, ()) for index, step in enumerate("bcd", 1)
    ]
    run = replace(diamond(), steps=steps, max_parallel=2)
    await store.create_run(run, 1.0)
    a = await claim_one(store, "a")
    settled = await store.complete_step(a, StepResult("x"), 2.0, Eager("w1", 30, 0, agents=5))
    assert settled is not None and settled.ready_left
    assert [(c.step_id, c.kind, c.worker) for c in settled.claims] == [
        ("b", "agent", "w1"),
        ("c", "agent", "w1"),
    ]
    assert await claim_ids(store, 2.0, worker="w2") == []  # max_parallel: d waits
    b = settled.claims[0]
    after_b = await store.complete_step(b, StepResult("x"), 3.0, Eager("w1", 30, 0, agents=5))
    assert after_b is not None and after_b.claims == ()  # b made nothing ready
    assert await claim_ids(store, 3.0, worker="w2") == ["d"]  # b's end made room
