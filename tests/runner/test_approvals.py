"""Approval gates at run time: waiting, deciding, who may decide, timeouts, races."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine.errors import Conflict, InvalidInput, NotAllowed, NotFound
from engine.runner import service
from engine.store.sqlite import SqliteStore

from .conftest import ProjectKit, events, finish, idle, launch, replies, statuses, steps_by_id

GATE_FLOW = """
version: 1
name: x
steps:
  - {id: draft, kind: agent, prompt: "draft"}
  - id: gate
    kind: approval
    needs: [draft]
    message: "Publish {{ steps.draft.output }}?"
    GATE_OPTIONS
  - {id: publish, kind: agent, needs: [gate], prompt: "publish to {{ steps.gate.data.payload }}"}
"""


def gate_flow(kit: ProjectKit, options: str = "title: Sign-off") -> Any:
    return kit.checked(GATE_FLOW.replace("GATE_OPTIONS", options))


async def waiting_run(kit: ProjectKit, store: SqliteStore, checked: Any, **options: Any) -> str:
    """A launched run worked until its gate waits."""
    run_id = await launch(kit, store, checked, **options)
    details = await idle(kit, store, run_id, replies("the draft"))
    assert statuses(details) == {"draft": "completed", "gate": "waiting", "publish": "pending"}
    assert str(details.run.status) == "running"
    return run_id


async def decide(store: SqliteStore, run_id: str, approve: bool = True, **options: Any) -> Any:
    options.setdefault("identity", "alice")
    options.setdefault("now", time.time())
    return await service.decide(store, run_id, "gate", approve=approve, **options)


async def test_the_gate_waits_with_its_message(kit: ProjectKit, store: SqliteStore) -> None:
    run_id = await waiting_run(kit, store, gate_flow(kit))
    gate = steps_by_id(await service.details(store, run_id))["gate"]
    assert gate.input == "Publish the draft?"
    (waiting,) = [e for e in await events(store, run_id) if e.event == "step_waiting"]
    assert waiting.payload == {"message": "Publish the draft?", "deadline": None}
    # a second idle pass changes nothing: the gate still waits
    details = await idle(kit, store, run_id, replies("unused"))
    assert statuses(details)["gate"] == "waiting"
    assert [r.id for r in await store.list_runs(waiting=True)] == [run_id]


async def test_approve_completes_the_gate_and_the_run_finishes(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = gate_flow(
        kit, "form: {audience: {type: string, enum: [team, public], default: team}}"
    )
    run_id = await waiting_run(kit, store, checked)
    now = time.time()
    record = await decide(store, run_id, comment="ship it", payload={"audience": "public"}, now=now)
    assert str(record.status) == "completed"
    assert record.output == "ship it"
    assert record.data == {
        "approved": True,
        "by": "alice",
        "comment": "ship it",
        "payload": {"audience": "public"},
        "at": now,
        "timed_out": False,
    }
    backend = replies("published")
    details = await finish(kit, store, run_id, backend)
    assert str(details.run.status) == "completed"
    assert statuses(details)["publish"] == "completed"
    assert backend.requests[0].prompt == "publish to {'audience': 'public'}"
    (decided,) = [e for e in await events(store, run_id) if e.event == "gate_decided"]
    assert decided.step_id == "gate"
    assert decided.payload == {
        "approved": True,
        "by": "alice",
        "comment": "ship it",
        "timed_out": False,
    }


async def test_form_defaults_fill_the_payload(kit: ProjectKit, store: SqliteStore) -> None:
    checked = gate_flow(kit, "form: {audience: {type: string, default: team}}")
    run_id = await waiting_run(kit, store, checked)
    record = await decide(store, run_id)
    assert record.data["payload"] == {"audience": "team"}
    assert record.output == ""


async def test_a_second_decision_is_a_conflict(kit: ProjectKit, store: SqliteStore) -> None:
    run_id = await waiting_run(kit, store, gate_flow(kit))
    await decide(store, run_id)
    for approve in (True, False):
        with pytest.raises(Conflict, match="not waiting"):
            await decide(store, run_id, approve, identity="bob")
    decided = [e for e in await events(store, run_id) if e.event == "gate_decided"]
    assert [e.payload["by"] for e in decided] == ["alice"]


async def test_deciding_a_gate_that_has_not_started_is_a_conflict(
    kit: ProjectKit, store: SqliteStore
) -> None:
    run_id = await launch(kit, store, gate_flow(kit))
    with pytest.raises(Conflict):
        await decide(store, run_id)
    with pytest.raises(Conflict, match="not an approval"):
        await service.decide(store, run_id, "draft", approve=True, identity="a", now=time.time())
    with pytest.raises(NotFound):
        await service.decide(store, run_id, "nope", approve=True, identity="a", now=time.time())
    with pytest.raises(NotFound):
        await service.decide(store, "norun", "gate", approve=True, identity="a", now=time.time())


@pytest.mark.parametrize(
    "payload",
    [
        {"audience": "everyone"},
        {"audience": 3},
        {"unknown": 1},
        {"size": 2},
    ],
)
async def test_a_bad_payload_is_refused_and_the_gate_keeps_waiting(
    kit: ProjectKit, store: SqliteStore, payload: dict[str, Any]
) -> None:
    checked = gate_flow(
        kit,
        "form: {audience: {type: string, enum: [team, public]}, size: {type: string, default: s}}",
    )
    run_id = await waiting_run(kit, store, checked)
    with pytest.raises(InvalidInput):
        await decide(store, run_id, payload=payload)
    details = await service.details(store, run_id)
    assert statuses(details)["gate"] == "waiting"
    assert not [e for e in await events(store, run_id) if e.event == "gate_decided"]
    record = await decide(store, run_id, payload={"audience": "team"})
    assert record.data["payload"] == {"audience": "team", "size": "s"}


async def test_only_listed_approvers_may_decide(kit: ProjectKit, store: SqliteStore) -> None:
    run_id = await waiting_run(kit, store, gate_flow(kit, "approvers: [lead, cto]"))
    for who in ("mallory", None, "Lead"):
        with pytest.raises(NotAllowed):
            await decide(store, run_id, identity=who)
        with pytest.raises(NotAllowed):
            await decide(store, run_id, False, identity=who)
    assert statuses(await service.details(store, run_id))["gate"] == "waiting"
    record = await decide(store, run_id, identity="cto")
    assert record.data["by"] == "cto"


async def test_prevent_self_approval(kit: ProjectKit, store: SqliteStore) -> None:
    checked = gate_flow(kit, "prevent_self_approval: true")
    run_id = await waiting_run(kit, store, checked, launched_by="alice")
    with pytest.raises(NotAllowed, match="launched this run"):
        await decide(store, run_id, identity="alice")
    with pytest.raises(NotAllowed):
        await decide(store, run_id, False, identity="alice")
    record = await decide(store, run_id, identity="bob")
    assert str(record.status) == "completed"


async def test_self_approval_is_allowed_by_default(kit: ProjectKit, store: SqliteStore) -> None:
    run_id = await waiting_run(kit, store, gate_flow(kit), launched_by="alice")
    record = await decide(store, run_id, identity="alice")
    assert str(record.status) == "completed"


async def test_rejection_fails_the_run_by_default(kit: ProjectKit, store: SqliteStore) -> None:
    run_id = await waiting_run(kit, store, gate_flow(kit))
    record = await decide(store, run_id, False, comment="not good enough", identity="bob")
    assert str(record.status) == "failed"
    assert record.data["approved"] is False and record.data["by"] == "bob"
    details = await service.details(store, run_id)
    assert str(details.run.status) == "failed"
    assert details.run.error == "step 'gate' rejected: not good enough"
    assert statuses(details) == {"draft": "completed", "gate": "failed", "publish": "cancelled"}
    log = [e.event for e in await events(store, run_id)]
    assert log[-4:] == ["gate_decided", "step_failed", "step_cancelled", "run_failed"]


CONTINUE_FLOW = """
version: 1
name: x
steps:
  - id: gate
    kind: approval
    message: "Go?"
    on_reject: continue
    GATE_OPTIONS
  - {id: go, kind: agent, needs: [gate], when: steps.gate.data.approved, prompt: "go"}
  - id: stop
    kind: agent
    needs: [gate]
    when: not steps.gate.data.approved
    prompt: "stop because {{ steps.gate.output }}"
  - id: after
    kind: agent
    needs: [go, stop]
    prompt: "after [{{ steps.go.output }}] [{{ steps.stop.output }}]"
"""


@pytest.mark.parametrize("approve", [True, False])
async def test_on_reject_continue_lets_when_guards_branch(
    kit: ProjectKit, store: SqliteStore, approve: bool
) -> None:
    checked = kit.checked(CONTINUE_FLOW.replace("GATE_OPTIONS", ""))
    run_id = await launch(kit, store, checked)
    assert statuses(await idle(kit, store, run_id, replies("x")))["gate"] == "waiting"
    record = await decide(store, run_id, approve, comment="because")
    assert str(record.status) == "completed"
    assert record.data["approved"] is approve
    backend = replies("ran")
    details = await finish(kit, store, run_id, backend)
    assert str(details.run.status) == "completed"
    expected = {
        "gate": "completed",
        "go": "completed" if approve else "skipped",
        "stop": "skipped" if approve else "completed",
        "after": "completed",
    }
    assert statuses(details) == expected
    prompts = [r.prompt for r in backend.requests]
    if approve:
        assert prompts == ["go", "after [ran] []"]
    else:
        assert prompts == ["stop because because", "after [] [ran]"]


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("options", "gate_status", "run_status", "approved"),
    [
        ("timeout: 2h\n    on_timeout: approve", "completed", "completed", True),
        ("timeout: 2h", "failed", "failed", False),
        ("timeout: 2h\n    on_timeout: reject", "failed", "failed", False),
    ],
)
async def test_a_gate_timeout_decides_by_itself(
    kit: ProjectKit,
    store: SqliteStore,
    options: str,
    gate_status: str,
    run_status: str,
    approved: bool,
) -> None:
    checked = gate_flow(kit, options + "\n    form: {audience: {type: string, default: team}}")
    clock = FakeClock()
    run_id = await launch(kit, store, checked, now=clock())
    details = await idle(kit, store, run_id, replies("the draft"), clock)
    gate = steps_by_id(details)["gate"]
    assert str(gate.status) == "waiting"
    assert gate.deadline == pytest.approx(clock.now + 7200)

    clock.now += 7199  # not yet
    details = await idle(kit, store, run_id, replies("unused"), clock)
    assert statuses(details)["gate"] == "waiting"
    clock.now += 2
    details = await finish(kit, store, run_id, replies("published"), clock=clock)
    with pytest.raises(Conflict):  # the timeout decided: a late human decision is refused
        await decide(store, run_id, now=clock())
    gate = steps_by_id(details)["gate"]
    assert str(gate.status) == gate_status
    assert str(details.run.status) == run_status
    assert gate.data["approved"] is approved
    assert gate.data["timed_out"] is True
    assert gate.data["by"] is None
    assert gate.data["payload"] == {"audience": "team"}
    (decided,) = [e for e in await events(store, run_id) if e.event == "gate_decided"]
    assert decided.payload["timed_out"] is True
    if approved:
        assert statuses(details)["publish"] == "completed"
    else:
        assert statuses(details)["publish"] == "cancelled"


async def test_a_rejecting_timeout_with_on_reject_continue_branches(
    kit: ProjectKit, store: SqliteStore
) -> None:
    checked = kit.checked(CONTINUE_FLOW.replace("GATE_OPTIONS", "timeout: 1d"))
    clock = FakeClock()
    run_id = await launch(kit, store, checked, now=clock())
    await idle(kit, store, run_id, replies("x"), clock)
    clock.now += 86401
    details = await finish(kit, store, run_id, replies("ran"), clock=clock)
    assert statuses(details) == {
        "gate": "completed",
        "go": "skipped",
        "stop": "completed",
        "after": "completed",
    }
    assert steps_by_id(details)["gate"].data["timed_out"] is True


async def test_concurrent_decisions_on_two_connections_have_one_winner(
    kit: ProjectKit, store: SqliteStore
) -> None:
    run_id = await waiting_run(kit, store, gate_flow(kit, "on_reject: continue"))
    other = SqliteStore(store.path)
    await other.open()
    try:
        stores = (store, other)
        results = await asyncio.gather(
            *(decide(stores[i % 2], run_id, i % 3 != 0, identity=f"user{i}") for i in range(30)),
            return_exceptions=True,
        )
    finally:
        await other.close()
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    assert len(wins) == 1
    assert len(losses) == 29 and all(isinstance(r, Conflict) for r in losses), losses
    decided = [e for e in await events(store, run_id) if e.event == "gate_decided"]
    assert len(decided) == 1
    assert decided[0].payload["by"] == wins[0].data["by"]
    gate = steps_by_id(await service.details(store, run_id))["gate"]
    assert gate.data == wins[0].data
